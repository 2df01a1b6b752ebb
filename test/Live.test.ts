/**
 * Live sync (`live: true`) between two replicas over a real HTTP server on a loopback port, on real SQLite
 * files: a write on one appears on the other without any sync call; a stopped server makes the replicas
 * report `offline` and, once it is back on the same port, `connected`, with every write delivered once;
 * `live` with `autoSync` is refused; `push`, `pull` and `sync` keep working.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncFiles from "../src/SyncFiles.js"
import type * as SyncEvents from "../src/SyncEvents.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as SyncServer from "../src/SyncServer.js"

const quiet = Logger.withMinimumLogLevel(LogLevel.Error)

/** A server on `port` (0: any) over the data directory `data`, in its own scope so a test can stop it. */
const startServer = (data: string, port = 0) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      SyncServer.layerNode({ host: "127.0.0.1", port }).pipe(Layer.provide(ServerStore.layer({ directory: data }))),
      scope
    ).pipe(quiet)
    const base = yield* Effect.provide(SyncServer.baseUrl, context)
    return { base, port: Number(new URL(base).port), stop: Scope.close(scope, Exit.void) }
  })

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-live-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

/** A live replica, closed with the test's scope. Requests are retried briefly, so an outage shows soon. */
const openLive = (path: string, url: string, options: Partial<SyncDatabase.HttpOptions> = {}) =>
  Layer.build(
    SyncDatabase.layer({
      path,
      url,
      live: { maxBackoff: "500 millis", pollInterval: "200 millis" },
      retrySchedule: Schedule.intersect(Schedule.spaced(50), Schedule.recurs(1)),
      requestTimeout: "5 seconds",
      ...options
    }).pipe(Layer.provide(NodeHttpClient.layerUndici))
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)), quiet)

/** Waits (at most 30 s) until `f` holds for the rows `db.reactive(sql)` emits; answers those rows. */
const rowsUntil = <Row extends object>(
  db: SyncDatabase.Service,
  sql: string,
  f: (rows: ReadonlyArray<Row>) => boolean
) =>
  db.reactive<Row>(sql).pipe(
    Stream.filter(f),
    Stream.take(1),
    Stream.runHead,
    Effect.flatten,
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(`no emission of ${sql} as expected`) })
  )

/** Waits (at most 30 s) until the live state is `state`. */
const liveState = (db: SyncDatabase.Service, state: SyncEvents.LiveState) =>
  db.status.changes.pipe(
    Stream.filter((s) => s.live === state),
    Stream.take(1),
    Stream.runDrain,
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(`status.live never became ${state}`) })
  )

/**
 * Waits (at most 30 s) until A's push of what it wrote has finished (status: nothing pending, idle): B can
 * see a row before the push that carried it has recorded its acknowledgement on A.
 */
const pushed = (db: SyncDatabase.Service) =>
  db.status.changes.pipe(
    Stream.filter((s) => s.pendingChanges === 0 && s.state === "idle"),
    Stream.take(1),
    Stream.runDrain,
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("the pending changes never went") })
  )

/** What a replica asked of its remote, counted. */
interface Asked {
  info: number
  /** Pulls that did not wait (a pull's own requests, as opposed to the waiting pull of live sync). */
  plainPulls: number
  /** Answers of waiting pulls from the synced frame that had new frames. */
  heldAnswers: number
  /** Answers of waiting pulls of any kind (an abandoned one has none). */
  waitingAnswers: number
}

/**
 * A live replica on an HTTP remote whose requests are counted; `tamper` may change what a waiting pull
 * from the synced frame answers before live sync sees it.
 */
