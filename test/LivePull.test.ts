/**
 * Waiting pulls (`Prefer: wait=N`) and `ServerStore.awaitChange`: real servers on loopback ports, the
 * client's HTTP remote and raw HTTP, real SQLite files (replicas and the embedded store), a real
 * PostgreSQL for the shared store, and the real CLI.
 *
 * Timing assertions are one-sided and loose, for a loaded machine: a wake-up must come after its cause
 * and well before the wait would have run out (waits of 20 s, answers asserted under 10 s).
 */
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, inject, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import fc from "fast-check"
import * as crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Redacted from "effect/Redacted"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as SyncProtocol from "../src/SyncProtocol.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as CommitNotify from "../src/internal/server/commitNotify.js"
import * as CommitNotifyPostgres from "../src/internal/server/commitNotifyPostgres.js"
import * as WaitingPull from "../src/internal/server/waitingPull.js"
import * as H from "./support/http.js"
import { freshDatabase, freshSchema, suiteDatabase } from "./support/postgres.js"
import { serverProcess } from "./support/process.js"

const quiet = Logger.withMinimumLogLevel(LogLevel.Error)

const WAIT_SECONDS = 20
/** A wake-up must come before this: half the wait. */
const WELL_BEFORE_MS = (WAIT_SECONDS * 1000) / 2

// ---------------------------------------------------------------------------------------------
// Real frames: a SQLite replica that never checkpoints, so its WAL holds what a client would push.

interface Writer {
  /** Runs `sql` on the replica; answers the frames it added, numbered from `start`. */
  readonly write: (sql: string) => { readonly start: number; readonly frames: ReadonlyArray<WalFrame.Frame> }
}

const writerFrom = (base: Uint8Array): Effect.Effect<Writer, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(Effect.sync(() => new H.Replica(base)), (replica) => Effect.sync(() => replica.close())),
    (replica) => {
      let pushed = 0
      return {
        write: (sql) => {
          const frames = replica.write(sql)
          const start = pushed + 1
          pushed += frames.length
          return { start, frames }
        }
      }
    }
  )

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const started = Date.now()
    const a = yield* effect
    return { value: a, ms: Date.now() - started, endedAt: Date.now() }
  })

// ---------------------------------------------------------------------------------------------
// ServerStore.awaitChange: the same contract for every store

type MakeLayer = (options?: ServerStore.Options) => Layer.Layer<ServerStore.ServerStore, ServerStore.StoreError>

const postgresLayer: MakeLayer = (options = {}) =>
  Layer.unwrapEffect(
    Effect.map(
      Effect.promise(() => suiteDatabase(inject("postgresUrl"), "live_pull")),
      (url) => ServerStore.layerPostgres({ ...options, url, schema: freshSchema("live") })
    )
  )

const diskLayer: MakeLayer = (options = {}) =>
  Layer.unwrapScoped(
    Effect.map(
      Effect.acquireRelease(
        Effect.sync(() => H.tempDir("live-store")),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      ),
      (directory) => ServerStore.layer({ ...options, directory })
    )
  )

const stores: ReadonlyArray<readonly [string, MakeLayer]> = [
  ["layerMemory", (options) => ServerStore.layerMemory(options)],
  ["layer (embedded SQLite in a temp directory)", diskLayer],
  ["layerPostgres (a real PostgreSQL server)", postgresLayer]
]

