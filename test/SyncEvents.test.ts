/**
 * Events, status and background sync of a SyncDatabase (issue 5), over the in-process remote on a
 * memory ServerStore with real local files. Background sync runs under TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as TestClock from "effect/TestClock"
import * as TestServices from "effect/TestServices"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncError from "../src/SyncError.js"
import type { SyncEvent } from "../src/SyncEvents.js"
import * as SyncRemote from "../src/SyncRemote.js"
import { openClient, remoteQuery, tempDir } from "./support/engine.js"

/** A SyncDatabase (SyncDatabase.layerRemote) over `remote`, files at `path`. */
const open = (remote: SyncRemote.Service, path: string, options: Partial<SyncDatabase.Options> = {}) =>
  openClient(remote, path, options)

/** `SyncDatabase.autoSync` for `db`, in the current scope. */
const autoSync = <Out>(
  db: SyncDatabase.Service,
  schedule: Schedule.Schedule<Out, unknown>,
  options?: SyncDatabase.AutoSyncOptions
) => Effect.provideService(SyncDatabase.autoSync(schedule, options), SyncDatabase.SyncDatabase, db)

const memoryRemote = (database: string, options: ServerStore.Options = {}) =>
  Effect.map(ServerStore.makeMemory(options), (store) => StoreRemote.make(store, database))

/** A remote that fails every call with NetworkError while `down` is true. */
const switchable = (remote: SyncRemote.Service, down: Ref.Ref<boolean>): SyncRemote.Service => {
  const guard = <A>(effect: Effect.Effect<A, SyncError.RemoteFailure>): Effect.Effect<A, SyncError.RemoteFailure> =>
    Effect.flatMap(Ref.get(down), (isDown) =>
      isDown ? Effect.fail(new SyncError.NetworkError({ reason: "Transport", message: "remote down (test)" })) : effect)
  return {
    info: guard(remote.info),
    export: (g) => guard(remote.export(g)),
    snapshot: guard(remote.snapshot),
    pull: (g, s, e) => guard(remote.pull(g, s, e)),
    push: (g, s, e, f, b) => guard(remote.push(g, s, e, f, b))
  }
}

const drain = (queue: Queue.Dequeue<SyncEvent>) => Effect.map(Queue.takeAll(queue), Chunk.toReadonlyArray)

/** Takes events until one with `tag` arrives; returns all of them. */
const until = (queue: Queue.Dequeue<SyncEvent>, tag: SyncEvent["_tag"]) =>
  Effect.gen(function*() {
    const seen: Array<SyncEvent> = []
    for (;;) {
      const event = yield* Queue.take(queue)
      seen.push(event)
      if (event._tag === tag) return seen
    }
  })

const tags = (events: ReadonlyArray<SyncEvent>) => events.map((e) => e._tag)

/** Lets background fibers run in real time while the TestClock stands still. */
const settle = TestServices.provideLive(Effect.sleep(Duration.millis(100)))

