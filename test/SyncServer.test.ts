import { describe, expect, inject, layer } from "@effect/vitest"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncProtocol from "../src/SyncProtocol.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"
import { freshSchema, suiteDatabase } from "./support/postgres.js"

const TOKEN = "test-token-\u00e9-1"
const MAX_FRAMES = 64
const FRAME = WalFrame.FRAME_SIZE

interface LogLine {
  readonly message: unknown
  readonly level: string
  readonly annotations: Record<string, unknown>
}

class TestServer extends Context.Tag("test/TestServer")<TestServer, {
  /** The server's URL; over PostgreSQL, each read of it names the other of the two instances. */
  readonly base: string
  /** Every instance's URL (two over PostgreSQL). */
  readonly bases: ReadonlyArray<string>
  readonly dir: string | undefined
  readonly lines: Array<LogLine>
}>() {}

type Kind = "memory" | "disk" | "postgres"

/**
 * `postgres`: two servers, each with a store of its own on one PostgreSQL schema (as two `serve`
 * processes would be), and every request goes to the other one than the last: no sticky sessions.
 */
const storeLayer = (kind: Kind, directory: string, options: ServerStore.Options, schema: string) =>
  kind === "memory"
    ? ServerStore.layerMemory(options)
    : kind === "disk"
    ? ServerStore.layer({ ...options, directory })
    : Layer.unwrapEffect(Effect.map(
      Effect.promise(() => suiteDatabase(inject("postgresUrl"), "sync_server")),
      (url) => ServerStore.layerPostgres({ ...options, url, schema })
    ))

const serverLayer = (kind: Kind, storeOptions: ServerStore.Options = {}) =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => H.tempDir(`server-${kind}`)),
      (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
    )
    const lines: Array<LogLine> = []
    const capture = Logger.make<unknown, void>(({ annotations, logLevel, message }) => {
      lines.push({ message, level: logLevel.label, annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
    })
    const schema = freshSchema("sync_server")
    const instance = Effect.flatMap(
      Layer.build(
        SyncServer.layerNode({ port: 0, authToken: Redacted.make(TOKEN), maxBodyBytes: MAX_FRAMES * FRAME }).pipe(
          Layer.provide(storeLayer(kind, dir, storeOptions, schema)),
          Layer.provide(Logger.replace(Logger.defaultLogger, capture))
        )
      ),
      (context) => Effect.provide(SyncServer.baseUrl, context)
    )
    const bases = kind === "postgres" ? [yield* instance, yield* instance] : [yield* instance]
    let next = 0
    return Layer.succeed(TestServer, {
      get base() {
        return bases[next++ % bases.length]
      },
      bases,
      dir: kind === "disk" ? dir : undefined,
      lines
    })
  }))

const authed = H.auth(TOKEN)

const call = (options: H.RawRequest & { readonly anonymous?: boolean }) =>
  Effect.flatMap(TestServer, ({ base }) =>
    Effect.promise(() =>
      H.request(base, {
        ...options,
        headers: { ...(options.anonymous ? {} : authed), ...options.headers }
      })
    ))

const push = (name: string, g: number, start: number, frames: ReadonlyArray<WalFrame.Frame>, baton?: string) =>
  call({
    method: "POST",
    path: `/db/${name}/sync/${g}/${start}/${start + frames.length}${baton === undefined ? "" : `/${baton}`}`,
    body: WalFrame.encodeWire(frames)
  })

const withBase = <A>(f: (base: string) => Promise<A>) =>
  Effect.flatMap(TestServer, ({ base }) => Effect.promise(() => f(base)))

const replicaOf = (name: string) =>
  Effect.acquireRelease(
    withBase((base) => H.exportBase(base, name, 1, TOKEN)).pipe(Effect.map((bytes) => new H.Replica(bytes))),
    (replica) => Effect.sync(() => replica.close())
  )