for (const [label, makeLayer] of stores) {
  describe(`ServerStore.awaitChange: ${label}`, () => {
    const withStore = <A, E>(
      options: ServerStore.Options,
      body: (store: ServerStore.Service) => Effect.Effect<A, E, Scope.Scope>
    ) => Effect.flatMap(ServerStore.ServerStore, body).pipe(Effect.provide(makeLayer(options)), quiet)

    it.scopedLive("answers at once when the head is already another, and the unchanged head when the time runs out", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const writer = yield* writerFrom(yield* store.exportGeneration("db", 1))
          const { frames, start } = writer.write("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
          yield* store.push("db", 1, start, start + frames.length, frames)
          const head = { generation: 1, maxFrameNo: frames.length }
          // A waiter that saw an older head, or the frame after the head, answers at once.
          const older = yield* timed(store.awaitChange("db", 1, 0, "20 seconds"))
          expect(older.value).toEqual(head)
          expect(older.ms).toBeLessThan(WELL_BEFORE_MS)
          const past = yield* timed(store.awaitChange("db", 1, frames.length + 5, "20 seconds"))
          expect(past.value).toEqual(head)
          expect(past.ms).toBeLessThan(WELL_BEFORE_MS)
          // At the head: the whole timeout, then the head as it was.
          const idle = yield* timed(store.awaitChange("db", 1, frames.length, "400 millis"))
          expect(idle.value).toEqual(head)
          expect(idle.ms).toBeGreaterThanOrEqual(390)
          // Bad names are refused like everywhere else.
          const refused = yield* Effect.flip(store.awaitChange("../x", 1, 0, "1 second"))
          expect(refused.reason).toBe("BadRequest")
        })))

    it.scopedLive("a commit wakes every waiter of its database at once, and no waiter of another database", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const a = yield* writerFrom(yield* store.exportGeneration("a", 1))
          const b = yield* writerFrom(yield* store.exportGeneration("b", 1))
          const started = Date.now()
          const onA = yield* Effect.forEach(
            Array.from({ length: 50 }),
            () => Effect.fork(timed(store.awaitChange("a", 1, 0, `${WAIT_SECONDS} seconds`))),
            { concurrency: "unbounded" }
          )
          const onB = yield* Effect.forEach(
            Array.from({ length: 50 }),
            () => Effect.fork(store.awaitChange("b", 1, 0, `${WAIT_SECONDS} seconds`)),
            { concurrency: "unbounded" }
          )
          yield* Effect.sleep("300 millis")
          const write = a.write("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
          const pushedAt = Date.now()
          expect(yield* store.push("a", 1, 1, write.frames.length + 1, write.frames)).toMatchObject({ _tag: "Ok" })
          const woken = yield* Fiber.joinAll(onA)
          for (const w of woken) {
            expect(w.value).toEqual({ generation: 1, maxFrameNo: write.frames.length })
            expect(w.endedAt).toBeGreaterThanOrEqual(pushedAt)
            expect(w.endedAt - started).toBeLessThan(WELL_BEFORE_MS)
          }
          // b's waiters still wait; b's own commit wakes them.
          for (const fiber of onB) expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
          const writeB = b.write("CREATE TABLE u (x)")
          yield* store.push("b", 1, 1, writeB.frames.length + 1, writeB.frames)
          for (const head of yield* Fiber.joinAll(onB)) expect(head).toEqual({ generation: 1, maxFrameNo: writeB.frames.length })
          expect(Date.now() - started).toBeLessThan(WELL_BEFORE_MS)
        })))

    it.scopedLive("a commit that rolls the generation wakes the waiter, and the new generation is current", () =>
      withStore({ generationFrames: 3 }, (store) =>
        Effect.gen(function*() {
          const writer = yield* writerFrom(yield* store.exportGeneration("db", 1))
          const waiter = yield* Effect.fork(timed(store.awaitChange("db", 1, 0, `${WAIT_SECONDS} seconds`)))
          yield* Effect.sleep("200 millis")
          const write = writer.write(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) SELECT hex(randomblob(3000)) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)"
          )
          expect(write.frames.length).toBeGreaterThan(3)
          yield* store.push("db", 1, 1, write.frames.length + 1, write.frames)
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
          const woken = yield* Fiber.join(waiter)
          expect(woken.ms).toBeLessThan(WELL_BEFORE_MS)
          // The commit and the roll are one push: a waiter may see either head, never the one it had.
          expect([
            { generation: 1, maxFrameNo: write.frames.length },
            { generation: 2, maxFrameNo: 0 }
          ]).toContainEqual(woken.value)
          // A waiter on the old generation's last frame is answered at once with the new head.
          const late = yield* timed(store.awaitChange("db", 1, write.frames.length, `${WAIT_SECONDS} seconds`))
          expect(late.value).toEqual({ generation: 2, maxFrameNo: 0 })
          expect(late.ms).toBeLessThan(WELL_BEFORE_MS)
        })))

    it.scopedLive("interrupting a waiter ends it at once", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          yield* store.info("db")
          const waiter = yield* Effect.fork(store.awaitChange("db", 1, 0, `${WAIT_SECONDS} seconds`))
          yield* Effect.sleep("200 millis")
          const { ms, value } = yield* timed(Fiber.interrupt(waiter))
          expect(Exit.isInterrupted(value)).toBe(true)
          expect(ms).toBeLessThan(WELL_BEFORE_MS)
        })))
  })
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: commits through another process's store, and a listener that dies

const pgUrl = () => suiteDatabase(inject("postgresUrl"), "live_pull")

/** Terminates the backends listening on `schema`'s commit channel; answers how many. */
const killListeners = (url: string, schema: string) =>
  Effect.gen(function*() {
    const sql = yield* PgClient.make({ url: Redacted.make(url), maxConnections: 1 })
    const rows = yield* sql<{ killed: boolean }>`
      SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity
      WHERE datname = current_database() AND query = ${`LISTEN "${schema}_commits"`}`
    return rows.filter((r) => r.killed).length
  }).pipe(Effect.provide(Reactivity.layer), Effect.scoped, Effect.orDie)

describe("ServerStore.layerPostgres: waiters and other processes' commits", () => {
  const twoStores = Effect.gen(function*() {
    const url = yield* Effect.promise(pgUrl)
    const schema = freshSchema("livetwo")
    const a = yield* ServerStore.makePostgres({ url, schema })
    const b = yield* ServerStore.makePostgres({ url, schema })
    return { a, b, url, schema }
  })

  /**
   * A waiter on `waiting` at frame `frameNo`, `meanwhile`, then `sql` written and pushed through `pushing`:
   * the waiter wakes with the pushed head, after the push and well before its wait runs out.
   */
  const wakesOnPush = (
    waiting: ServerStore.Service,
    pushing: ServerStore.Service,
    writer: Writer,
    frameNo: number,
    sql: string,
    meanwhile: Effect.Effect<void> = Effect.void
  ) =>
    Effect.gen(function*() {
      const waiter = yield* Effect.fork(timed(waiting.awaitChange("db", 1, frameNo, `${WAIT_SECONDS} seconds`)))
      yield* Effect.sleep("200 millis")
      yield* meanwhile
      const write = writer.write(sql)
      const pushedAt = Date.now()
      yield* pushing.push("db", 1, write.start, write.start + write.frames.length, write.frames)
      const woken = yield* Fiber.join(waiter)
      const head = write.start + write.frames.length - 1
      expect(woken.value).toEqual({ generation: 1, maxFrameNo: head })
      expect(woken.endedAt).toBeGreaterThanOrEqual(pushedAt)
      expect(woken.ms).toBeLessThan(WELL_BEFORE_MS)
      return head
    })

  it.scopedLive("a waiter on one store wakes on a commit through the other", () =>
    Effect.gen(function*() {
      const { a, b } = yield* twoStores
      const writer = yield* writerFrom(yield* b.exportGeneration("db", 1))
      yield* wakesOnPush(a, b, writer, 0, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    }).pipe(quiet))

  it.scopedLive("the listening connection killed: a commit through the other store still wakes the waiter, and listening resumes", () =>
    Effect.gen(function*() {
      const { a, b, schema, url } = yield* twoStores
      const writer = yield* writerFrom(yield* b.exportGeneration("db", 1))
      yield* a.info("db")
      // Both stores listen once they started.
      yield* Effect.sleep("500 millis")
      const killed = Effect.flatMap(killListeners(url, schema), (n) =>
        Effect.sync(() => {
          expect(n).toBe(2)
        }))
      const head = yield* wakesOnPush(a, b, writer, 0, "CREATE TABLE t (id INTEGER PRIMARY KEY)", Effect.zipRight(killed, Effect.sleep("200 millis")))
      // New listening connections are made: both stores listen again, and a commit wakes a waiter again.
      let listening = 0
      for (let attempt = 0; attempt < 60 && listening < 2; attempt++) {
        yield* Effect.sleep("250 millis")
        listening = yield* countListeners(url, schema)
      }
      expect(listening).toBe(2)
      yield* wakesOnPush(a, b, writer, head, "INSERT INTO t VALUES (1)")
    }).pipe(quiet), 60_000)
})

const countListeners = (url: string, schema: string) =>
  Effect.gen(function*() {
    const sql = yield* PgClient.make({ url: Redacted.make(url), maxConnections: 1 })
    const [row] = yield* sql<{ n: number }>`
      SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND query = ${`LISTEN "${schema}_commits"`}`
    return row?.n ?? 0
  }).pipe(Effect.provide(Reactivity.layer), Effect.scoped, Effect.orDie)

// ---------------------------------------------------------------------------------------------
// Over HTTP

const fast = Schedule.intersect(Schedule.spaced(10), Schedule.recurs(2))

/** A server on a free loopback port over `store`, in a scope of its own (closed by `close`). */
const startServer = (
  store: Layer.Layer<ServerStore.ServerStore, ServerStore.StoreError>,
  options: SyncServer.NodeOptions = {},
  logLevel: LogLevel.LogLevel = LogLevel.Error
) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(
      SyncServer.layerNode({ port: 0, ...options }).pipe(Layer.provideMerge(store)),
      scope
    ).pipe(Logger.withMinimumLogLevel(logLevel))
    const base = yield* Effect.provide(SyncServer.baseUrl, context)
    return {
      base,
      url: (name: string) => `${base}/db/${name}`,
      store: Context.get(context, ServerStore.ServerStore),
      close: Scope.close(scope, Exit.void)
    }
  })

