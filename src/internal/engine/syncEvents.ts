/**
 * Events and status of a SyncDatabase. The engine tells its `Observer` of frames and bases where they
 * arrive and leave (progress, conflicts met, generation changes); the remote is watched for whether it
 * answered (`online`); the engine's operations are wrapped (started/finished/failed, the state, spans).
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import type * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type * as ConflictPolicy from "../../ConflictPolicy.js"
import type * as SyncError from "../../SyncError.js"
import type { LiveState, Operation, Status } from "../../SyncEvents.js"
import { SyncEvent } from "../../SyncEvents.js"
import type * as SyncRemote from "../../SyncRemote.js"
import * as WalFrame from "../../WalFrame.js"
import type { Observer } from "./state.js"
import * as CallSpan from "./callSpan.js"

/** What the wrapper needs of the engine. */
export interface EngineLike {
  readonly execute: (
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<{ readonly changes: number; readonly lastInsertRowid: number | bigint }, SyncError.SqlStatementError>
  readonly push: Effect.Effect<boolean, SyncError.SyncError>
  readonly pull: Effect.Effect<boolean, SyncError.SyncError>
  readonly rebootstrap: Effect.Effect<boolean, SyncError.SyncError>
  readonly stats: Effect.Effect<{ readonly pendingChanges: number }, SyncError.SyncError>
  /** `stats`' `pendingChanges` alone, when the engine can count them without the rest. */
  readonly pendingChanges?: Effect.Effect<number, SyncError.SyncError> | undefined
}

/** The local changes not pushed yet, as `stats` counts them. */
const pendingOf = (engine: EngineLike) =>
  engine.pendingChanges ?? Effect.map(engine.stats, (s) => s.pendingChanges)

/** What the wrapper adds. */
export interface Instrumented {
  readonly events: Stream.Stream<SyncEvent>
  /** A subscription to the events that exists from now on (no event is missed after it returns). */
  readonly subscribe: Effect.Effect<Queue.Dequeue<SyncEvent>, never, Scope.Scope>
  readonly status: SubscriptionRef.SubscriptionRef<Status>
}

/** Events a subscriber that does not keep up may lose (oldest first); publishers never wait. */
const EVENT_BUFFER = 4096

interface Counters {
  readonly framesReceived: number
  readonly bytesReceived: number
  readonly framesSent: number
  readonly bytesSent: number
  readonly conflicts: number
  /** Local changes the remote acknowledged. */
  readonly pushedChanges: number
}

const zero: Counters = { framesReceived: 0, bytesReceived: 0, framesSent: 0, bytesSent: 0, conflicts: 0, pushedChanges: 0 }

/** The instruments of one SyncDatabase: its event hub, its status, and what the running operation counted. */
interface Instruments {
  readonly hub: PubSub.PubSub<SyncEvent>
  readonly status: SubscriptionRef.SubscriptionRef<Status>
  readonly current: Ref.Ref<Operation | "bootstrap">
  readonly counters: Ref.Ref<Counters>
  readonly operationLock: Effect.Semaphore
}

const publish = (i: Instruments, event: SyncEvent) => PubSub.publish(i.hub, event)
const setStatus = (i: Instruments, f: (s: Status) => Status) => SubscriptionRef.update(i.status, f)

/** Whether the remote answered: any answer means online, a NetworkError offline. */
const online = <A, E extends SyncError.SyncError>(i: Instruments, effect: Effect.Effect<A, E>) =>
  Effect.tapBoth(effect, {
    // (read first: a status that is already online is not set again, which would tell every subscriber)
    onSuccess: () =>
      Effect.flatMap(SubscriptionRef.get(i.status), (s) => s.online ? Effect.void : setStatus(i, (s) => ({ ...s, online: true }))),
    onFailure: (error) => error._tag === "NetworkError" ? setStatus(i, (s) => ({ ...s, online: false })) : Effect.void
  })

const progressed = (i: Instruments, f: (c: Counters) => Counters) =>
  Effect.gen(function*() {
    const c = yield* Ref.updateAndGet(i.counters, f)
    yield* publish(i, SyncEvent.Progress({
      operation: yield* Ref.get(i.current),
      framesReceived: c.framesReceived,
      bytesReceived: c.bytesReceived,
      framesSent: c.framesSent,
      bytesSent: c.bytesSent
    }))
  })

/** A push's answer: frames sent count as progress; a conflict is announced with its round. */
const pushed = (i: Instruments, sent: number, result: SyncRemote.PushResult) =>
  Effect.gen(function*() {
    yield* progressed(i, (c) => ({
      ...c,
      framesSent: c.framesSent + sent,
      bytesSent: c.bytesSent + sent * WalFrame.FRAME_SIZE,
      conflicts: c.conflicts + (result._tag === "Conflict" ? 1 : 0)
    }))
    if (result._tag === "Conflict") {
      const operation = yield* Ref.get(i.current)
      const { conflicts } = yield* Ref.get(i.counters)
      yield* publish(i, SyncEvent.ConflictRetry({
        operation: operation === "bootstrap" ? "push" : operation,
        round: conflicts
      }))
    }
  })

/** What the engine tells as frames arrive and leave, turned into events. */
const observer = (i: Instruments): Observer => ({
  received: (frames, bytes) =>
    progressed(i, (c) => ({ ...c, framesReceived: c.framesReceived + frames, bytesReceived: c.bytesReceived + bytes })),
  pushed: (frames, result) => pushed(i, frames, result),
  acknowledged: (changes) => Ref.update(i.counters, (c) => ({ ...c, pushedChanges: c.pushedChanges + changes })),
  generationChanged: (from, to) =>
    Effect.flatMap(Ref.get(i.current), (operation) =>
      publish(i, SyncEvent.GenerationChanged({ operation: operation === "bootstrap" ? "pull" : operation, from, to }))),
  rebootstrapped: (reason, from, to) =>
    Effect.flatMap(Ref.get(i.current), (operation) =>
      publish(i, SyncEvent.Rebootstrapped({ operation: operation === "bootstrap" ? "pull" : operation, reason, from, to })))
})

/** The remote the engine is given: same answers; whether it answered sets `online`. */
const observe = (i: Instruments, remote: SyncRemote.Service): SyncRemote.Service => ({
  url: remote.url,
  info: online(i, remote.info),
  snapshot: online(i, remote.snapshot),
  export: (generation) => online(i, remote.export(generation)),
  pull: (generation, start, end, options) => online(i, remote.pull(generation, start, end, options)),
  push: (generation, start, end, frames, baton, options) => online(i, remote.push(generation, start, end, frames, baton, options))
})

const pushPhase = (i: Instruments, engine: EngineLike, operation: Operation) =>
  Effect.gen(function*() {
    yield* setStatus(i, (s) => ({ ...s, state: "pushing" }))
    const pushed = yield* engine.push
    const { conflicts } = yield* Ref.get(i.counters)
    if (pushed && conflicts > 0) yield* publish(i, SyncEvent.ConflictResolved({ operation, rounds: conflicts }))
    return pushed
  })

const pullPhase = (i: Instruments, engine: EngineLike) =>
  Effect.zipRight(setStatus(i, (s) => ({ ...s, state: "pulling" })), engine.pull)

/** An operation that succeeded: status back to idle with the new pending count, and its summary event. */
const succeeded = (i: Instruments, engine: EngineLike, operation: Operation, body: Effect.Effect<boolean, SyncError.SyncError>) =>
  Effect.gen(function*() {
    yield* Ref.set(i.current, operation)
    yield* Ref.set(i.counters, zero)
    const startedAt = yield* Clock.currentTimeMillis
    yield* publish(i, SyncEvent.Started({ operation }))
    // The changes a push or sync pushed are counted as the remote acknowledges them (the engine tells):
    // counting every pending change before the operation would read the whole change log. A rebootstrap
    // pushes its pending changes by other steps: counted before and after.
    const before = operation === "rebootstrap" ? yield* engine.stats : undefined
    const changed = yield* body
    const after = yield* pendingOf(engine)
    const c = yield* Ref.get(i.counters)
    const finishedAt = yield* Clock.currentTimeMillis
    yield* setStatus(i, (s) => ({
      ...s,
      state: "idle",
      pendingChanges: after,
      lastError: Option.none(),
      lastSyncAt: Option.some(new Date(finishedAt))
    }))
    yield* publish(i, SyncEvent.Finished({
      operation,
      changed,
      pushedChanges: operation === "pull"
        ? 0
        : before === undefined
        ? c.pushedChanges
        : Math.max(0, before.pendingChanges - after),
      pendingChanges: after,
      framesReceived: c.framesReceived,
      bytesReceived: c.bytesReceived,
      framesSent: c.framesSent,
      bytesSent: c.bytesSent,
      durationMs: finishedAt - startedAt
    }))
    return changed
  })

/** An operation that failed: status idle with the error, and the Failed event. */
const failed = (i: Instruments, engine: EngineLike, operation: Operation, error: SyncError.SyncError) =>
  Effect.gen(function*() {
    const pending = yield* Effect.option(engine.stats)
    yield* setStatus(i, (s) => ({
      ...s,
      state: "idle",
      lastError: Option.some(error),
      pendingChanges: Option.match(pending, { onNone: () => s.pendingChanges, onSome: (p) => p.pendingChanges })
    }))
    yield* publish(i, SyncEvent.Failed({ operation, error }))
  })

/** Runs one operation, one at a time, with its events, status changes and span. */
const run = (i: Instruments, engine: EngineLike, operation: Operation, body: Effect.Effect<boolean, SyncError.SyncError>) =>
  i.operationLock.withPermits(1)(
    succeeded(i, engine, operation, body).pipe(
      Effect.tapError((error) => failed(i, engine, operation, error)),
      Effect.onInterrupt(() => setStatus(i, (s) => ({ ...s, state: "idle" }))),
      Effect.withSpan(`SyncDatabase.${operation}`)
    )
  )

const execute = (i: Instruments, engine: EngineLike): EngineLike["execute"] => (sql, params) =>
  engine.execute(sql, params).pipe(
    Effect.tap((result) =>
      Effect.zipRight(
        // Between operations the count grows by the rows each write reports (counting them
        // exactly would cost a query per write); every push, pull and sync sets it exactly.
        setStatus(i, (s) => ({ ...s, pendingChanges: s.pendingChanges + result.changes })),
        publish(i, SyncEvent.LocalWrite({ changes: result.changes }))
      )
    ),
    // A span as withSpan makes it, without a stack trace or the per-call context copy (see callSpan.ts).
    CallSpan.around("SyncDatabase.execute", { sql })
  )

/** The engine's service with events, status and spans; push, pull and sync one at a time. */
const wrap = <S extends EngineLike>(i: Instruments, engine: S): Effect.Effect<S & Instrumented, SyncError.SyncError> =>
  Effect.gen(function*() {
    const initial = yield* engine.stats
    yield* setStatus(i, (s) => ({ ...s, pendingChanges: initial.pendingChanges }))
    yield* Ref.set(i.current, "sync")
    const instrumented: Instrumented = {
      events: Stream.fromPubSub(i.hub),
      subscribe: PubSub.subscribe(i.hub),
      status: i.status
    }
    return {
      ...engine,
      execute: execute(i, engine),
      push: run(i, engine, "push", pushPhase(i, engine, "push")),
      pull: run(i, engine, "pull", pullPhase(i, engine)),
      sync: run(i, engine, "sync", Effect.zipRight(pushPhase(i, engine, "sync"), pullPhase(i, engine))),
      rebootstrap: run(
        i,
        engine,
        "rebootstrap",
        Effect.zipRight(setStatus(i, (s) => ({ ...s, state: "pulling" })), engine.rebootstrap)
      ),
      ...instrumented
    }
  })

/** Live sync's state in the status, and an event when it changed. */
const reportLive = (i: Instruments, state: LiveState) =>
  Effect.flatMap(
    SubscriptionRef.modify(i.status, (s): [boolean, Status] => s.live === state ? [false, s] : [true, { ...s, live: state }]),
    (changed) => changed ? publish(i, SyncEvent.Live({ state })) : Effect.void
  )

/** For the engine's own events (conflicts decided by a push), under the operation running now. */
const publishConflicts = (i: Instruments, entries: ReadonlyArray<ConflictPolicy.Entry>) =>
  Effect.flatMap(Ref.get(i.current), (operation) =>
    Effect.forEach(entries, (entry) =>
      publish(i, SyncEvent.Conflict({ operation: operation === "bootstrap" ? "push" : operation, entry })), {
      discard: true
    }))

export const make = Effect.gen(function*() {
  const i: Instruments = {
    hub: yield* PubSub.sliding<SyncEvent>(EVENT_BUFFER),
    status: yield* SubscriptionRef.make<Status>({
      state: "idle",
      pendingChanges: 0,
      lastError: Option.none(),
      online: true,
      lastSyncAt: Option.none()
    }),
    current: yield* Ref.make<Operation | "bootstrap">("bootstrap"),
    counters: yield* Ref.make<Counters>(zero),
    operationLock: yield* Effect.makeSemaphore(1)
  }
  return {
    observe: (remote: SyncRemote.Service) => observe(i, remote),
    observer: observer(i),
    wrap: <S extends EngineLike>(engine: S) => wrap(i, engine),
    publishConflicts: (entries: ReadonlyArray<ConflictPolicy.Entry>) => publishConflicts(i, entries),
    reportLive: (state: LiveState) => reportLive(i, state)
  }
})
