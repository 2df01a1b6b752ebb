/**
 * Background sync: a scoped fiber that syncs on a `Schedule` and after local writes (debounced), one
 * sync at a time, backing off while the remote is unreachable or busy.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as SyncError from "../../SyncError.js"
import { SyncEvent } from "../../SyncEvents.js"

export interface Options {
  /** After a local write, sync once writes have paused this long. Default 1 second; `false`: only on the schedule. */
  readonly debounce?: Duration.DurationInput | false | undefined
  /**
   * Retries of a sync that failed with a transient error (NetworkError, ConflictError) before the next
   * trigger is waited for. Default: exponential from 1 second, at most 1 minute apart, forever.
   */
  readonly backoff?: Schedule.Schedule<unknown, SyncError.SyncError> | undefined
}

export interface Target {
  readonly sync: Effect.Effect<boolean, SyncError.SyncError>
  readonly subscribe: Effect.Effect<Queue.Dequeue<SyncEvent>, never, Scope.Scope>
}

const defaultBackoff: Schedule.Schedule<unknown, SyncError.SyncError> = Schedule.exponential(Duration.seconds(1)).pipe(
  Schedule.union(Schedule.spaced(Duration.minutes(1)))
)

const transient = (error: SyncError.SyncError) => error._tag === "NetworkError" || error._tag === "ConflictError"

export const autoSync = <Out, R>(
  db: Target,
  schedule: Schedule.Schedule<Out, unknown, R>,
  options: Options = {}
): Effect.Effect<void, never, Scope.Scope | R> =>
  Effect.gen(function*() {
    // Subscribed before returning, so a write right after `autoSync` is seen.
    const events = yield* db.subscribe
    const ticks = Stream.fromSchedule(schedule).pipe(Stream.as("tick" as const))
    const debounce = options.debounce ?? Duration.seconds(1)
    const writes = debounce === false
      ? Stream.empty
      : Stream.fromQueue(events).pipe(
        Stream.filter(SyncEvent.$is("LocalWrite")),
        Stream.debounce(debounce),
        Stream.as("write" as const)
      )
    // While a sync runs, at most one more trigger waits; the rest are the same request again.
    const triggers = Stream.merge(ticks, writes).pipe(Stream.buffer({ capacity: 1, strategy: "dropping" }))
    // A sync is not cut in the middle when the scope closes; waiting between retries is.
    const once = Effect.uninterruptible(db.sync).pipe(
      Effect.retry({ schedule: options.backoff ?? defaultBackoff, while: transient }),
      Effect.catchAll((error) => Effect.logWarning(`autoSync: ${error._tag}: ${error.message}`)),
      Effect.withSpan("SyncDatabase.autoSync.sync")
    )
    yield* Effect.forkScoped(Stream.runForEach(triggers, () => once))
  })