const remote = (url: string, requestTimeout?: SyncRemote.HttpOptions["requestTimeout"]) =>
  SyncRemote.makeHttp({ url, retrySchedule: fast, requestTimeout })

const waitingPulls = (base: string) =>
  Effect.promise(async () => {
    const text = (await H.request(base, { path: "/metrics" })).body.toString("utf8")
    const match = /^effect_sqlite_sync_waiting_pulls (\d+)$/m.exec(text)
    return match === null ? -1 : Number(match[1])
  })

/** Polls the gauge until it reads `n` (a request reaches its wait a moment after it was sent). */
const gaugeReaches = (base: string, n: number) =>
  Effect.gen(function*() {
    let value = yield* waitingPulls(base)
    for (let attempt = 0; attempt < 200 && value !== n; attempt++) {
      yield* Effect.sleep("50 millis")
      value = yield* waitingPulls(base)
    }
    return value
  })

const rawPull = (base: string, path: string, wait?: number) =>
  Effect.promise(() =>
    H.request(base, { path, headers: wait === undefined ? {} : { prefer: SyncProtocol.formatWait(wait) } })
  )

const httpStores: ReadonlyArray<readonly [string, MakeLayer]> = [
  ["memory store", (options) => ServerStore.layerMemory(options)],
  ["embedded SQLite store", diskLayer]
]