describe("SyncDatabase events and status", () => {
  it.scopedLive("push and pull publish Started, Progress and Finished with counts; status follows", () =>
    Effect.gen(function*() {
      const remote = yield* memoryRemote("events")
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"))
      const b = yield* open(remote, NodePath.join(dir, "b"))
      const qa = yield* a.subscribe
      const qb = yield* b.subscribe

      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
      yield* a.execute("INSERT INTO t VALUES (1, 'x'), (2, 'y')")
      expect(yield* a.push).toBe(true)
      const eventsA = yield* drain(qa)
      expect(tags(eventsA).slice(0, 3)).toEqual(["LocalWrite", "LocalWrite", "Started"])
      expect(eventsA[1]).toEqual(expect.objectContaining({ changes: 2 }))
      expect(eventsA.at(-1)!._tag).toBe("Finished")
      const finishedA = eventsA.at(-1) as Extract<SyncEvent, { _tag: "Finished" }>
      expect(finishedA).toMatchObject({ operation: "push", changed: true, pushedChanges: 3, pendingChanges: 0 })
      expect(finishedA.framesSent).toBeGreaterThan(0)
      expect(finishedA.bytesSent).toBe(finishedA.framesSent * 4120)
      const lastProgress = eventsA.filter((e) => e._tag === "Progress").at(-1)
      expect(lastProgress).toMatchObject({ operation: "push", framesSent: finishedA.framesSent })
      const statusA = yield* SubscriptionRef.get(a.status)
      expect(statusA).toMatchObject({ state: "idle", pendingChanges: 0, online: true })
      expect(Option.isNone(statusA.lastError)).toBe(true)
      expect(Option.isSome(statusA.lastSyncAt)).toBe(true)

      expect(yield* b.pull).toBe(true)
      const eventsB = yield* drain(qb)
      expect(tags(eventsB)[0]).toBe("Started")
      expect(eventsB.at(-1)).toMatchObject({
        _tag: "Finished",
        operation: "pull",
        changed: true,
        pushedChanges: 0,
        framesReceived: finishedA.framesSent,
        bytesReceived: finishedA.bytesSent
      })
      expect(yield* b.query("SELECT id, v FROM t ORDER BY id")).toEqual([{ id: 1, v: "x" }, { id: 2, v: "y" }])
    }))

  it.scopedLive("status goes idle → pushing → pulling → idle during a sync", () =>
    Effect.gen(function*() {
      const remote = yield* memoryRemote("states")
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"))
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      const states = yield* Ref.make<Array<string>>([])
      const watcher = yield* a.status.changes.pipe(
        Stream.map((s) => s.state),
        Stream.changes,
        Stream.runForEach((state) => Ref.update(states, (all) => [...all, state])),
        Effect.fork
      )
      yield* Effect.sleep(Duration.millis(50))
      yield* a.sync
      yield* Effect.sleep(Duration.millis(50))
      yield* Fiber.interrupt(watcher)
      expect(yield* Ref.get(states)).toEqual(["idle", "pushing", "pulling", "idle"])
    }))

  it.scopedLive("a failure is an event and the last error; online follows the remote; the next success clears it", () =>
    Effect.gen(function*() {
      const down = yield* Ref.make(false)
      const remote = switchable(yield* memoryRemote("failing"), down)
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"))
      const q = yield* a.subscribe
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* a.execute("INSERT INTO t VALUES (1)")
      yield* Ref.set(down, true)
      const error = yield* Effect.flip(a.push)
      expect(error._tag).toBe("NetworkError")
      const events = yield* drain(q)
      expect(events.at(-1)).toMatchObject({ _tag: "Failed", operation: "push", error: { _tag: "NetworkError" } })
      const failed = yield* SubscriptionRef.get(a.status)
      expect(failed).toMatchObject({ state: "idle", online: false })
      expect(Option.map(failed.lastError, (e) => e._tag)).toEqual(Option.some("NetworkError"))
      expect(failed.pendingChanges).toBe(2)

      yield* Ref.set(down, false)
      yield* a.sync
      const recovered = yield* SubscriptionRef.get(a.status)
      expect(recovered).toMatchObject({ state: "idle", online: true, pendingChanges: 0, lastError: Option.none() })
    }))

  it.scopedLive("conflicting pushes are reported round by round, then resolved", () =>
    Effect.gen(function*() {
      const real = yield* memoryRemote("conflicts")
      const refusals = yield* Ref.make(2)
      const remote: SyncRemote.Service = {
        ...real,
        // Another replica "pushed first" twice: the remote refuses without applying anything.
        push: (generation, start, end, frames, baton) =>
          Effect.flatMap(Ref.getAndUpdate(refusals, (n) => n - 1), (left) =>
            left > 0
              ? Effect.succeed({ _tag: "Conflict" as const, generation, maxFrameNo: start - 1 })
              : real.push(generation, start, end, frames, baton))
      }
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"), { conflictBackoff: 1 })
      const q = yield* a.subscribe
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* a.execute("INSERT INTO t VALUES (7)")
      yield* a.push
      const events = (yield* drain(q)).filter((e) => e._tag !== "Progress" && e._tag !== "LocalWrite")
      expect(events.map((e) => e._tag === "ConflictRetry" ? `retry ${e.round}` : e._tag)).toEqual([
        "Started",
        "retry 1",
        "retry 2",
        "ConflictResolved",
        "Finished"
      ])
      expect(events[3]).toMatchObject({ operation: "push", rounds: 2 })
      expect(yield* remoteQuery(real, "SELECT id FROM t")).toEqual([{ id: 7 }])
    }))

  it.scopedLive("following the remote's generation rolls is reported one generation at a time", () =>
    Effect.gen(function*() {
      const remote = yield* memoryRemote("rolls", { generationFrames: 6 })
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"))
      const b = yield* open(remote, NodePath.join(dir, "b"))
      const q = yield* b.subscribe
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
      for (let i = 0; i < 4; i++) {
        yield* a.execute("INSERT INTO t VALUES (?, randomblob(3000))", [i])
        yield* a.push
      }
      const { generation } = yield* remote.info
      expect(generation).toBeGreaterThan(1)
      yield* b.pull
      const changes = (yield* drain(q)).filter((e) => e._tag === "GenerationChanged")
      expect(changes.map((e) => [e.operation, e.from, e.to])).toEqual(
        Array.from({ length: generation - 1 }, (_, i) => ["pull", i + 1, i + 2])
      )
      expect(yield* b.query("SELECT count(*) AS n FROM t")).toEqual([{ n: 4 }])
    }))
})