const openCounted = (
  path: string,
  url: string,
  tamper: (result: SyncRemote.PullResult) => SyncRemote.PullResult = (result) => result
) =>
  Effect.gen(function*() {
    const asked: Asked = { info: 0, plainPulls: 0, heldAnswers: 0, waitingAnswers: 0 }
    // The HTTP client lives as long as the test's scope (the replica's requests outlive this function).
    const client = yield* Layer.build(NodeHttpClient.layerUndici)
    const http = yield* SyncRemote.makeHttp({ url, retrySchedule: Schedule.intersect(Schedule.spaced(50), Schedule.recurs(1)) }).pipe(
      Effect.provide(client)
    )
    const counted: SyncRemote.Service = {
      ...http,
      info: Effect.zipRight(Effect.sync(() => asked.info++), http.info),
      pull: (generation, start, end, options) =>
        options?.waitSeconds === undefined
          ? Effect.zipRight(Effect.sync(() => asked.plainPulls++), http.pull(generation, start, end, options))
          : Effect.map(http.pull(generation, start, end, options), (result) => {
            asked.waitingAnswers++
            if (options.after === undefined || result._tag !== "Frames" || result.frames.length < 2) return result
            asked.heldAnswers++
            return tamper(result)
          })
    }
    const db = yield* Layer.build(
      SyncDatabase.layerRemote({ path, live: { maxBackoff: "500 millis" } }).pipe(
        Layer.provide(Layer.succeed(SyncRemote.SyncRemote, counted))
      )
    ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)), quiet)
    return { db, asked }
  })

