/**
 * A pull that waits at the head: the one composition of `ServerStore.pull` and `awaitChange` that the
 * HTTP route (`Prefer: wait=N`) and the in-process remote (`StoreRemote`) share.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type { PullResult, Service, StoreError } from "../../ServerStore.js"

/**
 * Whether a pull answer means "nothing yet at the head": the client asked for the frame after the current
 * generation's last one. Any other CheckpointNeeded (an older generation, a client past the head) is
 * answered at once, so the client learns where the head is without waiting.
 */
export const atHead = (result: PullResult, generation: number, start: number): boolean =>
  result._tag === "CheckpointNeeded" && result.generation === generation && result.maxFrameNo === start - 1

/**
 * Whether a pull answer means "the head is still frame `after`" for a pull that asked to wait while it is
 * (`SyncProtocol.EXTENSION_WAIT_AFTER`): the generation's head at `after` (nothing from `start`), or frames
 * that end at `after` (a pull answers up to the head).
 */
export const atHeadAfter = (result: PullResult, generation: number, start: number, after: number): boolean =>
  result._tag === "CheckpointNeeded"
    ? result.generation === generation && result.maxFrameNo === after
    : start + result.frames.length - 1 === after

/**
 * Pulls; at the head, waits up to `waitMs` for the head to move and pulls again. `after`: the head to wait
 * past (the last frame the client holds), for a pull that starts at or before it; without it, the head is
 * the frame before `start`. `guard` wraps the wait (the HTTP server counts and caps waiters and ends waits
 * at shutdown with it); a guard that ends the wait early just makes the second pull answer what is there.
 */
export const pull = <R = never>(
  store: Service,
  database: string,
  generation: number,
  start: number,
  end: number,
  waitMs: number,
  guard: (wait: Effect.Effect<void, StoreError>) => Effect.Effect<void, StoreError, R> = (wait) => wait,
  after?: number | undefined
): Effect.Effect<PullResult, StoreError, R> =>
  Effect.flatMap(store.pull(database, generation, start, end), (first) =>
    waitMs <= 0 || !(after === undefined ? atHead(first, generation, start) : atHeadAfter(first, generation, start, after))
      ? Effect.succeed(first)
      : Effect.zipRight(
        guard(Effect.asVoid(
          store.awaitChange(database, generation, after ?? start - 1, Duration.millis(waitMs))
        )),
        store.pull(database, generation, start, end)
      ))
