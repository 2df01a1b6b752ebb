/**
 * The real libSQL client (npm `libsql` 0.5.29, offline writes) against our server.
 *
 * The client's `sync()` and constructor are synchronous native calls that block this thread while they
 * wait for HTTP, so the server runs in its own process: the `effect-sqlite-sync serve` binary on a
 * loopback port with its embedded SQLite store in a temp directory. What the server holds is checked by
 * materializing it (export + pulled frames) and opening it with better-sqlite3, not through the clients.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import Database from "libsql"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"
import { expectBehindPushConflicts, expectBigTransactionStored, serverDb } from "./support/interop.js"
import { type ServerProcess, spawnServer } from "./support/process.js"

const TOKEN = "interop-token"

type Client = InstanceType<typeof Database>

const open = (dir: string, file: string, url: string, token = TOKEN): Client =>
  new Database(Path.join(dir, file), { syncUrl: url, authToken: token, offline: true } as Database.Options)

const rows = (db: { prepare: (sql: string) => { all: () => Array<unknown> } }, sql: string) => db.prepare(sql).all()

const logLines = (server: ServerProcess) =>
  server.stderr().trim().split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l))

/**
 * The log lines from index `from` on, once at least `atLeast` are there and no more arrive for 100 ms:
 * the child writes them after answering, and this thread was blocked inside the client meanwhile.
 */
const logsSince = (server: ServerProcess, from: number, atLeast: number) =>
  Effect.promise(async () => {
    const deadline = Date.now() + 10_000
    let seen = -1
    for (;;) {
      const lines = logLines(server).slice(from)
      if ((lines.length >= atLeast && lines.length === seen) || Date.now() > deadline) return lines
      seen = lines.length >= atLeast ? lines.length : -1
      await new Promise((r) => setTimeout(r, 100))
    }
  })

interface World {
  server: ServerProcess
  data: string
  clients: string
}

const world = (): Effect.Effect<World, never, import("effect/Scope").Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const data = H.tempDir("interop-data")
      const clients = H.tempDir("interop-clients")
      const server = await spawnServer(["--data", data, "--auth-token", TOKEN, "--log-format", "json"])
      return { server, data, clients }
    }),
    ({ clients, data, server }) =>
      Effect.promise(async () => {
        server.child.kill("SIGTERM")
        await server.exited
        Fs.rmSync(data, { recursive: true, force: true })
        Fs.rmSync(clients, { recursive: true, force: true })
      })
  )

