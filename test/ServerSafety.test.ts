/**
 * The server under real use, over a real HTTP server on loopback and real files: abandoned
 * transactions, many databases, a data directory it cannot write, a database's identity, and a
 * commit whose index no longer matches its table.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncProtocol from "../src/SyncProtocol.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as H from "./support/http.js"
import { serverProcess } from "./support/process.js"

const TOKEN = "safety-token"

/** Runs `body` against a real server on a loopback port over the store `store` (a fresh data directory by default). */
const withServer = <A>(
  storeOptions: ServerStore.Options & { readonly directory?: string },
  body: (base: string, dir: string, logs: Array<string>) => Promise<A>,
  serverOptions: SyncServer.NodeOptions = { authToken: Redacted.make(TOKEN) }
) =>
  Effect.gen(function*() {
    const dir = storeOptions.directory ?? H.tempDir("safety")
    const logs: Array<string> = []
    const capture = Logger.make<unknown, void>(({ message }) => {
      logs.push(String(Array.isArray(message) ? message.join(" ") : message))
    })
    const layer = SyncServer.layerNode({ port: 0, ...serverOptions }).pipe(
      Layer.provide(ServerStore.layer({ ...storeOptions, directory: dir })),
      Layer.provide(Logger.replace(Logger.defaultLogger, capture))
    )
    return yield* Effect.flatMap(SyncServer.baseUrl, (base) => Effect.promise(() => body(base, dir, logs))).pipe(
      Effect.provide(layer),
      Effect.scoped
    )
  })

/** A request with the token, another token, or none (`null`). */
const call = (base: string, request: H.RawRequest, token: string | null = TOKEN) =>
  H.request(base, { ...request, headers: { ...H.auth(token ?? undefined), ...request.headers } })

const push = (base: string, name: string, start: number, frames: ReadonlyArray<WalFrame.Frame>, baton?: string) =>
  call(base, {
    method: "POST",
    path: `/db/${name}/sync/1/${start}/${start + frames.length}${baton === undefined ? "" : `/${baton}`}`,
    body: WalFrame.encodeWire(frames)
  })

/** Frames of a transaction that is not finished: pages 2.. with no commit frame. */
const pendingFrames = (count: number, fill: number): Array<WalFrame.Frame> =>
  Array.from({ length: count }, (_, i) => ({ pgno: i + 2, commitSize: 0, page: new Uint8Array(WalFrame.PAGE_SIZE).fill(fill) }))

const replicaOf = async (base: string, name: string, token: string | null = TOKEN) => {
  const res = await call(base, { path: `/db/${name}/export/1` }, token)
  expect(res.status).toBe(200)
  return new H.Replica(new Uint8Array(res.body))
}

/** File descriptors of this process open on files under `dir`. */
const fdsUnder = (dir: string) =>
  Fs.readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return Fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir)
    } catch {
      return false
    }
  }).length

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("abandoned transactions", () => {
  it.live("an idle baton is dropped on a timer, freeing its frames, and pending frames are capped per server", () =>
    withServer({ batonIdleMs: 400, maxPendingFramesTotal: 100 }, async (base) => {
      // A pushes 60 frames of a transaction and goes away; nobody pushes to A again.
      const a = await push(base, "a", 1, pendingFrames(60, 1))
      expect(a.status).toBe(200)
      const baton = H.json(a).baton
      expect(typeof baton).toBe("string")
      // B's 50 frames would take the server past 100 pending frames: refused, retryable, nothing kept.
      const refused = await push(base, "b", 1, pendingFrames(50, 2))
      expect(refused.status).toBe(503)
      expect(H.json(refused).error).toBe("pending_limit")
      expect(refused.headers["retry-after"]).toBe("1")
      // B fits under the cap with fewer frames.
      expect((await push(base, "b", 1, pendingFrames(30, 2))).status).toBe(200)
      // Without any request to A, its session idles out and its frames are released.
      const deadline = Date.now() + 15_000
      let after = await push(base, "c", 1, pendingFrames(50, 3))
      while (after.status === 503 && Date.now() < deadline) {
        await sleep(100)
        after = await push(base, "c", 1, pendingFrames(50, 3))
      }
      expect(after.status).toBe(200)
      // A's continuation now finds no session.
      const late = await push(base, "a", 61, pendingFrames(1, 1).map((f) => ({ ...f, pgno: 62, commitSize: 62 })), baton)
      expect(late.status).toBe(400)
      expect(H.json(late).error).toBe("unknown_baton")
    }))
})

