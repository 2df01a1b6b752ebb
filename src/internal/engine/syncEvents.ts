/**
 * Events and status of a SyncDatabase, built around the engine from outside: the remote the engine
 * talks to is observed (frames and bytes, conflicts, generation changes, whether it answered), and the
 * engine's operations are wrapped (started/finished/failed, the state, spans). The engine needs no hook.
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
import type { Operation, Status } from "../../SyncEvents.js"
import { SyncEvent } from "../../SyncEvents.js"
import type * as SyncRemote from "../../SyncRemote.js"
import * as WalFrame from "../../WalFrame.js"

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
}

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
}

const zero: Counters = { framesReceived: 0, bytesReceived: 0, framesSent: 0, bytesSent: 0, conflicts: 0 }

export const make = Effect.gen(function*() {
  const hub = yield* PubSub.sliding<SyncEvent>(EVENT_BUFFER)
  const status = yield* SubscriptionRef.make<Status>({
    state: "idle",
    pendingChanges: 0,
    lastError: Option.none(),
    online: true,
    lastSyncAt: Option.none()
  })
  const current = yield* Ref.make<Operation | "bootstrap">("bootstrap")
  const counters = yield* Ref.make<Counters>(zero)
  const operationLock = yield* Effect.makeSemaphore(1)

  const publish = (event: SyncEvent) => PubSub.publish(hub, event)
  const setStatus = (f: (s: Status) => Status) => SubscriptionRef.update(status, f)

  const online = <A, E extends SyncError.SyncError>(effect: Effect.Effect<A, E>) =>
    Effect.tapBoth(effect, {
      onSuccess: () => setStatus((s) => (s.online ? s : { ...s, online: true })),
      onFailure: (error) => error._tag === "NetworkError" ? setStatus((s) => ({ ...s, online: false })) : Effect.void
    })

  const progressed = (f: (c: Counters) => Counters) =>
    Effect.gen(function*() {
      const c = yield* Ref.updateAndGet(counters, f)
      yield* publish(SyncEvent.Progress({
        operation: yield* Ref.get(current),
        framesReceived: c.framesReceived,
        bytesReceived: c.bytesReceived,
        framesSent: c.framesSent,
        bytesSent: c.bytesSent
      }))
    })

  /** The remote the engine is given: same answers, observed. */
  const observe = (remote: SyncRemote.Service): SyncRemote.Service => ({
    url: remote.url,
    info: online(remote.info),
    export: (generation) =>
      online(remote.export(generation)).pipe(
        Effect.tap((base) => progressed((c) => ({ ...c, bytesReceived: c.bytesReceived + base.byteLength })))
      ),
    pull: (generation, start, end) =>
      online(remote.pull(generation, start, end)).pipe(Effect.tap((result) => {
        if (result._tag === "Frames") {
          const n = result.frames.length
          return progressed((c) => ({
            ...c,
            framesReceived: c.framesReceived + n,
            bytesReceived: c.bytesReceived + n * WalFrame.FRAME_SIZE
          }))
        }
        if (result.generation <= generation) return Effect.void
        // The engine follows one generation per answer (checkpoint, then frame 1 of the next).
        return Effect.flatMap(Ref.get(current), (operation) =>
          publish(SyncEvent.GenerationChanged({
            operation: operation === "bootstrap" ? "pull" : operation,
            from: generation,
            to: generation + 1
          })))
      })),
    push: (generation, start, end, frames, baton) =>
      online(remote.push(generation, start, end, frames, baton)).pipe(Effect.tap((result) =>
        Effect.gen(function*() {
          yield* progressed((c) => ({
            ...c,
            framesSent: c.framesSent + frames.length,
            bytesSent: c.bytesSent + frames.length * WalFrame.FRAME_SIZE,
            conflicts: c.conflicts + (result._tag === "Conflict" ? 1 : 0)
          }))
          if (result._tag === "Conflict") {
            const operation = yield* Ref.get(current)
            const { conflicts } = yield* Ref.get(counters)
            yield* publish(SyncEvent.ConflictRetry({
              operation: operation === "bootstrap" ? "push" : operation,
              round: conflicts
            }))
          }
        })
      ))
  })

  /** The engine's service with events, status and spans; push, pull and sync one at a time. */
  const wrap = <S extends EngineLike>(engine: S): Effect.Effect<S & Instrumented, SyncError.SyncError> =>
    Effect.gen(function*() {
      const initial = yield* engine.stats
      yield* setStatus((s) => ({ ...s, pendingChanges: initial.pendingChanges }))
      yield* Ref.set(current, "sync")

      const pushPhase = (operation: Operation) =>
        Effect.gen(function*() {
          yield* setStatus((s) => ({ ...s, state: "pushing" }))
          const pushed = yield* engine.push
          const { conflicts } = yield* Ref.get(counters)
          if (pushed && conflicts > 0) yield* publish(SyncEvent.ConflictResolved({ operation, rounds: conflicts }))
          return pushed
        })

      const pullPhase = Effect.zipRight(setStatus((s) => ({ ...s, state: "pulling" })), engine.pull)

      const run = (operation: Operation, body: Effect.Effect<boolean, SyncError.SyncError>) =>
        operationLock.withPermits(1)(
          Effect.gen(function*() {
            yield* Ref.set(current, operation)
            yield* Ref.set(counters, zero)
            const startedAt = yield* Clock.currentTimeMillis
            yield* publish(SyncEvent.Started({ operation }))
            const before = yield* engine.stats
            const changed = yield* body
            const after = yield* engine.stats
            const c = yield* Ref.get(counters)
            const finishedAt = yield* Clock.currentTimeMillis
            yield* setStatus((s) => ({
              ...s,
              state: "idle",
              pendingChanges: after.pendingChanges,
              lastError: Option.none(),
              lastSyncAt: Option.some(new Date(finishedAt))
            }))
            yield* publish(SyncEvent.Finished({
              operation,
              changed,
              pushedChanges: operation === "pull" ? 0 : Math.max(0, before.pendingChanges - after.pendingChanges),
              pendingChanges: after.pendingChanges,
              framesReceived: c.framesReceived,
              bytesReceived: c.bytesReceived,
              framesSent: c.framesSent,
              bytesSent: c.bytesSent,
              durationMs: finishedAt - startedAt
            }))
            return changed
          }).pipe(
            Effect.tapError((error) =>
              Effect.gen(function*() {
                const pending = yield* Effect.option(engine.stats)
                yield* setStatus((s) => ({
                  ...s,
                  state: "idle",
                  lastError: Option.some(error),
                  pendingChanges: Option.match(pending, { onNone: () => s.pendingChanges, onSome: (p) => p.pendingChanges })
                }))
                yield* publish(SyncEvent.Failed({ operation, error }))
              })
            ),
            Effect.onInterrupt(() => setStatus((s) => ({ ...s, state: "idle" }))),
            Effect.withSpan(`SyncDatabase.${operation}`)
          )
        )

      const execute: EngineLike["execute"] = (sql, params) =>
        engine.execute(sql, params).pipe(
          Effect.tap((result) =>
            Effect.zipRight(
              // Between operations the count grows by the rows each write reports (counting them
              // exactly would cost a query per write); every push, pull and sync sets it exactly.
              setStatus((s) => ({ ...s, pendingChanges: s.pendingChanges + result.changes })),
              publish(SyncEvent.LocalWrite({ changes: result.changes }))
            )
          ),
          Effect.withSpan("SyncDatabase.execute", { attributes: { sql } })
        )

      const instrumented: Instrumented = {
        events: Stream.fromPubSub(hub),
        subscribe: PubSub.subscribe(hub),
        status
      }
      return {
        ...engine,
        execute,
        push: run("push", pushPhase("push")),
        pull: run("pull", pullPhase),
        sync: run("sync", Effect.zipRight(pushPhase("sync"), pullPhase)),
        rebootstrap: run("rebootstrap", Effect.zipRight(setStatus((s) => ({ ...s, state: "pulling" })), engine.rebootstrap)),
        ...instrumented
      }
    })

  /** For the engine's own events (conflicts decided by a push), under the operation running now. */
  const publishConflicts = (entries: ReadonlyArray<ConflictPolicy.Entry>) =>
    Effect.flatMap(Ref.get(current), (operation) =>
      Effect.forEach(entries, (entry) =>
        publish(SyncEvent.Conflict({ operation: operation === "bootstrap" ? "push" : operation, entry })), {
        discard: true
      }))

  /** For the engine's re-bootstraps, under the operation running now. */
  const publishRebootstrap = (event: { readonly reason: "GenerationGone" | "Requested" | "SyncedCopyDamaged"; readonly fromGeneration: number; readonly toGeneration: number }) =>
    Effect.flatMap(Ref.get(current), (operation) =>
      publish(SyncEvent.Rebootstrapped({
        operation: operation === "bootstrap" ? "pull" : operation,
        reason: event.reason,
        from: event.fromGeneration,
        to: event.toGeneration
      })))

  return { observe, wrap, publishConflicts, publishRebootstrap }
})