const suite = (kind: Kind) =>
  layer(serverLayer(kind), { excludeTestServices: true })(`SyncServer over the ${kind} store`, (it) => {
    describe("protocol", () => {
      it.effect("a new database is at generation 1 with the one-page WAL-mode base, and a pull at the head says so", () =>
        Effect.gen(function*() {
          const info = yield* call({ path: "/db/fresh/info" })
          expect(info.status).toBe(200)
          expect(info.headers["content-type"]).toContain("application/json")
          expect(H.json(info)).toEqual({ current_generation: 1, max_frame_no: 0, max_pull_frames: 1024, max_push_frames: MAX_FRAMES, extensions: ["snapshot", "push_identity", "wait", "wait-after"], max_wait_seconds: 30, database_id: expect.any(String) })
          const base = yield* call({ path: "/db/fresh/export/1" })
          expect(base.status).toBe(200)
          expect(base.headers["content-type"]).toBe("application/octet-stream")
          expect(base.body.byteLength).toBe(4096)
          expect([base.body[18], base.body[19]]).toEqual([2, 2])
          const pull = yield* call({ path: "/db/fresh/sync/1/1/129" })
          expect(pull.status).toBe(400)
          expect(H.json(pull)).toEqual({ status: "checkpoint_needed", generation: 1, max_frame_no: 0 })
        }))

      it.scoped("frames pushed come back byte for byte and materialize to the rows written", () =>
        Effect.gen(function*() {
          const replica = yield* replicaOf("roundtrip")
          const frames = replica.write(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one'), (2, 'two');"
          )
          expect(frames.length).toBeGreaterThan(0)
          const res = yield* push("roundtrip", 1, 1, frames)
          expect(res.status).toBe(200)
          expect(H.json(res)).toEqual({ status: "ok", generation: 1, max_frame_no: frames.length })
          const pulled = yield* call({ path: `/db/roundtrip/sync/1/1/${frames.length + 1}` })
          expect(pulled.status).toBe(200)
          expect(pulled.headers["content-type"]).toBe("application/octet-stream")
          expect(Buffer.compare(pulled.body, Buffer.from(WalFrame.encodeWire(frames)))).toBe(0)
          const snap = yield* withBase((base) => H.snapshot(base, "roundtrip", TOKEN))
          const db = H.open(snap.file)
          expect(db.prepare("SELECT id, v FROM t ORDER BY id").all()).toEqual([{ id: 1, v: "one" }, { id: 2, v: "two" }])
          expect(db.pragma("integrity_check", { simple: true })).toBe("ok")
          db.close()
        }))

      it.scoped("a re-push of identical frames is ok, differing frames conflict, a gap answers the real head", () =>
        Effect.gen(function*() {
          const a = yield* replicaOf("idem")
          const b = yield* replicaOf("idem")
          const frames = a.write("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
          expect((yield* push("idem", 1, 1, frames)).status).toBe(200)
          const again = yield* push("idem", 1, 1, frames)
          expect(H.json(again)).toEqual({ status: "ok", generation: 1, max_frame_no: frames.length })
          const other = b.write("CREATE TABLE u(y); INSERT INTO u VALUES (2);")
          const conflict = yield* push("idem", 1, 1, other)
          expect(conflict.status).toBe(200)
          expect(H.json(conflict)).toEqual({ status: "conflict", generation: 1, max_frame_no: frames.length })
          const later = a.write("INSERT INTO t VALUES (2);")
          const gap = yield* push("idem", 1, frames.length + 5, later)
          expect(H.json(gap)).toEqual({ status: "ok", generation: 1, max_frame_no: frames.length })
          const snap = yield* withBase((base) => H.snapshot(base, "idem", TOKEN))
          expect(snap.frames.length).toBe(frames.length)
        }))

      it.scoped("a transaction split over requests travels with a baton and stays invisible until its commit", () =>
        Effect.gen(function*() {
          const replica = yield* replicaOf("baton")
          const frames = replica.write(
            "BEGIN; CREATE TABLE big(b BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 20) INSERT INTO big SELECT randomblob(3000) FROM s; COMMIT;"
          )
          expect(frames.length).toBeGreaterThan(8)
          const first = frames.slice(0, 4)
          expect(WalFrame.committedLength(first)).toBe(0)
          const r1 = yield* push("baton", 1, 1, first)
          const body1 = H.json(r1)
          expect(body1.status).toBe("ok")
          expect(body1.max_frame_no).toBe(4)
          expect(typeof body1.baton).toBe("string")
          const hidden = yield* call({ path: "/db/baton/sync/1/1/10" })
          expect(hidden.status).toBe(400)
          expect(H.json(hidden)).toEqual({ status: "checkpoint_needed", generation: 1, max_frame_no: 0 })
          const r2 = yield* push("baton", 1, 5, frames.slice(4), body1.baton)
          expect(H.json(r2)).toMatchObject({ status: "ok", generation: 1, max_frame_no: frames.length })
          const snap = yield* withBase((base) => H.snapshot(base, "baton", TOKEN))
          expect(snap.frames.length).toBe(frames.length)
          const db = H.open(snap.file)
          expect(db.prepare("SELECT count(*) AS n FROM big").get()).toEqual({ n: 20 })
          db.close()
        }))

      if (kind === "postgres") {
        it.scoped("a baton transaction goes on whichever instance each request reaches; both then serve the commit", () =>
          Effect.gen(function*() {
            const { bases } = yield* TestServer
            const replica = yield* replicaOf("crossing")
            const frames = replica.write(
              "BEGIN; CREATE TABLE big(b BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 20) INSERT INTO big SELECT randomblob(3000) FROM s; COMMIT;"
            )
            const parts = [frames.slice(0, 4), frames.slice(4, 8), frames.slice(8)]
            expect(WalFrame.committedLength(parts[1])).toBe(0)
            let baton: string | undefined
            let start = 1
            for (const [i, part] of parts.entries()) {
              const path = `/db/crossing/sync/1/${start}/${start + part.length}${baton === undefined ? "" : `/${baton}`}`
              const res = yield* Effect.promise(() =>
                H.request(bases[i % 2], { method: "POST", path, headers: authed, body: WalFrame.encodeWire(part) })
              )
              expect(H.json(res)).toMatchObject({ status: "ok", max_frame_no: start + part.length - 1 })
              baton = H.json(res).baton
              start += part.length
            }
            expect(baton).toBeUndefined()
            for (const base of bases) {
              const snap = yield* Effect.promise(() => H.snapshot(base, "crossing", TOKEN))
              expect(snap.frames.length).toBe(frames.length)
              const db = H.open(snap.file)
              expect(db.prepare("SELECT count(*) AS n FROM big").get()).toEqual({ n: 20 })
              db.close()
            }
          }))
      }

      it.effect("every request logs exactly one line with database, route, status, frames and ms", () =>
        Effect.gen(function*() {
          const { lines } = yield* TestServer
          const before = lines.length
          yield* call({ path: "/db/logs/info" })
          yield* call({ path: "/db/logs/sync/1/1/2" })
          yield* call({ path: "/db/bad.name/info" })
          yield* call({ path: "/db/logs/info", anonymous: true })
          const mine = lines.slice(before)
          expect(mine.length).toBe(4)
          for (const line of mine) {
            expect(line.message).toEqual(["request"])
            expect(Object.keys(line.annotations)).toEqual(
              expect.arrayContaining(["database", "method", "route", "status", "frames", "ms"])
            )
            expect(typeof line.annotations.ms).toBe("number")
          }
          expect(mine.map((l) => [l.annotations.database, l.annotations.route, l.annotations.status])).toEqual([
            ["logs", "GET /info", 200],
            ["logs", "GET /sync/{G}/{start}/{end}", 400],
            ["-", "GET /info", 400],
            ["-", "unrouted", 401]
          ])
          expect(mine[2].annotations.error).toBe("bad_database_name")
        }))

      it.effect("a pull asking for more than the per-request maximum gets at most that many frames", () =>
        Effect.gen(function*() {
          const res = yield* call({ path: `/db/roundtrip/sync/1/1/${2 ** 31 - 1}` })
          expect(res.status).toBe(200)
          expect(res.body.byteLength % FRAME).toBe(0)
          expect(res.body.byteLength / FRAME).toBeLessThanOrEqual(SyncProtocol.MAX_FRAMES_PER_REQUEST)
        }))
    })

    describe("hostile requests change nothing and get a 4xx with a JSON error", () => {
      const name = "hostile"
      const state: {
        digest?: string
        tree?: string
        head: number
        first: ReadonlyArray<WalFrame.Frame>
        next: ReadonlyArray<WalFrame.Frame>
      } = { head: 0, first: [], next: [] }

      it.scoped("seed: a database with data and the frames of a valid next transaction", () =>
        Effect.gen(function*() {
          const replica = yield* replicaOf(name)
          const frames = replica.write(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 60) INSERT INTO t SELECT x, hex(randomblob(200)) FROM s;"
          )
          expect(H.json(yield* push(name, 1, 1, frames)).status).toBe("ok")
          state.head = frames.length
          state.first = frames
          state.next = replica.write("UPDATE t SET v = 'changed' WHERE id <= 30;")
          expect(state.next.length).toBeGreaterThan(0)
          const { dir } = yield* TestServer
          const snap = yield* withBase((base) => H.snapshot(base, name, TOKEN))
          state.digest = H.digestOf(snap)
          if (dir !== undefined) state.tree = H.treeDigest(dir)
        }))

      const frame = (pgno: number, commitSize: number, fill?: number): WalFrame.Frame => {
        const page = new Uint8Array(WalFrame.PAGE_SIZE)
        if (fill === undefined) page.set(new Uint8Array(Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 255))))
        else page.fill(fill)
        return { pgno, commitSize, page }
      }
      // The newest page 1 the database has, with some header bytes changed, as a one-frame commit.
      const withHeaderBytes = (changes: Record<number, number>): WalFrame.Frame => {
        const latest = state.first.filter((f) => f.pgno === 1).at(-1)!
        const page = Uint8Array.from(latest.page)
        for (const [offset, value] of Object.entries(changes)) page[Number(offset)] = value
        return { pgno: 1, commitSize: Math.max(...state.first.map((f) => f.commitSize)), page }
      }
      const pushPath = (start: number, end: number, extra = "") => `/db/${name}/sync/1/${start}/${end}${extra}`
      // Wire frames as a sender with another page size would build them: 24-byte header, then the page.
      const otherPageSize = (pageSize: number, count: number) => {
        const out = new Uint8Array(count * (WalFrame.FRAME_HEADER_SIZE + pageSize))
        const view = new DataView(out.buffer)
        for (let i = 0; i < count; i++) {
          const offset = i * (WalFrame.FRAME_HEADER_SIZE + pageSize)
          view.setUint32(offset, i + 2)
          view.setUint32(offset + 4, i === count - 1 ? count + 1 : 0)
          out.fill(0x5a, offset + WalFrame.FRAME_HEADER_SIZE, offset + WalFrame.FRAME_HEADER_SIZE + pageSize)
        }
        return out
      }
      const at = () => state.head + 1

      interface Case {
        readonly title: string
        readonly request: () => H.RawRequest & { readonly anonymous?: boolean }
        readonly status: number
        readonly error: string
      }
      const cases: ReadonlyArray<Case> = [
        { title: "raw '..' as the name", request: () => ({ path: "/db/../info" }), status: 400, error: "bad_database_name" },
        { title: "'..%2f..%2fetc' traversal in the name", request: () => ({ path: "/db/..%2f..%2fetc/info" }), status: 400, error: "bad_database_name" },
        { title: "'%2e%2e' as the name", request: () => ({ path: "/db/%2e%2e/export/1" }), status: 400, error: "bad_database_name" },
        { title: "a name with a dot", request: () => ({ path: "/db/a.b/info" }), status: 400, error: "bad_database_name" },
        { title: "a 65-character name", request: () => ({ path: `/db/${"a".repeat(65)}/info` }), status: 400, error: "bad_database_name" },
        { title: "a 300-character name", request: () => ({ path: `/db/${"a".repeat(300)}/info` }), status: 400, error: "bad_database_name" },
        { title: "an empty name", request: () => ({ path: "/db//info" }), status: 400, error: "bad_database_name" },
        { title: "a name with an encoded NUL", request: () => ({ path: "/db/a%00b/info" }), status: 400, error: "bad_database_name" },
        { title: "a name with non-ASCII letters", request: () => ({ path: "/db/%C3%A9t%C3%A9/info" }), status: 400, error: "bad_database_name" },
        { title: "broken percent-encoding", request: () => ({ path: "/db/%zz/info" }), status: 400, error: "bad_path" },
        { title: "generation 0", request: () => ({ path: `/db/${name}/export/0` }), status: 400, error: "bad_number" },
        { title: "generation '01x'", request: () => ({ path: `/db/${name}/export/01x` }), status: 400, error: "bad_number" },
        { title: "generation with a leading zero", request: () => ({ path: `/db/${name}/export/01` }), status: 400, error: "bad_number" },
        { title: "generation -1", request: () => ({ path: `/db/${name}/export/-1` }), status: 400, error: "bad_number" },
        { title: "generation 1e3", request: () => ({ path: `/db/${name}/sync/1e3/1/2` }), status: 400, error: "bad_number" },
        { title: "generation 2^31", request: () => ({ path: `/db/${name}/export/2147483648` }), status: 400, error: "bad_number" },
        { title: "a 40-digit frame number", request: () => ({ path: `/db/${name}/sync/1/${"9".repeat(40)}/2` }), status: 400, error: "bad_number" },
        { title: "start 0", request: () => ({ path: `/db/${name}/sync/1/0/2` }), status: 400, error: "bad_number" },
        { title: "end '2.5'", request: () => ({ path: `/db/${name}/sync/1/1/2.5` }), status: 400, error: "bad_number" },
        { title: "end equal to start (pull)", request: () => ({ path: `/db/${name}/sync/1/5/5` }), status: 400, error: "bad_range" },
        { title: "end before start (push)", request: () => ({ method: "POST", path: pushPath(5, 3), body: new Uint8Array(0) }), status: 400, error: "bad_range" },
        { title: "a partial frame", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([frame(1, 0)]).subarray(0, FRAME - 1) }), status: 400, error: "bad_frames" },
        { title: "a body that is not whole frames, declared length hidden (chunked)", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: [new Uint8Array(FRAME + 100)] }), status: 400, error: "bad_frames" },
        { title: "fewer frames than end - start", request: () => ({ method: "POST", path: pushPath(at(), at() + 3), body: WalFrame.encodeWire(state.next.slice(0, 1)) }), status: 400, error: "bad_frames" },
        { title: "more frames than end - start", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire(state.next.slice(0, 2).length === 2 ? state.next.slice(0, 2) : [state.next[0], state.next[0]]) }), status: 400, error: "bad_frames" },
        { title: "an empty push body", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: new Uint8Array(0) }), status: 400, error: "bad_frames" },
        { title: "frames of 1024-byte pages (1048 bytes each, as many as end - start)", request: () => ({ method: "POST", path: pushPath(at(), at() + 4), body: otherPageSize(1024, 4) }), status: 400, error: "bad_frames" },
        { title: "frames of 8192-byte pages (8216 bytes each, as many as end - start)", request: () => ({ method: "POST", path: pushPath(at(), at() + 2), body: otherPageSize(8192, 2) }), status: 400, error: "bad_frames" },
        { title: "page number 0", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([frame(0, 1)]) }), status: 400, error: "bad_frames" },
        { title: "a commit size smaller than a page written", request: () => ({ method: "POST", path: pushPath(at(), at() + 2), body: WalFrame.encodeWire([frame(9, 0), frame(2, 3)]) }), status: 400, error: "bad_frames" },
        { title: "a body over the limit, refused by content-length", request: () => ({ method: "POST", path: pushPath(at(), at() + MAX_FRAMES + 1), body: new Uint8Array((MAX_FRAMES + 1) * FRAME) }), status: 413, error: "too_large" },
        { title: "a body over the limit, refused while reading (chunked)", request: () => ({ method: "POST", path: pushPath(at(), at() + 2), body: Array.from({ length: 7 }, () => new Uint8Array(16 * FRAME)) }), status: 413, error: "too_large" },
        { title: "more frames in the path than a push may carry", request: () => ({ method: "POST", path: pushPath(at(), at() + MAX_FRAMES + 1) }), status: 413, error: "too_large" },
        { title: "an unknown baton", request: () => ({ method: "POST", path: pushPath(at(), at() + state.next.length, "/no-such-baton"), body: WalFrame.encodeWire(state.next) }), status: 400, error: "unknown_baton" },
        { title: "a baton with characters no baton has", request: () => ({ method: "POST", path: pushPath(at(), at() + 1, "/%3Cscript%3E"), body: WalFrame.encodeWire([state.next[0]]) }), status: 400, error: "bad_baton" },
        { title: "no Authorization header", request: () => ({ path: `/db/${name}/export/1`, anonymous: true }), status: 401, error: "unauthorized" },
        { title: "a wrong token", request: () => ({ path: `/db/${name}/export/1`, anonymous: true, headers: { authorization: "Bearer nope" } }), status: 401, error: "unauthorized" },
        { title: "the right token under another scheme", request: () => ({ path: `/db/${name}/info`, anonymous: true, headers: { authorization: `Basic ${TOKEN}` } }), status: 401, error: "unauthorized" },
        { title: "the token in another case", request: () => ({ path: `/db/${name}/info`, anonymous: true, headers: { authorization: `Bearer ${TOKEN.toUpperCase()}` } }), status: 401, error: "unauthorized" },
        { title: "a prefix of the token", request: () => ({ path: `/db/${name}/info`, anonymous: true, headers: { authorization: `Bearer ${TOKEN.slice(0, -1)}` } }), status: 401, error: "unauthorized" },
        { title: "an empty bearer token (what the libSQL client sends without one)", request: () => ({ path: `/db/${name}/info`, anonymous: true, headers: { authorization: "Bearer " } }), status: 401, error: "unauthorized" },
        { title: "a push without a token", request: () => ({ method: "POST", path: pushPath(at(), at() + state.next.length), anonymous: true, body: WalFrame.encodeWire(state.next) }), status: 401, error: "unauthorized" },
        { title: "DELETE on /info", request: () => ({ method: "DELETE", path: `/db/${name}/info` }), status: 405, error: "method_not_allowed" },
        { title: "POST on /export", request: () => ({ method: "POST", path: `/db/${name}/export/1`, body: new Uint8Array(10) }), status: 405, error: "method_not_allowed" },
        { title: "PUT on /sync", request: () => ({ method: "PUT", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([state.next[0]]) }), status: 405, error: "method_not_allowed" },
        { title: "GET with a baton", request: () => ({ path: `/db/${name}/sync/1/1/2/abc` }), status: 405, error: "method_not_allowed" },
        { title: "an unknown route", request: () => ({ path: "/admin" }), status: 404, error: "not_found" },
        { title: "an unknown route under a database", request: () => ({ path: `/db/${name}/drop` }), status: 404, error: "not_found" },
        { title: "a trailing slash", request: () => ({ path: `/db/${name}/info/` }), status: 404, error: "not_found" },
        { title: "export of a generation that does not exist", request: () => ({ path: `/db/${name}/export/99` }), status: 404, error: "generation_not_found" },
        { title: "pull of a generation that does not exist", request: () => ({ path: `/db/${name}/sync/99/1/2` }), status: 404, error: "generation_not_found" },
        { title: "garbage over page 1 (the header)", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([frame(1, 1000)]) }), status: 400, error: "malformed_database" },
        { title: "garbage over a table page", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([frame(2, Math.max(...state.next.map((f) => f.commitSize)))]) }), status: 400, error: "malformed_database" },
        { title: "a zeroed page 1", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([frame(1, Math.max(...state.next.map((f) => f.commitSize)), 0)]) }), status: 400, error: "malformed_database" },
        { title: "a commit size of 2^31-1 pages (8 TiB)", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([{ ...state.next.at(-1)!, commitSize: 2 ** 31 - 1 }]) }), status: 400, error: "malformed_database" },
        { title: "a page 1 declaring 8192-byte pages", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([withHeaderBytes({ 16: 0x20, 17: 0x00 })]) }), status: 400, error: "malformed_database" },
        { title: "a page 1 switching the database out of WAL mode", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([withHeaderBytes({ 18: 1, 19: 1 })]) }), status: 400, error: "malformed_database" },
        { title: "a commit that cuts the file below its tables", request: () => ({ method: "POST", path: pushPath(at(), at() + 1), body: WalFrame.encodeWire([{ ...state.first.filter((f) => f.pgno === 1).at(-1)!, commitSize: 1 }]) }), status: 400, error: "malformed_database" }
      ]

      for (const c of cases) {
        it.effect(`${c.title} → ${c.status} ${c.error}`, () =>
          Effect.gen(function*() {
            const res = yield* call(c.request())
            expect(res.status).toBe(c.status)
            expect(res.headers["content-type"]).toContain("application/json")
            const body = H.json(res)
            expect(body.error).toBe(c.error)
            expect(typeof body.message).toBe("string")
            expect(Object.keys(body).sort()).toEqual(["error", "message"])
            if (c.status === 401) expect(res.headers["www-authenticate"]).toBe("Bearer")
            if (c.status === 405) expect(res.headers["allow"]).toBeTruthy()
            const alive = yield* call({ path: `/db/${name}/info` })
            expect(alive.status).toBe(200)
          }))
      }

      it.effect("a sync URL that leaves out /db/NAME gets a 404 that says where databases are served", () =>
        Effect.gen(function*() {
          const res = yield* call({ path: "/info" })
          expect(res.status).toBe(404)
          const body = H.json(res)
          expect(body.error).toBe("not_found")
          expect(body.message).toContain("/db/NAME")
        }))

      it.effect("a client that hangs up in the middle of a push body changes nothing and is logged as 499 or 400", () =>
        Effect.gen(function*() {
          const { base, lines } = yield* TestServer
          const before = lines.length
          const url = new URL(base)
          const body = WalFrame.encodeWire(state.next)
          yield* Effect.promise(() =>
            new Promise<void>((resolve, reject) => {
              const socket = Net.connect(Number(url.port), url.hostname, () => {
                socket.write(
                  `POST ${pushPath(at(), at() + state.next.length)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\n` +
                    `Content-Length: ${body.byteLength}\r\n\r\n`,
                  "latin1"
                )
                socket.write(body.subarray(0, Math.floor(body.byteLength / 2)), () => {
                  setTimeout(() => {
                    socket.destroy()
                    resolve()
                  }, 50)
                })
              })
              socket.on("error", reject)
            })
          )
          for (let i = 0; i < 50 && lines.length === before; i++) {
            yield* Effect.promise(() => new Promise((r) => setTimeout(r, 20)))
          }
          const line = lines.slice(before).find((l) => l.annotations.route === "POST /sync/{G}/{start}/{end}")
          expect(line).toBeDefined()
          expect([400, 499]).toContain(line!.annotations.status)
          expect((yield* call({ path: `/db/${name}/info` })).status).toBe(200)
        }))

      it.effect("after all of them the stored database is unchanged, and a valid push still works", () =>
        Effect.gen(function*() {
          const { dir } = yield* TestServer
          const snap = yield* withBase((base) => H.snapshot(base, name, TOKEN))
          expect(H.digestOf(snap)).toBe(state.digest)
          if (dir !== undefined) expect(H.treeDigest(dir)).toBe(state.tree)
          const ok = yield* push(name, 1, at(), state.next)
          expect(H.json(ok)).toEqual({ status: "ok", generation: 1, max_frame_no: state.head + state.next.length })
          const after = yield* withBase((base) => H.snapshot(base, name, TOKEN))
          const db = H.open(after.file)
          expect(db.prepare("SELECT count(*) AS n FROM t WHERE v = 'changed'").get()).toEqual({ n: 30 })
          expect(db.pragma("integrity_check", { simple: true })).toBe("ok")
          db.close()
        }))
    })
  })