describe("live sync over a real server", () => {
  it.scopedLive("a write on A appears on B without a sync call; B reports connected", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/live`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
      const b = yield* openLive(NodePath.join(dir, "b"), url)
      yield* liveState(b, "connected")
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 'notes'", (rows) => rows.length === 1)
      for (let i = 1; i <= 5; i++) {
        yield* a.execute("INSERT INTO notes VALUES (?, ?)", [i, `note ${i}`])
        const rows = yield* rowsUntil<{ id: number }>(b, "SELECT id FROM notes ORDER BY id", (rows) => rows.length === i)
        expect(rows.map((r) => r.id)).toEqual(Array.from({ length: i }, (_, k) => k + 1))
      }
      // And back: B's write reaches A.
      yield* b.execute("INSERT INTO notes VALUES (100, 'from b')")
      yield* rowsUntil<{ id: number }>(a, "SELECT id FROM notes WHERE id = 100", (rows) => rows.length === 1)
      // The explicit operations still work alongside.
      yield* a.execute("INSERT INTO notes VALUES (200, 'explicit')")
      yield* a.sync
      yield* b.pull
      yield* b.push
      expect(yield* b.query("SELECT id FROM notes WHERE id = 200")).toEqual([{ id: 200 }])
      expect((yield* b.stats).pendingChanges).toBe(0)
    }), 180_000)

  it.scopedLive("the waiting pull's answer is the pull: B asks nothing else for a remote write, and each arrives once", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/held`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* a.push
      const { asked, db: b } = yield* openCounted(NodePath.join(dir, "b"), url)
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      yield* liveState(b, "connected")
      const before = { ...asked }
      for (let i = 1; i <= 5; i++) {
        yield* a.execute(`INSERT INTO t VALUES (${i})`)
        const rows = yield* rowsUntil<{ id: number }>(b, "SELECT id FROM t ORDER BY id", (r) => r.length >= i)
        expect(rows.map((r) => r.id)).toEqual(Array.from({ length: i }, (_, k) => k + 1))
      }
      // Every write came in a waiting pull's answer, which B's pull used as its check and its frames.
      expect(asked.heldAnswers - before.heldAnswers).toBeGreaterThanOrEqual(1)
      expect(asked.info - before.info).toBe(0)
      expect(asked.plainPulls - before.plainPulls).toBe(0)
      expect((yield* b.stats).pendingChanges).toBe(0)
    }), 180_000)

  it.scopedLive("a replica's own pushes do not come back through its waiting pull; another replica's write does", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/own`
      const other = yield* openLive(NodePath.join(dir, "other"), url)
      yield* other.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* other.push
      const { asked, db: a } = yield* openCounted(NodePath.join(dir, "a"), url)
      yield* rowsUntil(a, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      yield* liveState(a, "connected")
      yield* pushed(a)
      const before = { ...asked }
      for (let i = 1; i <= 5; i++) {
        yield* a.execute(`INSERT INTO t VALUES (${i})`)
        yield* pushed(a)
        yield* rowsUntil<{ id: number }>(other, "SELECT id FROM t", (r) => r.length >= i)
      }
      // Five commits of A's own on the server, none of them answered to A's waiting pull (each abandoned while
      // A pushed, and asked again from where the push left A).
      expect(asked.waitingAnswers - before.waitingAnswers).toBe(0)
      expect((yield* a.stats).pendingChanges).toBe(0)
      // Another replica's commit still wakes it, and arrives once.
      yield* other.execute("INSERT INTO t VALUES (100)")
      const rows = yield* rowsUntil<{ id: number }>(a, "SELECT id FROM t ORDER BY id", (r) => r.length >= 6)
      expect(rows.map((r) => r.id)).toEqual([1, 2, 3, 4, 5, 100])
      expect(asked.waitingAnswers - before.waitingAnswers).toBeGreaterThanOrEqual(1)
    }), 180_000)

  for (
    const [what, tamper] of [
      [
        "holds another synced frame than B's (a remote restored from an older backup)",
        (result: Extract<SyncRemote.PullResult, { _tag: "Frames" }>): SyncRemote.PullResult => ({
          ...result,
          frames: [{ ...result.frames[0], page: result.frames[0].page.map((b, i) => i === 100 ? b ^ 1 : b) }, ...result.frames.slice(1)]
        })
      ],
      [
        "names another database",
        (result: Extract<SyncRemote.PullResult, { _tag: "Frames" }>): SyncRemote.PullResult => ({ ...result, databaseId: "another" })
      ],
      [
        "names no database",
        (result: Extract<SyncRemote.PullResult, { _tag: "Frames" }>): SyncRemote.PullResult => ({ _tag: "Frames", frames: result.frames })
      ]
    ] as const
  ) {
    it.scopedLive(`a waiting pull's answer that ${what} is not used: B's pull checks the remote itself`, () =>
      Effect.gen(function*() {
        const dir = yield* tempDir
        const server = yield* startServer(NodePath.join(dir, "data"))
        yield* Effect.addFinalizer(() => server.stop)
        const url = `${server.base}/db/tampered`
        const a = yield* openLive(NodePath.join(dir, "a"), url)
        yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        yield* a.push
        let armed = false
        const { asked, db: b } = yield* openCounted(
          NodePath.join(dir, "b"),
          url,
          (result) => armed && result._tag === "Frames" ? tamper(result) : result
        )
        yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
        yield* liveState(b, "connected")
        // A first write pulled as it came: B's synced frame is then in its WAL, at hand to compare (the frame
        // a bootstrap ends at is folded into the file, and only the remote's having it is checked then).
        yield* a.execute("INSERT INTO t VALUES (1)")
        yield* rowsUntil<{ id: number }>(b, "SELECT id FROM t", (r) => r.length >= 1)
        armed = true
        const before = { ...asked }
        yield* a.execute("INSERT INTO t VALUES (2)")
        const rows = yield* rowsUntil<{ id: number }>(b, "SELECT id FROM t ORDER BY id", (r) => r.length >= 2)
        expect(rows).toEqual([{ id: 1 }, { id: 2 }])
        expect(asked.heldAnswers - before.heldAnswers).toBeGreaterThanOrEqual(1)
        // The check asked the remote (its identity, the synced frame), as a pull without an answer does.
        expect(asked.info - before.info).toBeGreaterThanOrEqual(1)
        expect(asked.plainPulls - before.plainPulls).toBeGreaterThanOrEqual(1)
      }), 180_000)
  }

  it.scopedLive("a server stopped and restarted: offline, then connected, and every write arrives once", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const data = NodePath.join(dir, "data")
      let server = yield* startServer(data)
      const port = server.port
      yield* Effect.addFinalizer(() => Effect.suspend(() => server.stop))
      const url = `${server.base}/db/outage`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
      yield* a.execute("INSERT INTO notes VALUES (1, 'before')")
      const b = yield* openLive(NodePath.join(dir, "b"), url)
      const states = yield* Queue.unbounded<SyncEvents.LiveState>()
      yield* b.events.pipe(
        Stream.runForEach((event) => event._tag === "Live" ? Queue.offer(states, event.state) : Effect.void),
        Effect.forkScoped
      )
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 'notes'", (rows) => rows.length === 1)
      yield* rowsUntil(b, "SELECT id FROM notes", (rows) => rows.length === 1)

      yield* server.stop
      yield* liveState(b, "offline")
      // Written while the server is away: pending on A until it is back.
      yield* a.execute("INSERT INTO notes VALUES (2, 'during')")
      yield* liveState(a, "offline")
      server = yield* startServer(data, port)
      yield* liveState(b, "connected")
      const rows = yield* rowsUntil<{ id: number; body: string }>(b, "SELECT id, body FROM notes ORDER BY id", (rows) => rows.length >= 2)
      expect(rows).toEqual([{ id: 1, body: "before" }, { id: 2, body: "during" }])
      yield* a.execute("INSERT INTO notes VALUES (3, 'after')")
      const after = yield* rowsUntil<{ id: number }>(b, "SELECT id FROM notes ORDER BY id", (rows) => rows.length >= 3)
      expect(after.map((r) => r.id)).toEqual([1, 2, 3])
      // B saw itself go offline, then connected again (in that order).
      const seen = Array.from(yield* Queue.takeAll(states))
      const offline = seen.indexOf("offline")
      expect(offline).toBeGreaterThanOrEqual(0)
      expect(seen.slice(offline + 1)).toContain("connected")
      // A's pending write went exactly once.
      yield* pushed(a)
      expect((yield* a.stats).pendingChanges).toBe(0)
      expect(yield* b.query("SELECT count(*) AS n FROM notes")).toEqual([{ n: 3 }])
    }), 180_000)

  it.scopedLive("live and autoSync together are refused when the layer is built, before any file is made", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = NodePath.join(dir, "both")
      const error = yield* openLive(path, "http://127.0.0.1:9/db/none", {
        autoSync: Schedule.spaced("1 second")
      }).pipe(Effect.flip)
      expect(error._tag).toBe("OptionsError")
      expect(error.reason).toBe("Conflicting")
      expect(Fs.readdirSync(dir)).toEqual([])
    }), 180_000)

  it.scopedLive("against a server without waiting pulls, changes arrive by polling", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const scope = yield* Effect.scope
      const context = yield* Layer.buildWithScope(
        SyncServer.layerNode({ host: "127.0.0.1", port: 0, maxWaitSeconds: 0 }).pipe(
          Layer.provide(ServerStore.layer({ directory: NodePath.join(dir, "data") }))
        ),
        scope
      ).pipe(quiet)
      const url = `${yield* Effect.provide(SyncServer.baseUrl, context)}/db/polled`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      const b = yield* openLive(NodePath.join(dir, "b"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* a.execute("INSERT INTO t VALUES (7)")
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      const rows = yield* rowsUntil<{ id: number }>(b, "SELECT id FROM t", (r) => r.length === 1)
      expect(rows).toEqual([{ id: 7 }])
    }), 180_000)
})

/** A replica of its own scope, so a test can close it and open the same files again. */
const openScoped = (path: string, url: string, options: Partial<SyncDatabase.HttpOptions> = {}) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const db = yield* openLive(path, url, options).pipe(Scope.extend(scope))
    return { db, close: Scope.close(scope, Exit.void) }
  })

/** Live settings that keep a replica following the remote on Synced until it writes or closes. */
const followingLive = { maxBackoff: "500 millis", pollInterval: "200 millis", catchUpDelay: "1 hour" } as const

describe("a live replica follows the remote on its synced copy", () => {
  it.scopedLive("remote commits are read from Synced with Draft left as it was; B's write copies them first, and every row lands once", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/follow`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
      // B's metadata file is replaced (renamed over) by each durable metadata write: counted.
      const bPath = NodePath.join(dir, "b")
      const renames = { info: 0 }
      const files: SyncFiles.Service = {
        ...SyncFiles.node,
        renameSync: (from, to) => {
          SyncFiles.node.renameSync(from, to)
          if (to === `${bPath}-info`) renames.info++
        }
      }
      const b = yield* openLive(bPath, url, { live: followingLive }).pipe(Effect.provideService(SyncFiles.SyncFiles, files))
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      yield* a.execute("INSERT INTO t VALUES (1, 'a')")
      yield* rowsUntil(b, "SELECT id FROM t", (r) => r.length === 1)
      const following = yield* b.stats
      expect(following.activeCopy).toBe("synced")
      expect(following.pendingChanges).toBe(0)
      // Five more commits: shown to B's queries, and neither Draft's WAL nor the metadata written for any.
      const infoBefore = renames.info
      for (let i = 2; i <= 6; i++) {
        yield* a.execute("INSERT INTO t VALUES (?, 'a')", [i])
        yield* rowsUntil(b, "SELECT id FROM t", (r) => r.length === i)
      }
      const still = yield* b.stats
      expect(still.activeCopy).toBe("synced")
      expect(still.draftWalBytes).toBe(following.draftWalBytes)
      expect(renames.info - infoBefore).toBe(0)
      // B writes: Draft catches up first, so the write lands beside every row B has shown.
      yield* b.execute("INSERT INTO t VALUES (100, 'b')")
      expect((yield* b.stats).activeCopy).toBe("draft")
      expect((yield* b.query<{ id: number }>("SELECT id FROM t ORDER BY id")).map((r) => r.id)).toEqual([1, 2, 3, 4, 5, 6, 100])
      const onA = yield* rowsUntil<{ id: number }>(a, "SELECT id FROM t ORDER BY id", (r) => r.length === 7)
      expect(onA.map((r) => r.id)).toEqual([1, 2, 3, 4, 5, 6, 100])
      yield* pushed(b)
      expect((yield* b.stats).pendingChanges).toBe(0)
    }), 180_000)

  it.scopedLive("reads while Synced takes commits and folds its WAL never fail and never go back", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/reads`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
      // A small WAL bound: Synced folds (closed and reopened) every few commits while reads are on it.
      const b = yield* openLive(NodePath.join(dir, "b"), url, { maxWalFrames: 4, live: followingLive })
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      const counts: Array<number> = []
      const reader = yield* Effect.forkScoped(Effect.forever(
        Effect.flatMap(b.query<{ n: number }>("SELECT count(*) AS n FROM t"), ([row]) =>
          Effect.sync(() => void counts.push(row.n))).pipe(Effect.zipRight(Effect.sleep("1 millis")))
      ))
      for (let i = 1; i <= 30; i++) {
        yield* a.execute("INSERT INTO t VALUES (?, ?)", [i, "x".repeat(3000)])
        if (i % 5 === 0) yield* rowsUntil(b, "SELECT id FROM t", (r) => r.length === i)
      }
      yield* rowsUntil(b, "SELECT id FROM t", (r) => r.length === 30)
      yield* Effect.sleep("50 millis")
      // The reader is still running: none of its reads failed (a failure would have ended the fiber).
      expect(reader.unsafePoll()).toBeNull()
      expect(counts.length).toBeGreaterThan(30)
      for (let i = 1; i < counts.length; i++) expect(counts[i]).toBeGreaterThanOrEqual(counts[i - 1])
      expect(counts[counts.length - 1]).toBe(30)
      expect((yield* b.stats).activeCopy).toBe("synced")
    }), 180_000)

  it.scopedLive("writes on both replicas while B follows: each lands once on both, nothing pending", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/both`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)")
      const b = yield* openLive(NodePath.join(dir, "b"), url)
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      const writes = (db: SyncDatabase.Service, who: string, from: number) =>
        Effect.forEach(Array.from({ length: 20 }, (_, i) => from + i), (id) =>
          Effect.zipRight(db.execute("INSERT INTO t VALUES (?, ?)", [id, who]), Effect.sleep(`${id % 7} millis`)))
      yield* Effect.all([writes(a, "a", 1), writes(b, "b", 101)], { concurrency: 2 })
      const expected = [...Array.from({ length: 20 }, (_, i) => 1 + i), ...Array.from({ length: 20 }, (_, i) => 101 + i)]
      for (const db of [a, b]) {
        const rows = yield* rowsUntil<{ id: number }>(db, "SELECT id FROM t ORDER BY id", (r) => r.length >= 40)
        expect(rows.map((r) => r.id)).toEqual(expected)
      }
      yield* pushed(a)
      yield* pushed(b)
      expect((yield* a.stats).pendingChanges).toBe(0)
      expect((yield* b.stats).pendingChanges).toBe(0)
    }), 180_000)

  it.scopedLive("closing a following replica copies first: opened again with the server gone, it reads what it showed", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      const url = `${server.base}/db/close`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      const path = NodePath.join(dir, "b")
      const first = yield* openScoped(path, url, { live: followingLive })
      yield* rowsUntil(first.db, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      for (let i = 1; i <= 3; i++) yield* a.execute("INSERT INTO t VALUES (?)", [i])
      yield* rowsUntil(first.db, "SELECT id FROM t", (r) => r.length === 3)
      expect((yield* first.db.stats).activeCopy).toBe("synced")
      yield* first.close
      yield* server.stop
      // Not live and offline: no pull brings anything; Draft already holds the rows.
      const again = yield* Layer.build(
        SyncDatabase.layer({ path, url, requestTimeout: "2 seconds", retrySchedule: Schedule.recurs(0) }).pipe(
          Layer.provide(NodeHttpClient.layerUndici)
        )
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)), quiet)
      const stats = yield* again.stats
      expect(stats.activeCopy).toBe("draft")
      expect(stats.pendingChanges).toBe(0)
      expect((yield* again.query<{ id: number }>("SELECT id FROM t ORDER BY id")).map((r) => r.id)).toEqual([1, 2, 3])
    }), 180_000)

  it.scopedLive("once remote commits pause, the draft copy is brought up to date in the background: reads move back to it", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/pause`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      const b = yield* openLive(NodePath.join(dir, "b"), url, { live: { ...followingLive, catchUpDelay: "50 millis" } })
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      const before = (yield* b.stats).draftWalBytes
      for (let i = 1; i <= 3; i++) yield* a.execute("INSERT INTO t VALUES (?)", [i])
      yield* rowsUntil(b, "SELECT id FROM t", (r) => r.length === 3)
      // No write on B: its worker makes the copy once the pulls pause.
      const stats = yield* b.stats.pipe(
        Effect.filterOrFail((s) => s.activeCopy === "draft" && s.draftWalBytes !== before, () => new Error("not yet")),
        Effect.retry(Schedule.spaced("20 millis")),
        Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("the draft copy was never brought up to date") })
      )
      expect(stats.pendingChanges).toBe(0)
      expect((yield* b.query<{ id: number }>("SELECT id FROM t ORDER BY id")).map((r) => r.id)).toEqual([1, 2, 3])
    }), 180_000)

  it.scopedLive("a copy to Draft that fails before B's write fails the write, typed, with nothing written; the next write copies and lands", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* startServer(NodePath.join(dir, "data"))
      yield* Effect.addFinalizer(() => server.stop)
      const url = `${server.base}/db/fails`
      const a = yield* openLive(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      // B's file service refuses, while armed, to put a copy's fresh WAL in place of Draft's.
      const armed = { on: false }
      const files: SyncFiles.Service = {
        ...SyncFiles.node,
        renameSync: (from, to) => {
          if (armed.on && from.endsWith("-draft-wal.next")) throw new Error("injected: cannot rename")
          SyncFiles.node.renameSync(from, to)
        }
      }
      const b = yield* openLive(NodePath.join(dir, "b"), url, { live: followingLive }).pipe(
        Effect.provideService(SyncFiles.SyncFiles, files)
      )
      yield* rowsUntil(b, "SELECT name FROM sqlite_schema WHERE name = 't'", (r) => r.length === 1)
      for (let i = 1; i <= 3; i++) yield* a.execute("INSERT INTO t VALUES (?)", [i])
      yield* rowsUntil(b, "SELECT id FROM t", (r) => r.length === 3)
      expect((yield* b.stats).activeCopy).toBe("synced")
      armed.on = true
      // The write was meant for the rows B showed (Draft has not even the table): refused, nothing written.
      const error = yield* Effect.flip(b.execute("INSERT INTO t VALUES (100)"))
      expect(error._tag).toBe("SqlStatementError")
      expect(error.reason).toBe("Capture")
      expect(error.message).toContain("nothing was written")
      const after = yield* b.stats
      expect(after.activeCopy).toBe("synced")
      expect(after.pendingChanges).toBe(0)
      expect((yield* b.query<{ id: number }>("SELECT id FROM t ORDER BY id")).map((r) => r.id)).toEqual([1, 2, 3])
      armed.on = false
      yield* b.execute("INSERT INTO t VALUES (100)")
      expect((yield* b.stats).activeCopy).toBe("draft")
      expect((yield* b.query<{ id: number }>("SELECT id FROM t ORDER BY id")).map((r) => r.id)).toEqual([1, 2, 3, 100])
      const onA = yield* rowsUntil<{ id: number }>(a, "SELECT id FROM t ORDER BY id", (r) => r.length === 4)
      expect(onA.map((r) => r.id)).toEqual([1, 2, 3, 100])
      yield* pushed(b)
      expect((yield* b.stats).pendingChanges).toBe(0)
    }), 180_000)
})