for (const [label, makeStore] of httpStores) {
  describe(`waiting pulls over HTTP: ${label}`, () => {
    it.scopedLive("/info offers them; a pull at the head returns another client's push as soon as it commits", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore())
        const reader = yield* remote(server.url("live"))
        const writer = yield* remote(server.url("live"))
        const info = H.json(yield* Effect.promise(() => H.request(server.base, { path: "/db/live/info" })))
        expect(info.extensions).toEqual(["snapshot", "push_identity", "wait", "wait-after"])
        expect(info.max_wait_seconds).toBe(SyncProtocol.DEFAULT_MAX_WAIT_SECONDS)
        expect(yield* reader.info).toMatchObject({ generation: 1, maxFrameNo: 0, maxWaitSeconds: 30 })
        const replica = yield* writerFrom(yield* writer.export(1))
        const started = Date.now()
        const waiting = yield* Effect.fork(reader.pull(1, 1, 129, { waitSeconds: WAIT_SECONDS }))
        yield* Effect.sleep("300 millis")
        const write = replica.write("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('hello')")
        const pushedAt = Date.now()
        expect(yield* writer.push(1, 1, write.frames.length + 1, write.frames)).toMatchObject({ _tag: "Ok" })
        const result = yield* Fiber.join(waiting)
        const returnedAt = Date.now()
        expect(result._tag).toBe("Frames")
        const pulled = result._tag === "Frames" ? result.frames : []
        expect(pulled.length).toBe(write.frames.length)
        pulled.forEach((frame, i) => expect(WalFrame.equals(frame, write.frames[i])).toBe(true))
        expect(returnedAt).toBeGreaterThanOrEqual(pushedAt)
        expect(returnedAt - started).toBeLessThan(WELL_BEFORE_MS)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

    it.scopedLive("after=F: a pull from the client's last frame waits while the head is F, then answers F and the frames after it, naming the database", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore())
        const reader = yield* remote(server.url("held"))
        const writer = yield* remote(server.url("held"))
        expect(yield* reader.info).toMatchObject({ waitAfter: true })
        const replica = yield* writerFrom(yield* writer.export(1))
        const first = replica.write("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        expect(yield* writer.push(1, 1, first.frames.length + 1, first.frames)).toMatchObject({ _tag: "Ok" })
        const held = first.frames.length
        const id = (yield* reader.info).databaseId
        // Nothing after F: waits its time, then answers F alone.
        const idle = yield* timed(reader.pull(1, held, held + 129, { waitSeconds: 1, after: held }))
        expect(idle.ms).toBeGreaterThanOrEqual(950)
        expect(idle.value).toMatchObject({ _tag: "Frames", databaseId: id })
        expect(idle.value._tag === "Frames" ? idle.value.frames.length : 0).toBe(1)
        // A commit during the wait: answered as soon as it lands, from F.
        const started = Date.now()
        const waiting = yield* Effect.fork(reader.pull(1, held, held + 129, { waitSeconds: WAIT_SECONDS, after: held }))
        yield* Effect.sleep("300 millis")
        const second = replica.write("INSERT INTO t (v) VALUES ('hello')")
        expect(yield* writer.push(1, held + 1, held + second.frames.length + 1, second.frames)).toMatchObject({ _tag: "Ok" })
        const result = yield* Fiber.join(waiting)
        expect(Date.now() - started).toBeLessThan(WELL_BEFORE_MS)
        expect(result).toMatchObject({ _tag: "Frames", databaseId: id })
        const frames = result._tag === "Frames" ? result.frames : []
        expect(frames.length).toBe(1 + second.frames.length)
        expect(WalFrame.equals(frames[0], first.frames[held - 1])).toBe(true)
        second.frames.forEach((frame, i) => expect(WalFrame.equals(frames[i + 1], frame)).toBe(true))
        // The head is past F already: answered at once, F and what follows.
        const past = yield* timed(reader.pull(1, held, held + 129, { waitSeconds: WAIT_SECONDS, after: held }))
        expect(past.ms).toBeLessThan(950)
        expect(past.value._tag === "Frames" ? past.value.frames.length : 0).toBe(1 + second.frames.length)
        // A client past the head (F beyond it) is answered at once, as without after.
        const beyond = yield* timed(reader.pull(1, held + 5, held + 129, { waitSeconds: WAIT_SECONDS, after: held + 5 }))
        expect(beyond.ms).toBeLessThan(950)
        expect(beyond.value).toMatchObject({ _tag: "CheckpointNeeded", generation: 1, maxFrameNo: held + second.frames.length })
      }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

    it.scopedLive("a pull that finds nothing waits its time, then answers checkpoint_needed; without the header it answers at once", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore())
        yield* rawPull(server.base, "/db/idle/info")
        const waited = yield* timed(rawPull(server.base, "/db/idle/sync/1/1/129", 1))
        expect(waited.value.status).toBe(400)
        expect(H.json(waited.value)).toEqual({ status: "checkpoint_needed", generation: 1, max_frame_no: 0 })
        expect(waited.value.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBe("wait=1")
        expect(waited.value.headers[SyncProtocol.DATABASE_ID_HEADER]).toEqual(expect.any(String))
        expect(waited.ms).toBeGreaterThanOrEqual(950)
        // A longer wait than the server's is cut to it, and said so.
        const server2 = yield* startServer(makeStore(), { maxWaitSeconds: 1 })
        const cut = yield* timed(rawPull(server2.base, "/db/idle/sync/1/1/129", 600))
        expect(cut.value.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBe("wait=1")
        expect(cut.ms).toBeLessThan(WELL_BEFORE_MS)
        // No header: today's answer, at once, without Preference-Applied.
        const plain = yield* timed(rawPull(server.base, "/db/idle/sync/1/1/129"))
        expect(plain.value.status).toBe(400)
        expect(H.json(plain.value)).toEqual({ status: "checkpoint_needed", generation: 1, max_frame_no: 0 })
        expect(plain.value.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBeUndefined()
        expect(plain.ms).toBeLessThan(950)
        // An unreadable preference is ignored (RFC 7240): answered at once.
        const junk = yield* timed(Effect.promise(() =>
          H.request(server.base, { path: "/db/idle/sync/1/1/129", headers: { prefer: "wait=soon" } })
        ))
        expect(junk.value.status).toBe(400)
        expect(junk.value.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBeUndefined()
        expect(junk.ms).toBeLessThan(950)
      }))

    it.scopedLive("a push that rolls the generation wakes the pull with its frames; the next pull learns the new generation at once", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore({ generationFrames: 3 }))
        const client = yield* remote(server.url("roll"))
        const replica = yield* writerFrom(yield* client.export(1))
        const waiting = yield* Effect.fork(timed(client.pull(1, 1, 129, { waitSeconds: WAIT_SECONDS })))
        yield* Effect.sleep("300 millis")
        const write = replica.write(
          "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) SELECT hex(randomblob(3000)) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)"
        )
        expect(yield* client.push(1, 1, write.frames.length + 1, write.frames)).toMatchObject({ _tag: "Ok" })
        const woken = yield* Fiber.join(waiting)
        expect(woken.ms).toBeLessThan(WELL_BEFORE_MS)
        expect(woken.value._tag === "Frames" && woken.value.frames.length).toBe(write.frames.length)
        const next = yield* timed(client.pull(1, write.frames.length + 1, write.frames.length + 129, { waitSeconds: WAIT_SECONDS }))
        expect(next.value).toEqual({ _tag: "CheckpointNeeded", generation: 2, maxFrameNo: 0, databaseId: expect.any(String) })
        expect(next.ms).toBeLessThan(WELL_BEFORE_MS)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

    it.scopedLive("many pulls wait at once, counted in /metrics; one push answers them all, and the gauge goes back to 0", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore())
        const client = yield* remote(server.url("many"))
        const replica = yield* writerFrom(yield* client.export(1))
        const started = Date.now()
        const pulls = yield* Effect.forEach(
          Array.from({ length: 200 }),
          () => Effect.fork(rawPull(server.base, "/db/many/sync/1/1/129", WAIT_SECONDS)),
          { concurrency: "unbounded" }
        )
        expect(yield* gaugeReaches(server.base, 200)).toBe(200)
        const write = replica.write("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        yield* client.push(1, 1, write.frames.length + 1, write.frames)
        const answers = yield* Fiber.joinAll(pulls)
        expect(Date.now() - started).toBeLessThan(WELL_BEFORE_MS)
        for (const answer of answers) {
          expect(answer.status).toBe(200)
          expect(answer.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBe(`wait=${WAIT_SECONDS}`)
          expect(answer.body.byteLength).toBe(write.frames.length * WalFrame.FRAME_SIZE)
        }
        expect(yield* waitingPulls(server.base)).toBe(0)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

    it.scopedLive("beyond maxWaitingPulls a pull is answered at once, with Preference-Applied: wait=0", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore(), { maxWaitingPulls: 3 })
        const pulls = yield* Effect.forEach(
          Array.from({ length: 3 }),
          () => Effect.fork(rawPull(server.base, "/db/cap/sync/1/1/129", WAIT_SECONDS)),
          { concurrency: "unbounded" }
        )
        expect(yield* gaugeReaches(server.base, 3)).toBe(3)
        const extra = yield* timed(rawPull(server.base, "/db/cap/sync/1/1/129", WAIT_SECONDS))
        expect(extra.value.status).toBe(400)
        expect(extra.value.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBe("wait=0")
        expect(extra.ms).toBeLessThan(WELL_BEFORE_MS)
        yield* Effect.forEach(pulls, Fiber.interrupt, { discard: true })
      }))

    it.scopedLive("a client that gives up frees its waiter: interrupting the pull aborts the request", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore())
        const client = yield* remote(server.url("abort"))
        yield* client.info
        const pull = yield* Effect.fork(client.pull(1, 1, 129, { waitSeconds: WAIT_SECONDS }))
        expect(yield* gaugeReaches(server.base, 1)).toBe(1)
        const interrupted = yield* timed(Fiber.interrupt(pull))
        expect(interrupted.ms).toBeLessThan(WELL_BEFORE_MS)
        expect(yield* gaugeReaches(server.base, 0)).toBe(0)
        // A raw client that closes its socket does the same.
        const socket = yield* Effect.sync(() =>
          Http.get(`${server.base}/db/abort/sync/1/1/129`, { headers: { prefer: "wait=20" }, agent: false }).on("error", () => {})
        )
        expect(yield* gaugeReaches(server.base, 1)).toBe(1)
        socket.destroy()
        expect(yield* gaugeReaches(server.base, 0)).toBe(0)
        // And the fetch-based client aborts its request the same way.
        const viaFetch = yield* remote(server.url("abort")).pipe(Effect.provide(FetchHttpClient.layer))
        const fetching = yield* Effect.fork(viaFetch.pull(1, 1, 129, { waitSeconds: WAIT_SECONDS }))
        expect(yield* gaugeReaches(server.base, 1)).toBe(1)
        yield* Fiber.interrupt(fetching)
        expect(yield* gaugeReaches(server.base, 0)).toBe(0)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

    it.scopedLive("shutdown answers waiting pulls at once (checkpoint_needed) instead of waiting them out", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore())
        const pulls = yield* Effect.forEach(
          Array.from({ length: 5 }),
          () => Effect.fork(rawPull(server.base, "/db/bye/sync/1/1/129", WAIT_SECONDS)),
          { concurrency: "unbounded" }
        )
        expect(yield* gaugeReaches(server.base, 5)).toBe(5)
        const closed = yield* timed(server.close)
        expect(closed.ms).toBeLessThan(WELL_BEFORE_MS)
        for (const answer of yield* Fiber.joinAll(pulls)) {
          expect(answer.status).toBe(400)
          expect(H.json(answer)).toEqual({ status: "checkpoint_needed", generation: 1, max_frame_no: 0 })
        }
      }))

    it.scopedLive("the server's request and socket timeouts do not cut a wait; the client's timeout gets the wait on top", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore(), { requestTimeoutMs: 1_000, socketTimeoutMs: 1_500, maxWaitSeconds: 4 })
        const raw = yield* timed(rawPull(server.base, "/db/slow/sync/1/1/129", 4))
        expect(raw.value.status).toBe(400)
        expect(H.json(raw.value).status).toBe("checkpoint_needed")
        expect(raw.ms).toBeGreaterThanOrEqual(3_900)
        // A client whose request timeout is shorter than the wait still gets the answer.
        const client = yield* remote(server.url("slow"), "1 second")
        const pulled = yield* timed(client.pull(1, 1, 129, { waitSeconds: 3 }))
        expect(pulled.value).toEqual({ _tag: "CheckpointNeeded", generation: 1, maxFrameNo: 0, databaseId: expect.any(String) })
        expect(pulled.ms).toBeGreaterThanOrEqual(2_900)
        // The idle-socket timeout still applies outside waits: the connection was kept, not cut.
        expect((yield* rawPull(server.base, "/health")).status).toBe(200)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

    it.scopedLive("maxWaitSeconds 0 turns the extension off: not offered, the header ignored, clients do not ask", () =>
      Effect.gen(function*() {
        const server = yield* startServer(makeStore(), { maxWaitSeconds: 0 })
        const info = H.json(yield* rawPull(server.base, "/db/off/info"))
        expect(info.extensions).toEqual(["snapshot", "push_identity"])
        expect(info.max_wait_seconds).toBeUndefined()
        const raw = yield* timed(rawPull(server.base, "/db/off/sync/1/1/129", 20))
        expect(raw.value.status).toBe(400)
        expect(raw.value.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBeUndefined()
        expect(raw.ms).toBeLessThan(WELL_BEFORE_MS)
        const client = yield* remote(server.url("off"))
        expect((yield* client.info).maxWaitSeconds).toBeUndefined()
        const pulled = yield* timed(client.pull(1, 1, 129, { waitSeconds: 20 }))
        expect(pulled.value._tag).toBe("CheckpointNeeded")
        expect(pulled.ms).toBeLessThan(WELL_BEFORE_MS)
      }).pipe(Effect.provide(NodeHttpClient.layerUndici)))
  })
}