describe("SyncDatabase autoSync (TestClock)", () => {
  it.scoped("syncs once local writes pause for the debounce time", () =>
    Effect.gen(function*() {
      const remote = yield* memoryRemote("debounce")
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"))
      const q = yield* a.subscribe
      yield* autoSync(a, Schedule.spaced(Duration.hours(1)), { debounce: Duration.seconds(2) })
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* settle
      yield* TestClock.adjust(Duration.seconds(1))
      yield* a.execute("INSERT INTO t VALUES (1)")
      yield* settle
      yield* TestClock.adjust(Duration.seconds(1))
      yield* settle
      // 2 s after the first write, but only 1 s after the last: nothing yet.
      expect(tags(yield* drain(q)).filter((t) => t === "Started")).toEqual([])
      yield* TestClock.adjust(Duration.seconds(1))
      const events = yield* until(q, "Finished")
      expect(events.filter((e) => e._tag === "Started")).toEqual([expect.objectContaining({ operation: "sync" })])
      expect(events.at(-1)).toMatchObject({ operation: "sync", pushedChanges: 2, pendingChanges: 0 })
      expect(yield* remoteQuery(remote, "SELECT id FROM t")).toEqual([{ id: 1 }])
    }))

  it.scoped("syncs on its schedule and brings other replicas' changes", () =>
    Effect.gen(function*() {
      const remote = yield* memoryRemote("schedule")
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"))
      const b = yield* open(remote, NodePath.join(dir, "b"))
      const q = yield* b.subscribe
      yield* autoSync(b, Schedule.spaced(Duration.minutes(1)), { debounce: false })
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* a.execute("INSERT INTO t VALUES (42)")
      yield* a.push
      yield* settle
      yield* TestClock.adjust(Duration.seconds(59))
      yield* settle
      expect(tags(yield* drain(q))).toEqual([])
      yield* TestClock.adjust(Duration.seconds(1))
      const events = yield* until(q, "Finished")
      expect(events.at(-1)).toMatchObject({ operation: "sync", changed: true })
      expect(yield* b.query("SELECT id FROM t")).toEqual([{ id: 42 }])
    }))

  it.scoped("the layer option autoSync does the same for the layer's life", () =>
    Effect.gen(function*() {
      const remote = yield* memoryRemote("option")
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"), { autoSync: Schedule.spaced(Duration.minutes(5)) })
      const q = yield* a.subscribe
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      yield* a.execute("INSERT INTO t VALUES (5)")
      yield* settle
      yield* TestClock.adjust(Duration.seconds(1)) // the default debounce
      const events = yield* until(q, "Finished")
      expect(events.at(-1)).toMatchObject({ operation: "sync", pendingChanges: 0 })
      expect(yield* remoteQuery(remote, "SELECT id FROM t")).toEqual([{ id: 5 }])
    }))

  it.scoped("backs off while the remote is down, never runs two syncs at once, and stops with its scope", () =>
    Effect.gen(function*() {
      const down = yield* Ref.make(true)
      const real = yield* memoryRemote("backoff")
      const dir = yield* tempDir
      // Created while the remote is up (a new database bootstraps from it).
      yield* Ref.set(down, false)
      const a = yield* open(switchable(real, down), NodePath.join(dir, "a"))
      yield* Ref.set(down, true)
      const q = yield* a.subscribe
      const seen: Array<SyncEvent> = []
      yield* Effect.scoped(Effect.gen(function*() {
        yield* autoSync(a, Schedule.spaced(Duration.hours(1)), { debounce: Duration.seconds(1) })
        yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        for (let i = 0; i < 5; i++) yield* a.execute("INSERT INTO t VALUES (?)", [i])
        yield* settle
        yield* TestClock.adjust(Duration.seconds(1)) // debounce over: attempt 1 fails
        yield* settle
        yield* TestClock.adjust(Duration.seconds(1)) // backoff 1 s: attempt 2 fails
        yield* settle
        yield* TestClock.adjust(Duration.seconds(1)) // backoff 2 s: not yet
        yield* settle
        seen.push(...(yield* drain(q)))
        expect(seen.filter((e) => e._tag === "Failed")).toHaveLength(2)
        yield* TestClock.adjust(Duration.seconds(1)) // attempt 3 fails
        yield* settle
        yield* Ref.set(down, false)
        yield* TestClock.adjust(Duration.seconds(4)) // attempt 4 succeeds
        seen.push(...(yield* until(q, "Finished")))
      }))
      expect(seen.filter((e) => e._tag === "Failed")).toHaveLength(3)
      // One sync at a time: every Started is closed by a Finished or Failed before the next.
      let open_ = 0
      for (const e of seen) {
        if (e._tag === "Started") open_++
        if (e._tag === "Finished" || e._tag === "Failed") open_--
        expect(open_).toBeLessThanOrEqual(1)
        expect(open_).toBeGreaterThanOrEqual(0)
      }
      expect(yield* remoteQuery(real, "SELECT count(*) AS n FROM t")).toEqual([{ n: 5 }])
      // The scope is closed: writes and time no longer trigger anything.
      yield* a.execute("INSERT INTO t VALUES (99)")
      yield* settle
      yield* TestClock.adjust(Duration.hours(2))
      yield* settle
      expect(tags(yield* drain(q)).filter((t) => t === "Started")).toEqual([])
    }))
})
