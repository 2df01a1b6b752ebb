import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as NodePath from "node:path"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"
import { freePort, runBin, serverProcess } from "./support/process.js"

const tempData = Effect.acquireRelease(
  Effect.sync(() => H.tempDir("cli")),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

describe("effect-sqlite-sync serve", () => {
  it.scoped("an acknowledged push survives kill -9, and the restarted server serves it from the same directory", () =>
    Effect.gen(function*() {
      const data = yield* tempData
      const first = yield* serverProcess(["--data", data])
      expect(first.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      expect(first.url.endsWith(":0")).toBe(false)
      const base = yield* promise(() => H.exportBase(first.url, "durable", 1))
      const replica = new H.Replica(base)
      yield* Effect.addFinalizer(() => Effect.sync(() => replica.close()))
      const frames = replica.write(
        "BEGIN; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'kept'), (2, 'also kept'); COMMIT;"
      )
      const res = yield* promise(() =>
        H.request(first.url, {
          method: "POST",
          path: `/db/durable/sync/1/1/${frames.length + 1}`,
          body: WalFrame.encodeWire(frames)
        })
      )
      expect(H.json(res)).toEqual({ status: "ok", generation: 1, max_frame_no: frames.length })
      first.child.kill("SIGKILL")
      expect(yield* promise(() => first.exited)).toEqual({ code: null, signal: "SIGKILL" })

      const second = yield* serverProcess(["--data", data])
      const snap = yield* promise(() => H.snapshot(second.url, "durable"))
      expect(snap.generation).toBe(1)
      expect(Buffer.compare(Buffer.from(WalFrame.encodeWire(snap.frames)), Buffer.from(WalFrame.encodeWire(frames))))
        .toBe(0)
      const db = H.open(snap.file)
      expect(db.prepare("SELECT v FROM t ORDER BY id").all()).toEqual([{ v: "kept" }, { v: "also kept" }])
      db.close()
    }), 120_000)

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it.scoped(`${signal} stops it cleanly: exit code 0, port closed`, () =>
      Effect.gen(function*() {
        const data = yield* tempData
        const server = yield* serverProcess(["--data", data])
        expect((yield* promise(() => H.request(server.url, { path: "/db/a/info" }))).status).toBe(200)
        server.child.kill(signal)
        const exit = yield* promise(() => server.exited)
        expect(exit).toEqual({ code: 0, signal: null })
        const refused = yield* promise(() =>
          H.request(server.url, { path: "/db/a/info" }).then(() => "answered", (error: NodeJS.ErrnoException) => error.code)
        )
        expect(refused).toBe("ECONNREFUSED")
      }), 120_000)
  }

  it.live("SIGTERM during a push: no new connections, the push in flight is answered and stored, then exit 0", () =>
    Effect.gen(function*() {
      const data = yield* tempData
      const server = yield* serverProcess(["--data", data])
      const base = yield* promise(() => H.exportBase(server.url, "inflight", 1))
      const replica = new H.Replica(base)
      yield* Effect.addFinalizer(() => Effect.sync(() => replica.close()))
      const frames = replica.write("BEGIN; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'in flight'); COMMIT;")
      const body = WalFrame.encodeWire(frames)
      const { port } = new URL(server.url)
      // The request's headers and half its body are sent; the rest follows the signal.
      const socket = Net.connect(Number(port), "127.0.0.1")
      const answer = new Promise<string>((resolve, reject) => {
        let text = ""
        socket.on("data", (chunk) => (text += chunk.toString()))
        socket.on("end", () => resolve(text))
        socket.on("close", () => resolve(text))
        socket.on("error", reject)
      })
      yield* promise(() => new Promise<void>((resolve) => socket.once("connect", () => resolve())))
      const half = Math.floor(body.byteLength / 2)
      socket.write(
        `POST /db/inflight/sync/1/1/${frames.length + 1} HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.byteLength}\r\n` +
          "Content-Type: application/octet-stream\r\n\r\n"
      )
      socket.write(body.subarray(0, half))
      yield* Effect.sleep("300 millis")
      server.child.kill("SIGTERM")
      // The listener closes first: a new connection is refused while the request in flight goes on.
      let refused: string | undefined
      for (let attempt = 0; attempt < 50 && refused === undefined; attempt++) {
        yield* Effect.sleep("100 millis")
        refused = yield* promise(() =>
          H.request(server.url, { path: "/health" }).then(() => undefined, (error: NodeJS.ErrnoException) => error.code)
        )
      }
      expect(refused).toBe("ECONNREFUSED")
      expect(server.child.exitCode).toBeNull()
      socket.write(body.subarray(half))
      const text = yield* promise(() => answer)
      expect(text).toMatch(/^HTTP\/1\.1 200/)
      expect(JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4))).toEqual({ status: "ok", generation: 1, max_frame_no: frames.length })
      expect(yield* promise(() => server.exited)).toEqual({ code: 0, signal: null })
      const again = yield* serverProcess(["--data", data])
      const snap = yield* promise(() => H.snapshot(again.url, "inflight"))
      expect(snap.frames.length).toBe(frames.length)
    }).pipe(Effect.scoped), 120_000)

  it.scoped("--auth-token protects every route; logs go to stderr, one line per request", () =>
    Effect.gen(function*() {
      const data = yield* tempData
      const server = yield* serverProcess(["--data", data, "--auth-token", "cli-secret", "--log-format", "json"])
      const refused = yield* promise(() => H.request(server.url, { path: "/db/a/info" }))
      expect(refused.status).toBe(401)
      expect(H.json(refused).error).toBe("unauthorized")
      const ok = yield* promise(() => H.request(server.url, { path: "/db/a/info", headers: H.auth("cli-secret") }))
      expect(H.json(ok)).toEqual({ current_generation: 1, max_frame_no: 0, max_pull_frames: 1024, max_push_frames: 1024, extensions: ["snapshot", "push_identity", "wait", "wait-after"], max_wait_seconds: 30, database_id: expect.any(String) })
      // Log lines are written after the response; give the child a moment to flush stderr.
      yield* promise(() => new Promise((r) => setTimeout(r, 300)))
      const lines = server.stderr().trim().split("\n").map((line) => JSON.parse(line))
      expect(lines.length).toBe(2)
      expect(lines.map((l) => [l.annotations.status, l.annotations.route])).toEqual([[401, "unrouted"], [200, "GET /info"]])
      expect(server.stderr()).not.toContain("cli-secret")
      // Stdout is for scripts: the URL line and nothing else (no second, pretty copy of the log lines).
      expect(server.stdout()).toBe(`Listening on ${server.url}\n`)
    }), 120_000)

  it.live("invalid roll, retention and pull options are refused with a non-zero exit code", () =>
    Effect.gen(function*() {
      const cases = [
        [["--generation-growth", "0"], "--generation-growth must be a number above 0, or 'never'"],
        [["--keep-generations-for", "5x"], "--keep-generations-for must be a duration such as 90s, 30m, 1h or 7d"],
        [["--max-pull-frames", "0"], "--max-pull-frames must be from 1 to 16384"],
        [["--max-pull-wait", "-1"], "--max-pull-wait must be from 0 to 240 seconds"]
      ] as const
      for (const [args, message] of cases) {
        const result = yield* promise(() => runBin(["serve", "--data", "/nonexistent-never-created", ...args]))
        expect(result.code, args.join(" ")).not.toBe(0)
        expect(result.code, args.join(" ")).not.toBe(null)
        expect(result.stdout + result.stderr, args.join(" ")).toContain(message)
        expect(result.stdout).not.toContain("Listening on")
      }
      expect(Fs.existsSync("/nonexistent-never-created")).toBe(false)
    }), 120_000)

  it.scoped("a port in use: one line saying so, exit status 1, no stack trace, and --data is not created", () =>
    Effect.gen(function*() {
      const dir = yield* tempData
      const busy = yield* Effect.acquireRelease(
        promise(() =>
          new Promise<Net.Server>((resolve) => {
            const server = Net.createServer()
            server.listen(0, "127.0.0.1", () => resolve(server))
          })
        ),
        (server) => promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
      )
      const port = (busy.address() as Net.AddressInfo).port
      const data = NodePath.join(dir, "never-created")
      const result = yield* promise(() => runBin(["serve", "--host", "127.0.0.1", "--port", String(port), "--data", data]))
      expect(result.code).toBe(1)
      expect(result.stdout).toBe("")
      expect(result.stderr).toBe(`error: port ${port} is in use (on 127.0.0.1); stop the other server or pick another --port\n`)
      expect(Fs.existsSync(data)).toBe(false)
    }), 120_000)

  it.scoped("PORT sets the port and EFFECT_SQLITE_SYNC_AUTH_TOKEN the token, neither on the command line", () =>
    Effect.gen(function*() {
      const dir = yield* tempData
      const port = yield* promise(freePort)
      const server = yield* serverProcess(["--data", dir], {
        env: { PORT: String(port), EFFECT_SQLITE_SYNC_AUTH_TOKEN: "env-secret" }
      })
      expect(server.url).toBe(`http://127.0.0.1:${port}`)
      expect(server.child.spawnargs.join(" ")).not.toContain("env-secret")
      expect((yield* promise(() => H.request(server.url, { path: "/db/a/info" }))).status).toBe(401)
      const ok = yield* promise(() => H.request(server.url, { path: "/db/a/info", headers: H.auth("env-secret") }))
      expect(H.json(ok)).toEqual({ current_generation: 1, max_frame_no: 0, max_pull_frames: 1024, max_push_frames: 1024, extensions: ["snapshot", "push_identity", "wait", "wait-after"], max_wait_seconds: 30, database_id: expect.any(String) })
    }), 120_000)

  it.live("--help has no colour codes when stdout is not a terminal, and with NO_COLOR", () =>
    Effect.gen(function*() {
      const [piped, noColor] = yield* promise(() => Promise.all([runBin(["--help"]), runBin(["serve", "--help"], { NO_COLOR: "1" })]))
      for (const result of [piped, noColor]) {
        expect(result.code).toBe(0)
        expect(result.stdout).toContain("USAGE")
        expect(result.stdout).not.toContain("\u001b[")
      }
      expect(noColor.stdout).toContain("env PORT")
      expect(noColor.stdout).toContain("EFFECT_SQLITE_SYNC_AUTH_TOKEN")
    }), 120_000)

  it.live("invalid options are refused with a non-zero exit code", () =>
    Effect.gen(function*() {
      const cases = [
        [["--port", "70000"], "--port must be an integer from 0 to 65535"],
        [["--port", "x"], "integer"],
        [["--generation-frames", "0"], "--generation-frames must be at least 1"],
        [["--keep-generations", "-1"], "--keep-generations must be at least 0"],
        [["--auth-token", ""], "--auth-token must not be empty"],
        [["--integrity-check", "maybe"], "quick_check"],
        [["--store", "mysql://u:p@127.0.0.1/db"], "--store must be a postgres:// URL"]
      ] as const
      const results = yield* promise(() =>
        Promise.all(cases.map(([args]) => runBin(["serve", "--data", "/nonexistent-never-created", ...args])))
      )
      results.forEach((result, i) => {
        const [args, message] = cases[i]
        expect(result.code, args.join(" ")).not.toBe(0)
        expect(result.code, args.join(" ")).not.toBe(null)
        expect(result.stdout + result.stderr, args.join(" ")).toContain(message)
        expect(result.stdout).not.toContain("Listening on")
        expect(result.stderr).not.toContain("_tag")
      })
      expect(Fs.existsSync("/nonexistent-never-created")).toBe(false)
    }), 120_000)
})