describe("waiting pulls: two servers on one PostgreSQL, the CLI, the in-process remote", () => {
  /**
   * A pull waiting on the server at `readerBase`, then a push through the one at `writerBase`: the pull
   * answers the pushed frames, after the push and well before its wait runs out.
   */
  const pullWakesOnPush = (readerBase: string, writerBase: string, name: string) =>
    Effect.gen(function*() {
      const reader = yield* remote(`${readerBase}/db/${name}`)
      const writer = yield* remote(`${writerBase}/db/${name}`)
      const replica = yield* writerFrom(yield* writer.export(1))
      const started = Date.now()
      const waiting = yield* Effect.fork(reader.pull(1, 1, 129, { waitSeconds: WAIT_SECONDS }))
      expect(yield* gaugeReaches(readerBase, 1)).toBe(1)
      const write = replica.write("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('x')")
      const pushedAt = Date.now()
      yield* writer.push(1, 1, write.frames.length + 1, write.frames)
      const result = yield* Fiber.join(waiting)
      expect(Date.now()).toBeGreaterThanOrEqual(pushedAt)
      expect(Date.now() - started).toBeLessThan(WELL_BEFORE_MS)
      const pulled = result._tag === "Frames" ? result.frames : []
      expect(pulled.length).toBe(write.frames.length)
      pulled.forEach((frame, i) => expect(WalFrame.equals(frame, write.frames[i])).toBe(true))
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))

  it.scopedLive("a pull waiting on one server wakes on a push through the other", () =>
    Effect.gen(function*() {
      const url = yield* Effect.promise(pgUrl)
      const schema = freshSchema("livehttp")
      const one = yield* startServer(ServerStore.layerPostgres({ url, schema }))
      const two = yield* startServer(ServerStore.layerPostgres({ url, schema }))
      yield* pullWakesOnPush(one.base, two.base, "shared")
    }))

  it.scopedLive("two serve processes on one PostgreSQL: a pull waiting on one wakes on a push through the other", () =>
    Effect.gen(function*() {
      const store = yield* Effect.promise(() => freshDatabase(inject("postgresUrl"), "live_procs"))
      const [one, two] = yield* Effect.all([serverProcess(["--store", store]), serverProcess(["--store", store])], {
        concurrency: "unbounded"
      })
      yield* pullWakesOnPush(one.url, two.url, "procs")
    }), 120_000)

  it.scopedLive("serve --max-pull-wait sets the longest wait, and /info says it", () =>
    Effect.gen(function*() {
      const data = H.tempDir("live-cli")
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(data, { recursive: true, force: true })))
      const dataOff = H.tempDir("live-cli-off")
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dataOff, { recursive: true, force: true })))
      const server = yield* serverProcess(["--data", data, "--max-pull-wait", "2"])
      const info = H.json(yield* rawPull(server.url, "/db/cli/info"))
      expect(info.extensions).toEqual(["snapshot", "push_identity", "wait", "wait-after"])
      expect(info.max_wait_seconds).toBe(2)
      const waited = yield* timed(rawPull(server.url, "/db/cli/sync/1/1/129", 30))
      expect(waited.value.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBe("wait=2")
      expect(waited.ms).toBeGreaterThanOrEqual(1_900)
      expect(waited.ms).toBeLessThan(WELL_BEFORE_MS)
      const off = yield* serverProcess(["--data", dataOff, "--max-pull-wait", "0"])
      expect(H.json(yield* rawPull(off.url, "/db/cli/info")).extensions).toEqual(["snapshot", "push_identity"])
    }), 120_000)

  it.scopedLive("StoreRemote: a waiting pull in process returns the next commit", () =>
    Effect.gen(function*() {
      const store = yield* ServerStore.makeMemory()
      const reader = StoreRemote.make(store, "db")
      const writer = StoreRemote.make(store, "db")
      expect((yield* reader.info).maxWaitSeconds).toBe(SyncProtocol.DEFAULT_MAX_WAIT_SECONDS)
      const replica = yield* writerFrom(yield* writer.export(1))
      const waiting = yield* Effect.fork(timed(reader.pull(1, 1, 129, { waitSeconds: WAIT_SECONDS })))
      yield* Effect.sleep("200 millis")
      const write = replica.write("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* writer.push(1, 1, write.frames.length + 1, write.frames)
      const woken = yield* Fiber.join(waiting)
      expect(woken.ms).toBeLessThan(WELL_BEFORE_MS)
      expect(woken.value._tag === "Frames" && woken.value.frames.length).toBe(write.frames.length)
      // Without a wait, or with waits turned off, it answers at once.
      const off = StoreRemote.make(store, "db", { maxWaitSeconds: 0 })
      expect((yield* off.info).maxWaitSeconds).toBeUndefined()
      const now = yield* timed(off.pull(1, write.frames.length + 1, write.frames.length + 2, { waitSeconds: WAIT_SECONDS }))
      expect(now.value._tag).toBe("CheckpointNeeded")
      expect(now.ms).toBeLessThan(WELL_BEFORE_MS)
    }))
})

