/**
 * Step 1c: Synced's frames beyond the synced frame (the replay of step 1b) go to the remote. `Ok` makes
 * them the synced frames; `Conflict` (someone pushed first) cuts them off again for another round.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeCapture from "../../ChangeCapture.js"
import * as SyncError from "../../SyncError.js"
import * as SyncProtocol from "../../SyncProtocol.js"
import * as WalFrame from "../../WalFrame.js"
import * as Files from "../sqlite/files.js"
import * as RemoteBinding from "./remoteBinding.js"
import { on, stageMetadata, type State, updateMetadata, withoutTransfer } from "./state.js"
import { prefixAtSyncedFrame, resetSyncedWal } from "./syncedWal.js"

/**
 * Frames read from Synced's WAL and handed to the remote at a time (which sends them in as many requests
 * as the server takes, `max_push_frames` of `/info`): a push holds only these in memory (4 MiB).
 */
const BATCH = SyncProtocol.MAX_FRAMES_PER_REQUEST

/** Frames of Synced's WAL validated per read before the push. */
const SCAN_CHUNK = SyncProtocol.CLIENT_BATCH_FRAMES * 8

/** Rewinds within one push the server may ask for (its session for our earlier requests was lost). */
const MAX_RESTARTS = 8

/**
 * Sends remote frames `from..end-1` of `generation`, read from Synced's WAL a batch at a time (remote
 * frame n is WAL frame n - `folded`), the baton of each answer carried into the next request. Bytes sent
 * count whatever the outcome (`stats`); the observer hears of each accepted batch and of a conflict.
 */
const sendFrames = (state: State, generation: number, folded: number, from: number, end: number) =>
  Effect.gen(function*() {
    let next = from
    let baton: string | undefined
    let restarts = 0
    for (;;) {
      const count = Math.min(BATCH, end - next)
      const frames = yield* Files.readWalFrames(state.paths.synced, count, next - folded - 1)
      const result = yield* state.remote.push(generation, next, next + count, frames, baton).pipe(
        Effect.ensuring(Ref.update(state.traffic, (t) => ({ ...t, sent: t.sent + count * WalFrame.FRAME_SIZE })))
      )
      if (result._tag === "Conflict") {
        // An answer below this request but not below the push: the server lost the transaction our earlier
        // requests opened (and answers with its real head); the push goes on from there.
        if (result.maxFrameNo >= from - 1 && result.maxFrameNo < next - 1 && restarts < MAX_RESTARTS) {
          restarts++
          next = result.maxFrameNo + 1
          baton = undefined
          continue
        }
        yield* state.options.observer?.pushed(count, result) ?? Effect.void
        return result
      }
      yield* state.options.observer?.pushed(count, result) ?? Effect.void
      next += count
      baton = result.baton
      if (next >= end) return result
    }
  })

/**
 * An acknowledged push: its frames become synced frames, its changes pushed (one durable metadata write,
 * with whatever step (a) staged); the conflicts its replay decided go to the conflict log, and Draft's log
 * drops the changes the remote now has.
 */
const acknowledge = (state: State, pushed: number, lastChangeId: number) =>
  Effect.gen(function*() {
    yield* updateMetadata(state, (m) => ({
      ...withoutTransfer(m),
      syncedFrame: m.syncedFrame + pushed,
      lastPushedChangeId: lastChangeId,
      lastPushAt: Date.now()
    }))
    const decided = yield* Ref.getAndSet(state.pushConflicts, [])
    if (decided.length > 0) {
      const at = Date.now()
      const entries = decided.map((entry) => ({ ...entry, at }))
      yield* state.conflictLog.append(entries).pipe(
        Effect.catchAll((error) => Effect.logWarning("cannot write the conflict log", error))
      )
      if (state.options.onConflicts) yield* state.options.onConflicts(entries)
    }
    // Acknowledged changes are not needed in Draft's log any more (ids are never reused).
    yield* on(state.draft, ChangeCapture.prune(lastChangeId)).pipe(
      Effect.catchAll((error) => Effect.logWarning("cannot prune acknowledged changes", error))
    )
  })

/**
 * Step 1c: push Synced's frames beyond the synced frame. `Ok` makes them the synced frames; `Conflict`
 * (someone pushed first) cuts them off again. A failure leaves the push to the next pull to settle (the
 * remote's progress row says whether it landed). The frames are validated, then read and sent a batch at a time: a push of any size holds
 * one batch in memory.
 */
export const pushSyncedFrames = Effect.fn("Engine.pushSyncedFrames")(function*(state: State, lastChangeId: number) {
  const m = yield* SynchronizedRef.get(state.metadata)
  const prefix = yield* prefixAtSyncedFrame(state)
  const tail = yield* Files.scanWalTail(state.paths.synced, prefix, SCAN_CHUNK)
  if (tail.count === 0) return "Nothing" as const
  // In memory only: nothing decides on it after a crash, the next pull settles a push whose answer was lost
  // from the remote's progress row (and a crash cuts the frames beyond the recorded position off again).
  yield* stageMetadata(state, (m) => ({ ...m, transferredChangeId: lastChangeId }))
  const start = m.syncedFrame + 1
  const end = start + tail.count
  const folded = m.foldedFrame ?? 0
  yield* state.step("push:beforeSend")
  let result = yield* sendFrames(state, m.generation, folded, start, end)
  if (
    result._tag === "Conflict" && result.generation === m.generation && result.maxFrameNo < start - 1 &&
    result.maxFrameNo >= folded
  ) {
    yield* RemoteBinding.rewindDecision(start, result.maxFrameNo)
    // The server cannot tell us from a pusher whose session it lost after acknowledging frames up to our
    // start, so it asks for its frames from maxFrameNo + 1 again. Those are synced frames we pulled from
    // it: sending them proves which head we build on (identical bytes), and our frames follow. (A fold
    // keeps the last transaction in the WAL for this; frames already folded leave it a conflict.)
    result = yield* sendFrames(state, m.generation, folded, result.maxFrameNo + 1, end)
  }
  yield* state.step("push:answered")
  if (result._tag === "Ok") {
    if (tail.state !== undefined) yield* Ref.set(state.syncedPrefix, { generation: m.generation, state: tail.state })
    yield* acknowledge(state, tail.count, lastChangeId)
    return "Pushed" as const
  }
  yield* stageMetadata(state, withoutTransfer)
  yield* resetSyncedWal(state)
  return "Conflict" as const
})

/** Waits before the next round after a conflict: doubling from the configured backoff, capped, jittered. */
export const backoff = (state: State, round: number) =>
  Effect.suspend(() => {
    const delay = Math.min(2000, Duration.toMillis(state.backoff) * 2 ** (round - 1)) * (0.5 + Math.random())
    return Effect.sleep(Duration.millis(delay))
  })

/** @internal */
export const retriesExhausted = (state: State) =>
  new SyncError.ConflictError({
    reason: "RetriesExhausted",
    message: `push conflicted ${state.maxRounds} times in a row; local changes stay pending`,
    rounds: state.maxRounds
  })
