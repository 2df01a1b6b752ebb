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
 * Pulls; at the head, waits up to `waitMs` for the head to move and pulls again. `guard` wraps the wait
 * (the HTTP server counts and caps waiters and ends waits at shutdown with it); a guard that ends the
 * wait early just makes the second pull answer what is there.
 */
export const pull = <R = never>(
  store: Service,
  database: string,
  generation: number,
  start: number,
  end: number,
  waitMs: number,
  guard: (wait: Effect.Effect<void, StoreError>) => Effect.Effect<void, StoreError, R> = (wait) => wait
): Effect.Effect<PullResult, StoreError, R> =>
  Effect.flatMap(store.pull(database, generation, start, end), (first) =>
    waitMs <= 0 || !atHead(first, generation, start)
      ? Effect.succeed(first)
      : Effect.zipRight(
        guard(Effect.asVoid(store.awaitChange(database, generation, start - 1, Duration.millis(waitMs)))),
        store.pull(database, generation, start, end)
      ))