describe("the client asks to wait only a server that offers it", () => {
  /** A server answering `/info` with `info` and every pull with checkpoint_needed; it records each pull's `Prefer`. */
  const scripted = (info: Record<string, unknown>) =>
    Effect.acquireRelease(
      Effect.promise(() =>
        new Promise<{ base: string; prefer: Array<string | undefined>; infos: () => number; server: Http.Server }>((resolve) => {
          const prefer: Array<string | undefined> = []
          let infos = 0
          const server = Http.createServer((req, res) => {
            res.setHeader("content-type", "application/json")
            if (req.url!.endsWith("/info")) {
              infos++
              res.end(JSON.stringify(info))
              return
            }
            const value = req.headers.prefer
            prefer.push(Array.isArray(value) ? value.join(", ") : value)
            res.statusCode = 400
            res.end(JSON.stringify({ status: "checkpoint_needed", generation: 1, max_frame_no: 0 }))
          })
          server.listen(0, "127.0.0.1", () => {
            const port = (server.address() as { port: number }).port
            resolve({ base: `http://127.0.0.1:${port}/db/x`, prefer, infos: () => infos, server })
          })
        })
      ),
      ({ server }) =>
        Effect.sync(() => {
          server.closeAllConnections()
          server.close()
        })
    )

  it.scopedLive("no wait offered: no header; offered: the header, cut to the server's maximum; not yet known: /info is asked once first", () =>
    Effect.gen(function*() {
      const plain = yield* scripted({ current_generation: 1, extensions: ["snapshot"] })
      const a = yield* remote(plain.base)
      yield* a.pull(1, 1, 129, { waitSeconds: 20 })
      yield* a.pull(1, 1, 129, { waitSeconds: 20 })
      expect(plain.infos()).toBe(1)
      expect(plain.prefer).toEqual([undefined, undefined])

      const waits = yield* scripted({ current_generation: 1, extensions: ["snapshot", "wait"], max_wait_seconds: 5 })
      const b = yield* remote(waits.base)
      yield* b.pull(1, 1, 129, { waitSeconds: 20 })
      yield* b.pull(1, 1, 129, { waitSeconds: 2.5 })
      yield* b.pull(1, 1, 129)
      expect(waits.infos()).toBe(1)
      expect(waits.prefer).toEqual(["wait=5", "wait=2", undefined])
      // A pull without a wait never asks /info.
      const fresh = yield* scripted({ current_generation: 1, extensions: ["wait"], max_wait_seconds: 5 })
      yield* (yield* remote(fresh.base)).pull(1, 1, 129)
      expect(fresh.infos()).toBe(0)
      expect(fresh.prefer).toEqual([undefined])
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))
})

describe("waiting pulls: logs and metrics", () => {
  it.scopedLive("a waited pull logs waited_ms, and its wait is not serving time in pull_seconds", () =>
    Effect.gen(function*() {
      const lines: Array<Record<string, unknown>> = []
      const capture = Logger.make(({ annotations, message }) => {
        if (Array.isArray(message) ? message[0] === "request" : message === "request") lines.push(Object.fromEntries(annotations))
      })
      const server = yield* startServer(ServerStore.layerMemory(), {}, LogLevel.Info).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, capture))
      )
      const metric = (text: string, series: string) => {
        const match = new RegExp(`^${series.replace(/[{}.+"]/g, "\\$&")} (\\d+)$`, "m").exec(text)
        return match === null ? 0 : Number(match[1])
      }
      const metrics = Effect.promise(async () => (await H.request(server.base, { path: "/metrics" })).body.toString("utf8"))
      const before = yield* metrics
      const waited = yield* timed(rawPull(server.base, "/db/logged/sync/1/1/129", 3))
      expect(waited.ms).toBeGreaterThanOrEqual(2_900)
      const after = yield* metrics
      const within = `effect_sqlite_sync_pull_seconds_bucket{le="2.048"}`
      const all = `effect_sqlite_sync_pull_seconds_count`
      expect(metric(after, all) - metric(before, all)).toBe(1)
      expect(metric(after, within) - metric(before, within)).toBe(1)
      yield* Effect.sleep("200 millis")
      const line = lines.find((l) => l.route === "GET /sync/{G}/{start}/{end}")
      expect(line).toMatchObject({ database: "logged", status: 400, outcome: "checkpoint_needed" })
      expect(line?.waited_ms).toBeGreaterThanOrEqual(2_900)
      expect(line?.ms).toBeGreaterThanOrEqual(line?.waited_ms as number)
    }))
})