suite("memory")
suite("disk")
suite("postgres")

// A store that fails on purpose, to see how the routes map its failures (database name = the failure).
const failingStore = Layer.succeed(ServerStore.ServerStore, {
  info: (database) => failWith(database),
  databaseId: (database) => failWith(database),
  exportGeneration: (database) => failWith(database),
  openExport: (database) => failWith(database),
  snapshot: (database) => failWith(database),
  maxPullFrames: 1024,
  pull: (database) => failWith(database),
  push: (database) => failWith(database),
  stats: Effect.suspend(() => failWith("Storage")),
  awaitChange: (database) => failWith(database)
})
const failWith = (database: string): Effect.Effect<never, ServerStore.StoreError> =>
  database === "defect"
    ? Effect.die(new Error("a bug with a secret path /srv/secret"))
    : Effect.fail(
      new ServerStore.StoreError({
        reason: database as ServerStore.StoreError["reason"],
        message: database === "Storage" ? "disk /srv/secret/store.sqlite is full" : `refused: ${database}`
      })
    )

layer(
  Layer.unwrapEffect(Effect.sync(() => {
    const lines: Array<LogLine> = []
    const capture = Logger.make<unknown, void>(({ annotations, logLevel, message }) => {
      lines.push({ message, level: logLevel.label, annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
    })
    return Layer.effect(TestServer, Effect.map(SyncServer.baseUrl, (base) => ({ base, bases: [base], dir: undefined, lines }))).pipe(
      Layer.provide(SyncServer.layerNode({ port: 0, authToken: Redacted.make(TOKEN) })),
      Layer.provide(failingStore),
      Layer.provide(Logger.replace(Logger.defaultLogger, capture))
    )
  })),
  { excludeTestServices: true }
)("SyncServer maps store failures", (it) => {
  const expected: ReadonlyArray<readonly [string, number, string]> = [
    ["BadRequest", 400, "bad_request"],
    ["BadFrames", 400, "bad_frames"],
    ["Malformed", 400, "malformed_database"],
    ["UnknownBaton", 400, "unknown_baton"],
    ["TooLarge", 413, "too_large"],
    ["GenerationNotFound", 404, "generation_not_found"],
    ["GenerationGone", 410, "generation_gone"],
    ["DatabaseLimit", 404, "database_limit"],
    ["ReadOnly", 503, "read_only"],
    ["PendingLimit", 503, "pending_limit"],
    ["Busy", 503, "busy"],
    ["Storage", 500, "storage"],
    ["defect", 500, "internal"]
  ]
  it("the table covers every store error reason, and the server answers from it", () => {
    const reasons = expected.map(([reason]) => reason).filter((reason) => reason !== "defect")
    expect(new Set(reasons)).toEqual(new Set(Object.keys(SyncProtocol.errorStatus)))
    for (const [reason, status, error] of expected) {
      if (reason === "defect") continue
      const row = SyncProtocol.errorStatus[reason as SyncProtocol.StoreErrorReason]
      expect([row.status, row.code]).toEqual([status, error])
    }
  })
  for (const [reason, status, error] of expected) {
    it.effect(`${reason} → ${status} ${error} on info and export, and never 500 on a pull`, () =>
      Effect.gen(function*() {
        for (const path of [`/db/${reason}/info`, `/db/${reason}/export/1`, `/db/${reason}/sync/1/1/2`]) {
          const res = yield* call({ path })
          const pullRoute = path.includes("/sync/")
          expect(res.status).toBe(pullRoute && status === 500 ? 503 : status)
          expect(H.json(res).error).toBe(error)
          // Storage details and defects stay in the log, not in the answer.
          expect(res.body.toString()).not.toContain("/srv/secret")
          if (reason === "Busy" || reason === "PendingLimit") expect(res.headers["retry-after"]).toBe("1")
        }
        const { lines } = yield* TestServer
        const last = lines.at(-1)!
        expect(last.annotations.status).toBe(status === 500 ? 503 : status)
        if (reason === "Storage" || reason === "defect") {
          expect(last.level).toBe("ERROR")
          expect(String(last.annotations.detail)).toContain("/srv/secret")
        }
      }))
  }

  it.effect("GET /ready is 503 while the store does not answer; GET /health stays 200", () =>
    Effect.gen(function*() {
      const ready = yield* call({ path: "/ready", anonymous: true })
      expect(ready.status).toBe(503)
      expect(H.json(ready).error).toBe("storage")
      expect(ready.body.toString()).not.toContain("/srv/secret")
      const health = yield* call({ path: "/health", anonymous: true })
      expect(health.status).toBe(200)
      expect(H.json(health)).toEqual({ status: "ok" })
      // The metrics still answer, without the store's gauges.
      const metrics = yield* call({ path: "/metrics" })
      expect(metrics.status).toBe(200)
      expect(metrics.body.toString()).toMatch(/effect_sqlite_sync_requests_total\{route="GET \/ready",status="503"\} [1-9]/)
    }))
})

layer(serverLayer("memory", { batonIdleMs: 60_000 }), { excludeTestServices: true })("SyncServer operations routes", (it) => {
  it.effect("GET /health and GET /ready answer without a token; other routes still need it", () =>
    Effect.gen(function*() {
      for (const path of ["/health", "/ready"]) {
        const res = yield* call({ path, anonymous: true })
        expect(res.status).toBe(200)
        expect(res.headers["content-type"]).toContain("application/json")
      }
      expect(H.json(yield* call({ path: "/ready", anonymous: true }))).toEqual({ status: "ready" })
      expect((yield* call({ path: "/metrics", anonymous: true })).status).toBe(401)
      expect((yield* call({ path: "/db/x/info", anonymous: true })).status).toBe(401)
      expect((yield* call({ path: "/health", method: "POST", anonymous: true })).status).toBe(401)
      expect((yield* call({ path: "/health", method: "POST" })).status).toBe(405)
      // Databases may be called like the routes: they live under /db/.
      for (const name of ["health", "ready", "metrics"]) {
        expect(H.json(yield* call({ path: `/db/${name}/info` }))).toMatchObject({ current_generation: 1 })
      }
    }))

  it.scoped("GET /metrics counts requests by route and status, push and pull latency, frames, bytes, batons, databases and checks", () =>
    Effect.gen(function*() {
      const replica = yield* replicaOf("counted")
      const frames = replica.write("BEGIN; CREATE TABLE t(x); INSERT INTO t VALUES (1); COMMIT;")
      expect(H.json(yield* push("counted", 1, 1, frames)).status).toBe("ok")
      expect((yield* call({ path: `/db/counted/sync/1/1/${frames.length + 1}` })).status).toBe(200)
      // An open baton session.
      const big = replica.write(
        "BEGIN; CREATE TABLE big(b BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 10) INSERT INTO big SELECT randomblob(3000) FROM s; COMMIT;"
      )
      const open = H.json(yield* push("counted", 1, frames.length + 1, big.slice(0, 2)))
      expect(open.baton).toBeTypeOf("string")
      const res = yield* call({ path: "/metrics" })
      expect(res.status).toBe(200)
      expect(res.headers["content-type"]).toContain("text/plain")
      const text = res.body.toString()
      const value = (pattern: string) => {
        const match = new RegExp(`^${pattern} ([0-9.e+-]+)$`, "m").exec(text)
        expect(match, pattern).not.toBeNull()
        return Number(match![1])
      }
      expect(text).toContain("# TYPE effect_sqlite_sync_requests_total counter")
      expect(value(`effect_sqlite_sync_requests_total\\{route="POST /sync/\\{G\\}/\\{start\\}/\\{end\\}",status="200"\\}`)).toBeGreaterThanOrEqual(2)
      expect(value(`effect_sqlite_sync_requests_total\\{route="GET /sync/\\{G\\}/\\{start\\}/\\{end\\}",status="200"\\}`)).toBeGreaterThanOrEqual(1)
      expect(text).toContain("# TYPE effect_sqlite_sync_push_seconds histogram")
      expect(value(`effect_sqlite_sync_push_seconds_bucket\\{le="\\+Inf"\\}`)).toBe(value("effect_sqlite_sync_push_seconds_count"))
      expect(value("effect_sqlite_sync_push_seconds_count")).toBeGreaterThanOrEqual(2)
      expect(value("effect_sqlite_sync_pull_seconds_count")).toBeGreaterThanOrEqual(1)
      expect(value(`effect_sqlite_sync_frames_total\\{direction="push"\\}`)).toBeGreaterThanOrEqual(frames.length + 2)
      expect(value(`effect_sqlite_sync_frames_total\\{direction="pull"\\}`)).toBeGreaterThanOrEqual(frames.length)
      expect(value(`effect_sqlite_sync_bytes_total\\{direction="push"\\}`)).toBeGreaterThanOrEqual((frames.length + 2) * FRAME)
      expect(value("effect_sqlite_sync_check_seconds_count")).toBeGreaterThanOrEqual(1)
      expect(value("effect_sqlite_sync_databases")).toBeGreaterThanOrEqual(1)
      expect(value("effect_sqlite_sync_open_batons")).toBeGreaterThanOrEqual(1)
    }))
})

layer(serverLayer("disk", { generationFrames: 6, maxPullFrames: 3 }), { excludeTestServices: true })(
  "SyncServer extensions: snapshot at the head, pull answer size",
  (it) => {
    it.scoped("/info advertises them; GET /snapshot is the head as one file; a replica made from it pulls and pushes on", () =>
      Effect.gen(function*() {
        const info0 = yield* call({ path: "/db/snap/info" })
        expect(H.json(info0)).toEqual({
          current_generation: 1,
          max_frame_no: 0,
          max_pull_frames: 3,
          max_push_frames: MAX_FRAMES,
          extensions: ["snapshot", "push_identity", "wait", "wait-after"],
          max_wait_seconds: 30,
          database_id: expect.any(String)
        })
        // The snapshot carries the database's identity like every answer from the database.
        const id = H.json(info0).database_id
        const empty = yield* call({ path: "/db/snap/snapshot" })
        expect(empty.status).toBe(200)
        expect([empty.headers["x-sync-generation"], empty.headers["x-sync-frame"]]).toEqual(["1", "0"])
        expect(Buffer.compare(empty.body, yield* withBase((base) => H.exportBase(base, "snap", 1, TOKEN)))).toBe(0)

        const replica = yield* replicaOf("snap")
        const frames = replica.write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one');")
        expect(H.json(yield* push("snap", 1, 1, frames)).status).toBe("ok")
        const snap = yield* call({ path: "/db/snap/snapshot" })
        expect(snap.status).toBe(200)
        expect(snap.headers["content-type"]).toBe("application/octet-stream")
        expect(snap.headers["content-length"]).toBe(String(snap.body.byteLength))
        expect([snap.headers["x-sync-generation"], snap.headers["x-sync-frame"]]).toEqual(["1", String(frames.length)])
        expect(snap.headers["x-database-id"]).toBe(id)
        const server = yield* withBase((base) => H.snapshot(base, "snap", TOKEN))
        expect(Buffer.compare(snap.body, server.file)).toBe(0)
        // Asked again, it is answered from memory in one write: the same bytes, headers and length.
        const again = yield* call({ path: "/db/snap/snapshot" })
        expect(again.status).toBe(200)
        expect(Buffer.compare(again.body, snap.body)).toBe(0)
        expect([again.headers["content-type"], again.headers["content-length"], again.headers["x-sync-frame"], again.headers["x-database-id"]])
          .toEqual(["application/octet-stream", String(snap.body.byteLength), String(frames.length), id])

        // Pull answers are cut at the advertised size.
        const pulled = yield* call({ path: `/db/snap/sync/1/1/100` })
        expect(pulled.body.byteLength).toBe(Math.min(3, frames.length) * FRAME)

        // A replica bootstrapped from the snapshot continues after its frame.
        const fromSnapshot = new H.Replica(new Uint8Array(snap.body))
        yield* Effect.addFinalizer(() => Effect.sync(() => fromSnapshot.close()))
        const next = fromSnapshot.write("INSERT INTO t VALUES (2, 'two');")
        const answer = H.json(yield* push("snap", 1, frames.length + 1, next))
        expect(answer).toEqual({ status: "ok", generation: 1, max_frame_no: frames.length + next.length })
        const after = yield* withBase((base) => H.snapshot(base, "snap", TOKEN))
        const db = H.open(after.file)
        expect(db.prepare("SELECT v FROM t ORDER BY id").all()).toEqual([{ v: "one" }, { v: "two" }])
        db.close()

        // HEAD answers the headers alone; the route has no other method.
        const head = yield* call({ method: "HEAD", path: "/db/snap/snapshot" })
        expect([head.status, head.body.byteLength]).toEqual([200, 0])
        expect(head.headers["x-sync-frame"]).toBe(String(frames.length + next.length))
        const post = yield* call({ method: "POST", path: "/db/snap/snapshot", body: new Uint8Array(1) })
        expect([post.status, H.json(post).error]).toEqual([405, "method_not_allowed"])
        const refused = yield* call({ path: "/db/snap/snapshot", anonymous: true })
        expect(refused.status).toBe(401)
      }))
  }
)

layer(serverLayer("disk", { generationFrames: 1, keepGenerations: 1, batonIdleMs: 60_000 }), {
  excludeTestServices: true
})("SyncServer with rolling generations and batons", (it) => {
  it.scoped("a dropped generation answers 410 to export and pull; a push to it conflicts", () =>
    Effect.gen(function*() {
      const replica = yield* replicaOf("gone")
      const frames = replica.write("BEGIN; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2); COMMIT;")
      const first = yield* push("gone", 1, 1, frames)
      expect(H.json(first)).toEqual({ status: "ok", generation: 1, max_frame_no: frames.length })
      const info1 = H.json(yield* call({ path: "/db/gone/info" }))
      expect(info1.current_generation).toBe(2)
      // A replica of generation 2 starts from its base and pushes past the limit again: generation 1 goes.
      const base2 = yield* call({ path: "/db/gone/export/2" })
      expect(base2.status).toBe(200)
      const replica2 = new H.Replica(new Uint8Array(base2.body))
      yield* Effect.addFinalizer(() => Effect.sync(() => replica2.close()))
      const more = replica2.write("BEGIN; INSERT INTO t VALUES (3); INSERT INTO t SELECT x + 10 FROM t; CREATE TABLE u(y); COMMIT;")
      expect(H.json(yield* push("gone", 2, 1, more)).status).toBe("ok")
      expect(H.json(yield* call({ path: "/db/gone/info" })).current_generation).toBe(3)
      for (const path of ["/db/gone/export/1", "/db/gone/sync/1/1/2"]) {
        const res = yield* call({ path })
        expect(res.status).toBe(410)
        expect(H.json(res).error).toBe("generation_gone")
      }
      const late = yield* push("gone", 1, frames.length + 1, replica.write("INSERT INTO t VALUES (99);"))
      expect(late.status).toBe(200)
      expect(H.json(late).status).toBe("conflict")
      const pulled = yield* call({ path: "/db/gone/sync/2/1/100" })
      expect(pulled.status).toBe(200)
      expect(pulled.body.byteLength).toBe(more.length * FRAME)
    }))

  it.scoped("a push while another push's transaction is open gets 503 busy with Retry-After", () =>
    Effect.gen(function*() {
      const replica = yield* replicaOf("busy")
      const frames = replica.write(
        "BEGIN; CREATE TABLE big(b BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 10) INSERT INTO big SELECT randomblob(3000) FROM s; COMMIT;"
      )
      const open = H.json(yield* push("busy", 1, 1, frames.slice(0, 3)))
      expect(open.baton).toBeTypeOf("string")
      // The opening request sent again (its answer lost) gets the baton back...
      const retry = H.json(yield* push("busy", 1, 1, frames.slice(0, 3)))
      expect(retry).toEqual({ status: "ok", generation: 1, max_frame_no: 3, baton: open.baton })
      // ...but another pusher's frames wait.
      const rival = yield* replicaOf("busy")
      const theirs = rival.write("BEGIN; CREATE TABLE other(x); INSERT INTO other VALUES (1); COMMIT;")
      const other = yield* push("busy", 1, 1, theirs)
      expect(other.status).toBe(503)
      expect(other.headers["retry-after"]).toBe("1")
      expect(H.json(other).error).toBe("busy")
      const done = yield* push("busy", 1, 4, frames.slice(3), open.baton)
      expect(H.json(done)).toMatchObject({ status: "ok", max_frame_no: frames.length })
    }))
})

layer(
  Layer.effect(TestServer, Effect.map(SyncServer.baseUrl, (base) => ({ base, bases: [base], dir: undefined, lines: [] }))).pipe(
    Layer.provide(
      SyncServer.layerConfig({
        host: Config.string("SYNC_HOST"),
        port: Config.integer("SYNC_PORT"),
        authToken: Config.redacted("SYNC_TOKEN")
      })
    ),
    Layer.provide(ServerStore.layerMemory()),
    Layer.provide(Layer.setConfigProvider(
      ConfigProvider.fromMap(new Map([["SYNC_HOST", "127.0.0.1"], ["SYNC_PORT", "0"], ["SYNC_TOKEN", TOKEN]]))
    )),
    Layer.provide(Logger.replace(Logger.defaultLogger, Logger.none))
  ),
  { excludeTestServices: true }
)("SyncServer.layerConfig", (it) => {
  it.effect("reads host, port and token from Config", () =>
    Effect.gen(function*() {
      const { base } = yield* TestServer
      expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      expect((yield* call({ path: "/db/cfg/info", anonymous: true })).status).toBe(401)
      expect(H.json(yield* call({ path: "/db/cfg/info" }))).toEqual({ current_generation: 1, max_frame_no: 0, max_pull_frames: 1024, max_push_frames: 1024, extensions: ["snapshot", "push_identity", "wait", "wait-after"], max_wait_seconds: 30, database_id: expect.any(String) })
    }))
})