describe("many databases", () => {
  it.live("at most maxOpenDatabases stay open; the others are closed when idle and reopened on use", () =>
    withServer({ maxOpenDatabases: 3 }, async (base, dir) => {
      const written: Array<{ name: string; rows: number }> = []
      for (let i = 0; i < 12; i++) {
        const name = `db${i}`
        const replica = await replicaOf(base, name)
        const frames = replica.write(`CREATE TABLE t (x); INSERT INTO t VALUES (${i});`)
        replica.close()
        const res = await push(base, name, 1, frames)
        expect(H.json(res)).toMatchObject({ status: "ok", max_frame_no: frames.length })
        written.push({ name, rows: i })
        // store.sqlite and its WAL per open database: never more than 3 databases' worth.
        expect(fdsUnder(dir)).toBeLessThanOrEqual(2 * 3)
      }
      for (const { name, rows } of written) {
        const snapshot = await H.snapshot(base, name, TOKEN)
        const db = H.open(snapshot.file)
        expect(db.prepare("SELECT x FROM t").all()).toEqual([{ x: rows }])
        db.close()
      }
      expect(fdsUnder(dir)).toBeLessThanOrEqual(2 * 3)
    }))

  it.live("maxDatabases counts the databases already there and refuses a new one with 404 database_limit", () =>
    Effect.gen(function*() {
      const dir = H.tempDir("limit")
      yield* withServer({ directory: dir }, async (base) => {
        for (const name of ["old1", "old2"]) expect((await call(base, { path: `/db/${name}/info` })).status).toBe(200)
      })
      yield* withServer({ directory: dir, maxDatabases: 3 }, async (base) => {
        expect((await call(base, { path: "/db/old1/info" })).status).toBe(200)
        expect((await call(base, { path: "/db/new1/info" })).status).toBe(200)
        for (const path of ["/db/new2/info", "/db/new2/export/1", "/db/new2/sync/1/1/2"]) {
          const refused = await call(base, { path })
          expect(refused.status).toBe(404)
          expect(H.json(refused).error).toBe("database_limit")
        }
        const pushed = await push(base, "new2", 1, pendingFrames(1, 1).map((f) => ({ ...f, commitSize: 2 })))
        expect(H.json(pushed).error).toBe("database_limit")
        expect(Fs.readdirSync(dir).sort()).toEqual(["new1", "old1", "old2"])
        expect((await call(base, { path: "/db/old2/info" })).status).toBe(200)
      })
    }))

  it.scopedLive("serve --max-databases and --auth-token: nothing is created before auth, nothing beyond the limit", () =>
    Effect.gen(function*() {
      const dir = H.tempDir("cli-limit")
      const server = yield* serverProcess(["--data", dir, "--auth-token", TOKEN, "--max-databases", "1", "--max-open-databases", "1"])
      yield* Effect.promise(async () => {
        for (const request of [
          { path: "/db/a/info" },
          { path: "/db/b/export/1" },
          { path: "/db/c/sync/1/1/2" },
          { method: "POST", path: "/db/d/sync/1/1/2", body: WalFrame.encodeWire(pendingFrames(1, 1)) }
        ]) {
          const res = await call(server.url, request, "wrong")
          expect(res.status).toBe(401)
          expect(H.json(res).error).toBe("unauthorized")
          expect((await call(server.url, request, null)).status).toBe(401)
        }
        expect(Fs.readdirSync(dir)).toEqual([])
        expect((await call(server.url, { path: "/db/a/info" })).status).toBe(200)
        const refused = await call(server.url, { path: "/db/b/info" })
        expect([refused.status, H.json(refused).error]).toEqual([404, "database_limit"])
        expect(Fs.readdirSync(dir)).toEqual(["a"])
      })
    }))
})