describe("the Prefer header", () => {
  it("formatWaitAfter and parsePreferAfter agree; parsePreferWait reads the same header", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 600 }), fc.integer({ min: 0, max: 2 ** 40 }), (n, f) => {
      const header = SyncProtocol.formatWaitAfter(n, f)
      expect(SyncProtocol.parsePreferAfter(header)).toBe(f)
      expect(SyncProtocol.parsePreferWait(header)).toBe(Math.min(n, SyncProtocol.MAX_WAIT_SECONDS_LIMIT))
    }))
    expect(SyncProtocol.parsePreferAfter("wait=5")).toBeUndefined()
    expect(SyncProtocol.parsePreferAfter("wait=5, AFTER=\"12\"; x=y")).toBe(12)
    for (const bad of ["after", "after=", "after=-1", "after=1.5", "after=x"]) {
      expect(SyncProtocol.parsePreferAfter(`wait=5, ${bad}`)).toBeUndefined()
    }
  })

  it("formatWait and parsePreferWait agree; other preferences, parameters, quotes and case are understood", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 10_000 }), (n) => {
      expect(SyncProtocol.parsePreferWait(SyncProtocol.formatWait(n))).toBe(Math.min(n, SyncProtocol.MAX_WAIT_SECONDS_LIMIT))
    }))
    expect(SyncProtocol.parsePreferWait("respond-async, WAIT=5")).toBe(5)
    expect(SyncProtocol.parsePreferWait("wait=\"7\"; foo=bar")).toBe(7)
    expect(SyncProtocol.parsePreferWait(" wait = 9 ")).toBe(9)
    expect(SyncProtocol.parsePreferWait("wait=3, wait=8")).toBe(3)
    for (const bad of [undefined, "", "respond-async", "wait", "wait=", "wait=-1", "wait=1.5", "wait=1e3", "waits=4"]) {
      expect(SyncProtocol.parsePreferWait(bad)).toBeUndefined()
    }
    fc.assert(fc.property(fc.string(), (header) => {
      const parsed = SyncProtocol.parsePreferWait(header)
      expect(parsed === undefined || (Number.isSafeInteger(parsed) && parsed >= 0 && parsed <= SyncProtocol.MAX_WAIT_SECONDS_LIMIT)).toBe(true)
    }))
  })

  it("waitToAsk floors, caps at the remote's maximum, and asks nothing of a remote that does not wait", () => {
    expect(SyncRemote.waitToAsk(20, 30)).toBe(20)
    expect(SyncRemote.waitToAsk(45.7, 30)).toBe(30)
    expect(SyncRemote.waitToAsk(2.9, 30)).toBe(2)
    expect(SyncRemote.waitToAsk(0.5, 30)).toBe(0)
    expect(SyncRemote.waitToAsk(20, undefined)).toBe(0)
    expect(SyncRemote.waitToAsk(undefined, 30)).toBe(0)
    expect(SyncRemote.waitToAsk(Number.NaN, 30)).toBe(0)
  })
})