describe("the real libSQL client against our server", () => {
  it.scoped("bootstrap, push, a second client, pull, a large transaction with batons, and a conflict", () =>
    Effect.gen(function*() {
      const { clients, server } = yield* world()
      const url = `${server.url}/db/shared`

      // A fresh client bootstraps with /info then /export/1.
      const a = open(clients, "a.db", url)
      expect(Fs.existsSync(Path.join(clients, "a.db-info"))).toBe(true)
      const boot = (yield* logsSince(server, 0, 2)).map((l) => [l.annotations.route, l.annotations.status])
      expect(boot).toEqual([["GET /info", 200], ["GET /export/{G}", 200]])

      // Local writes reach the server with sync().
      a.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, v TEXT)")
      a.exec("INSERT INTO t VALUES (1, 'a', 'first'), (2, 'a', 'second')")
      a.sync()
      const afterA = yield* serverDb(server.url, "shared", TOKEN)
      expect(rows(afterA.db, "SELECT id, who, v FROM t ORDER BY id")).toEqual([
        { id: 1, who: "a", v: "first" },
        { id: 2, who: "a", v: "second" }
      ])
      expect(afterA.db.pragma("integrity_check", { simple: true })).toBe("ok")
      afterA.db.close()

      // A second client bootstraps and, after its first sync, sees them.
      const b = open(clients, "b.db", url)
      b.sync()
      expect(rows(b, "SELECT id, who FROM t ORDER BY id")).toEqual([{ id: 1, who: "a" }, { id: 2, who: "a" }])

      // It writes and syncs; the first client pulls them.
      b.exec("INSERT INTO t VALUES (3, 'b', 'from b')")
      b.sync()
      a.sync()
      expect(rows(a, "SELECT id, who FROM t ORDER BY id")).toEqual([
        { id: 1, who: "a" },
        { id: 2, who: "a" },
        { id: 3, who: "b" }
      ])

      // A transaction of ~2 MB (far more than the client's 128 frames a request) goes through with batons.
      const before = (yield* logsSince(server, 0, 1)).length
      a.exec("CREATE TABLE big(id INTEGER PRIMARY KEY, data BLOB)")
      a.exec(
        "BEGIN; WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 500) INSERT INTO big SELECT x, randomblob(4000) FROM s; COMMIT;"
      )
      a.sync()
      const pushes = (yield* logsSince(server, before, 4)).filter((l) => l.annotations.method === "POST")
      expect(pushes.length).toBeGreaterThan(3)
      expect(pushes.some((l) => l.annotations.route === "POST /sync/{G}/{start}/{end}/{baton}")).toBe(true)
      expect(pushes.every((l) => l.annotations.status === 200 && l.annotations.outcome === "ok")).toBe(true)
      const afterBig = yield* expectBigTransactionStored(server.url, "shared", TOKEN, a)
      expect(afterBig.frames.length).toBeGreaterThan(500)

      // B wrote while behind (it has not pulled the big transaction): its push conflicts.
      yield* expectBehindPushConflicts(server.url, "shared", TOKEN, b, afterBig.digest)
      const conflictLines = (yield* logsSince(server, 0, 1)).filter((l) => l.annotations.outcome === "conflict")
      expect(conflictLines.length).toBeGreaterThan(0)

      // A third client bootstraps at the server's state and sees everything, the big table included.
      const c = open(clients, "c.db", url)
      c.sync()
      expect(rows(c, "SELECT count(*) AS n FROM big")).toEqual([{ n: 500 }])
      expect(rows(c, "SELECT id FROM t ORDER BY id")).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }])
      for (const client of [a, b, c]) client.close()
    }), 180_000)

  it.scoped("clients follow a generation roll, and the new base is the old one with its frames applied", () =>
    Effect.gen(function*() {
      const data = H.tempDir("roll-data")
      const clients = H.tempDir("roll-clients")
      const server = yield* Effect.acquireRelease(
        Effect.promise(() => spawnServer(["--data", data, "--auth-token", TOKEN, "--log-format", "json", "--generation-frames", "8"])),
        (server) =>
          Effect.promise(async () => {
            server.child.kill("SIGTERM")
            await server.exited
            Fs.rmSync(data, { recursive: true, force: true })
            Fs.rmSync(clients, { recursive: true, force: true })
          })
      )
      const url = `${server.url}/db/rolling`
      const a = open(clients, "a.db", url)
      const b = open(clients, "b.db", url)

      a.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
      a.exec(
        "BEGIN; WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 12) INSERT INTO t SELECT x, randomblob(3000) FROM s; COMMIT;"
      )
      a.sync()
      expect(yield* Effect.promise(() => H.currentGeneration(server.url, "rolling", TOKEN))).toBe(2)

      // Generation 2's base is byte-identical to generation 1's base with all of generation 1's frames.
      const base1 = yield* Effect.promise(() => H.exportBase(server.url, "rolling", 1, TOKEN))
      const frames1 = yield* Effect.promise(() => H.pullAll(server.url, "rolling", 1, TOKEN))
      const base2 = yield* Effect.promise(() => H.exportBase(server.url, "rolling", 2, TOKEN))
      expect(frames1.length).toBeGreaterThan(8)
      expect(Buffer.compare(Buffer.from(WalFrame.applyFrames(base1, frames1)), Buffer.from(base2))).toBe(0)

      // B, bootstrapped in generation 1 and without local writes, pulls across the roll.
      b.sync()
      expect(rows(b, "SELECT count(*) AS n FROM t")).toEqual([{ n: 12 }])

      // A, whose own push rolled the server, follows on its next (pulling) sync, then writes in generation 2.
      a.sync()
      a.exec("INSERT INTO t VALUES (100, x'00')")
      a.sync()
      const gen2 = yield* Effect.promise(() => H.pullAll(server.url, "rolling", 2, TOKEN))
      expect(gen2.length).toBeGreaterThan(0)
      b.sync()
      expect(rows(b, "SELECT id FROM t WHERE id = 100")).toEqual([{ id: 100 }])

      // A client that starts now bootstraps from generation 2's base.
      const before = (yield* logsSince(server, 0, 1)).length
      const c = open(clients, "c.db", url)
      expect((yield* logsSince(server, before, 2)).map((l) => l.annotations.route)).toEqual([
        "GET /info",
        "GET /export/{G}"
      ])
      c.sync()
      expect(rows(c, "SELECT count(*) AS n FROM t")).toEqual([{ n: 13 }])

      const snap = yield* serverDb(server.url, "rolling", TOKEN)
      expect(snap.generation).toBe(2)
      expect(rows(snap.db, "SELECT count(*) AS n FROM t")).toEqual([{ n: 13 }])
      expect(snap.db.pragma("integrity_check", { simple: true })).toBe("ok")
      snap.db.close()
      for (const client of [a, b, c]) client.close()
    }), 180_000)

  it.scoped("the roll trap: a client whose own push rolled the server (default rule) writes on and syncs; nobody is stranded", () =>
    Effect.gen(function*() {
      // No roll options: the default rule rolls once a generation's frames outgrow its base and 1000 frames.
      const { clients, server } = yield* world()
      const url = `${server.url}/db/trap`
      const a = open(clients, "a.db", url)
      const b = open(clients, "b.db", url)
      a.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, v BLOB)")
      a.exec(
        "BEGIN; WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 1100) INSERT INTO t SELECT x, 'a', randomblob(3500) FROM s; COMMIT;"
      )
      a.sync()
      expect(yield* Effect.promise(() => H.currentGeneration(server.url, "trap", TOKEN))).toBe(2)

      // A holds local writes and pushes them to generation 1, which it still believes current.
      a.exec("INSERT INTO t VALUES (5001, 'a', x'01')")
      a.sync()
      a.exec("INSERT INTO t VALUES (5002, 'a', x'02')")
      a.exec("INSERT INTO t VALUES (5003, 'a', x'03')")
      a.sync()
      const pushes = (yield* logsSince(server, 0, 1)).filter((l) => l.annotations.method === "POST")
      expect(pushes.every((l) => l.annotations.status === 200 && l.annotations.outcome === "ok")).toBe(true)
      const snap = yield* serverDb(server.url, "trap", TOKEN)
      expect(snap.generation).toBe(2)
      expect(snap.frames.length).toBeGreaterThan(0)
      expect(rows(snap.db, "SELECT id FROM t WHERE id > 5000 ORDER BY id")).toEqual([{ id: 5001 }, { id: 5002 }, { id: 5003 }])
      expect(snap.db.pragma("integrity_check", { simple: true })).toBe("ok")
      snap.db.close()

      // A fresh replica bootstraps in generation 2 and has everything; it writes too.
      const c = open(clients, "c.db", url)
      c.sync()
      expect(rows(c, "SELECT count(*) AS n FROM t")).toEqual([{ n: 1103 }])
      c.exec("INSERT INTO t VALUES (6001, 'c', x'04')")
      c.sync()

      // A, with nothing left to push, pulls: it moves to generation 2 and gets C's row on top of its own.
      a.sync()
      expect(rows(a, "SELECT id, who FROM t WHERE id > 5000 ORDER BY id")).toEqual([
        { id: 5001, who: "a" },
        { id: 5002, who: "a" },
        { id: 5003, who: "a" },
        { id: 6001, who: "c" }
      ])
      expect(rows(a, "PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
      // And keeps writing in generation 2's numbering.
      a.exec("INSERT INTO t VALUES (5004, 'a', x'05')")
      a.sync()
      // B, bootstrapped before the roll and without writes, pulls across it.
      b.sync()
      expect(rows(b, "SELECT id FROM t WHERE id > 5000 ORDER BY id")).toEqual([
        { id: 5001 },
        { id: 5002 },
        { id: 5003 },
        { id: 5004 },
        { id: 6001 }
      ])
      const final = yield* serverDb(server.url, "trap", TOKEN)
      expect(rows(final.db, "SELECT count(*) AS n FROM t")).toEqual([{ n: 1105 }])
      expect(final.db.pragma("integrity_check", { simple: true })).toBe("ok")
      final.db.close()
      for (const client of [a, b, c]) client.close()
    }), 180_000)

  it.scoped("kill -9 of the server in the middle of a 20 MB push: nothing partial is visible, the next sync completes it", () =>
    Effect.gen(function*() {
      const data = H.tempDir("crash-data")
      const clients = H.tempDir("crash-clients")
      const logs = H.tempDir("crash-logs")
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          for (const dir of [data, clients, logs]) Fs.rmSync(dir, { recursive: true, force: true })
        })
      )
      const log1 = Path.join(logs, "first.log")
      const first = yield* Effect.promise(() => spawnServer(["--data", data, "--log-format", "json"], { stderrFile: log1 }))
      yield* Effect.addFinalizer(() => Effect.sync(() => first.child.kill("SIGKILL")))
      const port = new URL(first.url).port
      const url = `${first.url}/db/crash`
      const a = open(clients, "a.db", url)
      a.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
      a.exec("INSERT INTO t VALUES (1, 'before the crash')")
      a.sync()
      const before = yield* serverDb(first.url, "crash", TOKEN)
      before.db.close()

      // One transaction of ~5000 frames: about 40 requests of 128, chained by batons. A watcher process
      // kills the server as soon as it has logged the first request that carried a baton.
      a.exec(
        "BEGIN; CREATE TABLE big(id INTEGER PRIMARY KEY, data BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 5000) INSERT INTO big SELECT x, randomblob(4000) FROM s; COMMIT;"
      )
      ChildProcess.spawn(
        "sh",
        ["-c", `while ! grep -qF '{baton}' '${log1}'; do sleep 0.005; done; kill -9 ${first.child.pid}`],
        { stdio: "ignore" }
      )
      try {
        a.sync()
      } catch {
        // The libSQL client may fail this sync or report it as having synced nothing; both are fine.
      }
      expect(yield* Effect.promise(() => first.exited)).toEqual({ code: null, signal: "SIGKILL" })
      const posts = first.stderr().trim().split("\n").map((l) => JSON.parse(l)).filter((l) => l.annotations.method === "POST")
      expect(posts.some((l) => l.annotations.route.endsWith("{baton}"))).toBe(true)
      expect(posts.length).toBeLessThan(30)

      // Restarted on the same directory and port: exactly the state before the transaction.
      const second = yield* Effect.promise(() =>
        spawnServer(["--data", data, "--port", port, "--log-format", "json"], { stderrFile: Path.join(logs, "second.log") })
      )
      yield* Effect.addFinalizer(() => Effect.sync(() => second.child.kill("SIGKILL")))
      const reopened = yield* serverDb(second.url, "crash", TOKEN)
      expect(reopened.digest).toBe(before.digest)
      expect(rows(reopened.db, "SELECT name FROM sqlite_schema WHERE name = 'big'")).toEqual([])
      reopened.db.close()

      // The client's next sync pushes the whole transaction again.
      let synced = false
      for (let attempt = 0; attempt < 3 && !synced; attempt++) {
        try {
          a.sync()
          synced = true
        } catch {
          // a connection of the old server may still be pooled
        }
      }
      expect(synced).toBe(true)
      const after = yield* serverDb(second.url, "crash", TOKEN)
      expect(rows(after.db, "SELECT count(*) AS n, sum(length(data)) AS bytes FROM big")).toEqual([{ n: 5000, bytes: 20_000_000 }])
      expect(rows(after.db, "SELECT hex(data) AS h FROM big WHERE id IN (1, 2500, 5000) ORDER BY id")).toEqual(
        rows(a, "SELECT hex(data) AS h FROM big WHERE id IN (1, 2500, 5000) ORDER BY id")
      )
      expect(rows(after.db, "SELECT v FROM t")).toEqual([{ v: "before the crash" }])
      expect(after.db.pragma("integrity_check", { simple: true })).toBe("ok")
      after.db.close()
      a.close()
    }), 180_000)

  it.scoped("a wrong token is refused: the constructor fails with 401 and leaves no local files", () =>
    Effect.gen(function*() {
      const { clients, server } = yield* world()
      let failure: unknown
      try {
        open(clients, "wrong.db", `${server.url}/db/secret`, "not-the-token")
      } catch (error) {
        failure = error
      }
      expect(String(failure)).toMatch(/PullDb\(401/)
      expect(Fs.readdirSync(clients)).toEqual([])
      const lines = yield* logsSince(server, 0, 1)
      expect(lines.map((l) => [l.annotations.status, l.annotations.error])).toEqual([[401, "unauthorized"]])
    }), 180_000)
})