describe("a database's identity", () => {
  it.live("is created with the database, kept across restarts, answered by info and on every answer, and new when recreated", () =>
    Effect.gen(function*() {
      const dir = H.tempDir("identity")
      const first = yield* withServer({ directory: dir }, async (base) => {
        const info = H.json(await call(base, { path: "/db/app/info" }))
        expect(info.database_id).toMatch(/^[0-9a-f-]{36}$/)
        const other = H.json(await call(base, { path: "/db/other/info" }))
        expect(other.database_id).not.toBe(info.database_id)
        const replica = await replicaOf(base, "app")
        const frames = replica.write("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        replica.close()
        const answers = [
          await push(base, "app", 1, frames),
          await call(base, { path: "/db/app/sync/1/1/2" }),
          await call(base, { path: `/db/app/sync/1/${frames.length + 1}/${frames.length + 2}` }),
          await call(base, { path: "/db/app/export/1" }),
          await call(base, { path: "/db/app/info" })
        ]
        for (const answer of answers) expect(answer.headers[SyncProtocol.DATABASE_ID_HEADER]).toBe(info.database_id)
        // The client's remote reports it, over HTTP and in process.
        const remote = await Effect.runPromise(
          SyncRemote.makeHttp({ url: `${base}/db/app`, authToken: TOKEN }).pipe(
            Effect.flatMap((r) => r.info),
            Effect.provide(NodeHttpClient.layerUndici)
          )
        )
        expect(remote).toEqual({
          generation: 1,
          databaseId: info.database_id,
          maxFrameNo: frames.length,
          maxPullFrames: 1024,
          maxPushFrames: 1024,
          snapshot: true,
          pushIdentity: true,
          maxWaitSeconds: 30,
          waitAfter: true
        })
        return info.database_id as string
      })
      yield* withServer({ directory: dir }, async (base) => {
        expect(H.json(await call(base, { path: "/db/app/info" })).database_id).toBe(first)
      })
      Fs.rmSync(Path.join(dir, "app"), { recursive: true })
      yield* withServer({ directory: dir }, async (base) => {
        const again = H.json(await call(base, { path: "/db/app/info" })).database_id
        expect(again).toMatch(/^[0-9a-f-]{36}$/)
        expect(again).not.toBe(first)
      })
    }))

  it.effect("the in-process remote reports it too", () =>
    Effect.gen(function*() {
      const store = yield* ServerStore.ServerStore
      const id = yield* store.databaseId("x")
      const info = yield* StoreRemote.make(store, "x").info
      expect(info).toEqual({ generation: 1, databaseId: id, maxFrameNo: 0, maxPullFrames: 1024, maxPushFrames: 1024, snapshot: true, pushIdentity: true, maxWaitSeconds: 30, waitAfter: true })
      expect(id).toMatch(/^[0-9a-f-]{36}$/)
    }).pipe(Effect.provide(ServerStore.layerMemory())))
})

describe("a data directory the server cannot write", () => {
  // Root writes through permissions, so as root the server runs as `nobody` over a directory it does not own.
  const asUser = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {}

  it.scopedLive("is served read-only: reads answer as before, writes and new databases get 503 read_only, and the start says so", () =>
    Effect.gen(function*() {
      const dir = H.tempDir("readonly")
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      const writer = yield* serverProcess(["--data", dir, "--auth-token", TOKEN])
      const before = yield* Effect.promise(async () => {
        const replica = await replicaOf(writer.url, "app")
        const frames = replica.write("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3);")
        replica.close()
        expect((await push(writer.url, "app", 1, frames)).status).toBe(200)
        return {
          id: H.json(await call(writer.url, { path: "/db/app/info" })).database_id,
          frames: frames.length,
          snapshot: await H.snapshot(writer.url, "app", TOKEN)
        }
      })
      // Killed, so its frames are still in store.sqlite's WAL, not in the file itself.
      writer.child.kill("SIGKILL")
      yield* Effect.promise(() => writer.exited)
      expect(Fs.statSync(Path.join(dir, "app", "store.sqlite-wal")).size).toBeGreaterThan(0)
      ChildProcess.execFileSync("chmod", ["-R", "a+rX,a-w", dir])
      yield* Effect.addFinalizer(() => Effect.sync(() => ChildProcess.execFileSync("chmod", ["-R", "u+w", dir])))
      const listing = treeListing(dir)

      const reader = yield* serverProcess(["--data", dir, "--auth-token", TOKEN], asUser)
      expect(reader.stderr()).toContain("read-only")
      yield* Effect.promise(async () => {
        const info = await call(reader.url, { path: "/db/app/info" })
        expect(H.json(info)).toEqual({
          current_generation: 1,
          database_id: before.id,
          max_frame_no: before.frames,
          max_pull_frames: 1024,
          max_push_frames: 1024,
          extensions: ["snapshot", "push_identity", "wait", "wait-after"],
          max_wait_seconds: 30
        })
        const snapshot = await H.snapshot(reader.url, "app", TOKEN)
        expect(H.digestOf(snapshot)).toBe(H.digestOf(before.snapshot))
        const db = H.open(snapshot.file)
        expect(db.prepare("SELECT x FROM t ORDER BY x").all()).toEqual([{ x: 1 }, { x: 2 }, { x: 3 }])
        db.close()
        const replica = new H.Replica(snapshot.file)
        const next = replica.write("INSERT INTO t VALUES (4);")
        replica.close()
        const refused = await push(reader.url, "app", before.snapshot.frames.length + 1, next)
        expect([refused.status, H.json(refused).error]).toEqual([503, "read_only"])
        expect(H.json(refused).message).toContain("read-only")
        const created = await call(reader.url, { path: "/db/new/info" })
        expect([created.status, H.json(created).error]).toEqual([503, "read_only"])
        expect(H.digestOf(await H.snapshot(reader.url, "app", TOKEN))).toBe(H.digestOf(before.snapshot))
      })
      expect(treeListing(dir)).toEqual(listing)
    }))
})

/** Every file under `dir` with its size. */
const treeListing = (dir: string): Array<string> =>
  (Fs.readdirSync(dir, { recursive: true }) as Array<string>).sort().map((entry) => {
    const stat = Fs.statSync(Path.join(dir, entry))
    return `${entry} ${stat.isDirectory() ? "dir" : stat.size}`
  })