describe("the pure parts", () => {
  const head = fc.record({ generation: fc.integer({ min: 1, max: 2 ** 31 - 1 }), maxFrameNo: fc.integer({ min: 0, max: 2 ** 31 - 1 }) })

  it("a notification names the database and its head, and nothing else on the channel reads as one", () => {
    fc.assert(fc.property(fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/), head, (database, h) => {
      expect(CommitNotifyPostgres.parsePayload(CommitNotifyPostgres.formatPayload(database, h.generation, h.maxFrameNo)))
        .toEqual({ database, head: h })
    }))
    expect(CommitNotifyPostgres.parsePayload(`ping:${crypto.randomUUID()}`)).toBeUndefined()
    expect(CommitNotifyPostgres.parsePayload("a:1")).toBeUndefined()
    expect(CommitNotifyPostgres.parsePayload("a/b:1:2")).toBeUndefined()
  })

  it("channel names are PostgreSQL identifiers, one per schema", () => {
    const schemas = fc.stringMatching(/^[a-z_][a-z0-9_]{0,62}$/)
    fc.assert(fc.property(schemas, schemas, (a, b) => {
      const ca = CommitNotifyPostgres.channelOf(a)
      expect(Buffer.byteLength(ca)).toBeLessThanOrEqual(63)
      expect(ca).toMatch(/^[a-z_][a-z0-9_]*$/)
      if (a !== b) expect(ca).not.toBe(CommitNotifyPostgres.channelOf(b))
    }))
    expect(CommitNotifyPostgres.channelOf("effect_sqlite_sync")).toBe("effect_sqlite_sync_commits")
  })

  it("notify wakes the waiters whose head differs from the one reported, notifyAll every one, remove forgets", () =>
    fc.assert(fc.property(fc.array(head, { minLength: 1, maxLength: 20 }), head, (seen, reported) => {
      const notifier = CommitNotify.make()
      const waiters = seen.map((h) => notifier.add("db", h.generation, h.maxFrameNo))
      const other = notifier.add("other", 1, 0)
      expect(notifier.size()).toBe(seen.length + 1)
      notifier.notify("db", reported)
      waiters.forEach((w, i) => {
        const done = Effect.runSync(Deferred.isDone(w.woken))
        expect(done).toBe(CommitNotify.moved(reported, seen[i].generation, seen[i].maxFrameNo))
      })
      expect(Effect.runSync(Deferred.isDone(other.woken))).toBe(false)
      notifier.notifyAll()
      expect(Effect.runSync(Deferred.isDone(other.woken))).toBe(true)
      for (const w of [...waiters, other]) notifier.remove(w)
      expect(notifier.size()).toBe(0)
      expect(notifier.databases()).toEqual([])
    })))

  it("a pull with after=F waits only while the head of its generation is F; without F as the head, as atHead", () => {
    const framesOf = (n: number) => ({ _tag: "Frames" as const, frames: Array.from({ length: n }, () => ({ pgno: 1, commitSize: 1, page: new Uint8Array(0) })) })
    fc.assert(fc.property(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: 60 }), (start, after, head) => {
      // What the store answers a pull from `start` when the generation's head is `head`.
      const answer = head >= start ? framesOf(head - start + 1) : { _tag: "CheckpointNeeded" as const, generation: 2, maxFrameNo: head }
      expect(WaitingPull.atHeadAfter(answer, 2, start, after)).toBe(head === after)
      // Another generation's head never waits.
      expect(WaitingPull.atHeadAfter({ _tag: "CheckpointNeeded", generation: 3, maxFrameNo: after }, 2, start, after)).toBe(false)
      // after = start - 1 is the plain waiting pull.
      expect(WaitingPull.atHeadAfter(answer, 2, start, start - 1)).toBe(WaitingPull.atHead(answer, 2, start))
    }))
  })

  it("a pull waits only at the head of the generation it names", () => {
    const frames = { _tag: "Frames" as const, frames: [] }
    expect(WaitingPull.atHead({ _tag: "CheckpointNeeded", generation: 3, maxFrameNo: 9 }, 3, 10)).toBe(true)
    expect(WaitingPull.atHead({ _tag: "CheckpointNeeded", generation: 4, maxFrameNo: 0 }, 3, 10)).toBe(false)
    expect(WaitingPull.atHead({ _tag: "CheckpointNeeded", generation: 3, maxFrameNo: 9 }, 3, 12)).toBe(false)
    expect(WaitingPull.atHead(frames, 3, 10)).toBe(false)
    fc.assert(fc.property(head, head, (a, b) => {
      // ahead implies moved; a head is never ahead of itself.
      if (CommitNotify.ahead(a, b.generation, b.maxFrameNo)) expect(CommitNotify.moved(a, b.generation, b.maxFrameNo)).toBe(true)
      expect(CommitNotify.ahead(a, a.generation, a.maxFrameNo)).toBe(false)
    }))
  })
})
