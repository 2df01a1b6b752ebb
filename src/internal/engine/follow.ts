/**
 * Following the remote on Synced (`EngineOptions.followOnSynced`, live sync): a pull that finds nothing
 * pending in Draft leaves Draft's copy step (2b, 2c) for later and moves reads to Synced, which holds
 * exactly the remote's state. A stream of remote commits then costs one pull each, not a pull and a copy
 * of Draft each, and reactive queries see each commit as soon as its frames are in Synced.
 *
 * Draft catches up (the copy step, over every commit pulled since) once the pulls pause (live sync's
 * `catchUpDelay`), before the next local write lands (a write waits for it, as it waits for any copy), and
 * when the database closes, whichever comes first. Nothing else needs Draft
 * current: with nothing pending, a push has nothing to send, and Draft's file stays what it was at its last
 * copy (`draftBase`), as the copy step's record of where it can differ from Synced (`draftPages`) allows.
 * A crash meanwhile leaves Draft at its last copy: the next pull copies, as after a crash between a pull's
 * step (a) and its copy.
 *
 * While reads are on Synced, every step that closes Synced (a pull writing frames into its WAL, a fold, a
 * roll) holds them until it is open again ({@link gatedSynced}): a read never meets it closed.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeCapture from "../../ChangeCapture.js"
import * as SyncError from "../../SyncError.js"
import * as LocalCopies from "../../LocalCopies.js"
import * as Changes from "../live/changes.js"
import { sqlStatementError } from "./errors.js"
import * as Gates from "./gates.js"
import { on, type State } from "./state.js"

/**
 * Synced as the engine uses it: closing it while reads are on it holds them (every read permit) until it
 * is open again, and reactive queries then look again (frames written into its WAL, a roll, a rebuild may
 * have changed what they read; a fold changes nothing, and their rows compare equal). An open that fails
 * leaves reads on Draft rather than on a closed copy.
 */
export const gatedSynced = (copy: LocalCopies.Copy, gates: Gates.Gates, changes: Changes.Tracker): LocalCopies.Copy => {
  let held = false
  const hold = Effect.suspend(() =>
    held || gates.active.current !== "synced"
      ? Effect.void
      : Effect.zipRight(Gates.holdReads(gates), Effect.sync(() => {
        held = true
      }))
  )
  const release = (opened: boolean) =>
    Effect.suspend(() => {
      if (!held) return Effect.void
      held = false
      return Effect.zipRight(Gates.releaseReads(gates, opened ? undefined : "draft"), Changes.beforeCopy(changes))
    })
  const close = Effect.zipRight(hold, copy.close)
  const open = copy.open.pipe(
    Effect.onExit((exit) => release(exit._tag === "Success"))
  )
  return {
    ...copy,
    open,
    close,
    withClosed: LocalCopies.withClosedBy(close, open)
  }
}

/**
 * After a pull's step (a): when nothing is pending in Draft (after `progress`) and no write waits for it,
 * reads move to Synced and Draft's copy is left for later (`following.behind`). Decided with writes held,
 * so no write lands between the look at the log and the move. Reactive queries look again when reads
 * move (while they are on Synced, its reopening after each change tells them: `gatedSynced`). Returns
 * whether Draft is behind.
 */
export const leaveDraftBehind = Effect.fn("Engine.leaveDraftBehind")(
  function*(state: State, progress: number) {
    const moved = yield* Gates.holdingWrites(
      state.gates,
      Effect.gen(function*() {
        if (state.following.wanting > 0) return undefined
        const m = yield* SynchronizedRef.get(state.metadata)
        if (m.draftFoldInProgress === true || m.copyInProgress === true) return undefined
        const pending = yield* on(state.draft, ChangeCapture.countPending(progress, 1)).pipe(
          Effect.mapError(sqlStatementError("Capture"))
        )
        if (pending > 0) return undefined
        const moved = state.gates.active.current !== "synced"
        if (moved) yield* Gates.switchReads(state.gates, "synced")
        state.following.behind = true
        return moved
      })
    )
    if (moved === undefined) return false
    if (moved) yield* Changes.beforeCopy(state.changes)
    return true
  }
)

/**
 * Runs `effect` under a write permit with Draft current: while pulls leave Draft behind, the copy is made
 * first; should a pull leave it behind again before the permit is had, again. A copy that fails fails the
 * write before anything is written (`SqlStatementError` "Capture"): it was meant for the rows reads showed.
 */
export const writingCurrent = <A, E, R>(
  state: State,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SyncError.SqlStatementError, R> =>
  Effect.suspend(() => {
    const following = state.following
    if (following.behind) {
      following.wanting++
      return Effect.zipRight(
        Effect.mapError(following.catchUp, notCaughtUp),
        writingCurrent(state, effect)
      ).pipe(
        Effect.ensuring(Effect.sync(() => void following.wanting--))
      )
    }
    return Effect.flatMap(
      Gates.writing(
        state.gates,
        Effect.suspend((): Effect.Effect<A | typeof retry, E, R> => following.behind ? Effect.succeed(retry) : effect)
      ),
      (result): Effect.Effect<A, E | SyncError.SqlStatementError, R> =>
        result === retry ? writingCurrent(state, effect) : Effect.succeed(result as A)
    )
  })

const notCaughtUp = (cause: SyncError.SyncError) =>
  new SyncError.SqlStatementError({
    reason: "Capture",
    message: `cannot bring the local database up to the remote's state before this write (${cause.message}); ` +
      "nothing was written",
    cause
  })

const retry: unique symbol = Symbol("effect-sqlite-sync/follow/retry")
