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
import type * as SyncMetadata from "../../SyncMetadata.js"
import * as SyncProtocol from "../../SyncProtocol.js"
import * as WalFrame from "../../WalFrame.js"
import * as Capture from "../capture/capture.js"
import * as Files from "../sqlite/files.js"
import * as Scratch from "../sqlite/scratch.js"
import * as RemoteBinding from "./remoteBinding.js"
import { stageMetadata, type State, stepOn, updateMetadata, withoutTransfer } from "./state.js"
import { cutToSyncedFrame, prefixAtSyncedFrame, resetSyncedWal } from "./syncedWal.js"
import * as Replay from "./replay.js"
import { sqlStatementError } from "./errors.js"

/**
 * Frames read from Synced's WAL and handed to the remote at a time (which sends them in as many requests
 * as the server takes, `max_push_frames` of `/info`): a push holds only these in memory (4 MiB).
 */
const BATCH = SyncProtocol.MAX_FRAMES_PER_REQUEST

/** Frames of Synced's WAL validated per read before the push. */
const SCAN_CHUNK = SyncProtocol.CLIENT_BATCH_FRAMES * 8

/** Rewinds within one push the server may ask for (its session for our earlier requests was lost). */
const MAX_RESTARTS = 8

/** How a push is sent: after the pull of step 1a, or at the head without it (`pushAtHead`). */
interface Sending {
  /** Frames before the push's own the remote already has, sent first (not reported as pushed). */
  readonly resent: number
  /** The remote identity the frames build on, named in each request (`pushAtHead`). */
  readonly databaseId?: string | undefined
  /** A conflict is not the observer's to hear of: it only says that a pull must come first. */
  readonly quiet: boolean
}

/**
 * Sends remote frames `from..end-1` of `generation`, read from Synced's WAL a batch at a time (remote
 * frame n is WAL frame n - `folded`), the baton of each answer carried into the next request. Bytes sent
 * count whatever the outcome (`stats`); the observer hears of each accepted batch and of a conflict.
 */
const sendFrames = (
  state: State,
  generation: number,
  folded: number,
  from: number,
  end: number,
  sending: Sending,
  scratch: Uint8Array
) =>
  Effect.gen(function*() {
    let next = from
    let baton: string | undefined
    let restarts = 0
    const options = sending.databaseId === undefined ? undefined : { databaseId: sending.databaseId }
    // The frames of this push in a batch that also carries frames the remote has.
    const own = (first: number, count: number) => count - Math.max(0, Math.min(count, from + sending.resent - first))
    for (;;) {
      const count = Math.min(BATCH, end - next)
      // (read in wire form into the push's buffer: sent as they lie, the buffer written again only after the answer)
      const frames = yield* Files.readWireFrames(state.paths.synced, count, next - folded - 1, scratch)
      const result = yield* state.remote.push(generation, next, next + count, frames, baton, options).pipe(
        Effect.ensuring(Ref.update(state.traffic, (t) => ({ ...t, sent: t.sent + count * WalFrame.FRAME_SIZE })))
      )
      if (result._tag === "Conflict" && sending.quiet) return result
      if (result._tag === "Conflict") {
        // An answer below this request but not below the push: the server lost the transaction our earlier
        // requests opened (and answers with its real head); the push goes on from there.
        if (result.maxFrameNo >= from - 1 && result.maxFrameNo < next - 1 && restarts < MAX_RESTARTS) {
          restarts++
          next = result.maxFrameNo + 1
          baton = undefined
          continue
        }
        yield* state.options.observer?.pushed(own(next, count), result) ?? Effect.void
        return result
      }
      yield* state.options.observer?.pushed(own(next, count), result) ?? Effect.void
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
const acknowledge = (state: State, pushed: number, lastChangeId: number, changes: number) =>
  Effect.gen(function*() {
    yield* updateMetadata(state, (m) => ({
      ...withoutTransfer(m),
      syncedFrame: m.syncedFrame + pushed,
      lastPushedChangeId: lastChangeId,
      lastPushAt: Date.now()
    }))
    yield* state.options.observer?.acknowledged?.(changes) ?? Effect.void
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
    yield* stepOn(state.draft, (exec) => Capture.pruneIn(exec, lastChangeId), ChangeCapture.prune(lastChangeId)).pipe(
      Effect.catchAll((error) => Effect.logWarning("cannot prune acknowledged changes", error))
    )
  })

/**
 * Step 1c: push Synced's frames beyond the synced frame. `Ok` makes them the synced frames; `Conflict`
 * (someone pushed first) cuts them off again. A failure leaves the push to the next pull to settle (the
 * remote's progress row says whether it landed). The frames are validated, then read and sent a batch at a time: a push of any size holds
 * one batch in memory.
 */
export const pushSyncedFrames = Effect.fn("Engine.pushSyncedFrames")(function*(
  state: State,
  replayed: { readonly lastChangeId: number; readonly replayed: number },
  atHead?: { readonly databaseId: string }
) {
  return yield* Scratch.withBuffer(SCRATCH_SIZE, (scratch) => pushWith(state, replayed, atHead, scratch))
})

/** A buffer for a batch of frames and for a chunk of the scan, reused from one push to the next (scratch.ts). */
const SCRATCH_SIZE = Math.max(BATCH, SCAN_CHUNK) * WalFrame.FRAME_SIZE

const pushWith = (
  state: State,
  replayed: { readonly lastChangeId: number; readonly replayed: number },
  atHead: { readonly databaseId: string } | undefined,
  scratch: Uint8Array
) => Effect.gen(function*() {
  const { lastChangeId } = replayed
  const m = yield* SynchronizedRef.get(state.metadata)
  const prefix = yield* prefixAtSyncedFrame(state)
  // The replay's frames as SQLite's wal-index has them (Synced is still open from the replay), else scanned.
  const tail = (yield* Files.walTailByIndex(state.paths.synced, prefix)) ??
    (yield* Files.scanWalTail(state.paths.synced, prefix, SCAN_CHUNK, scratch))
  if (tail.count === 0) return "Nothing" as const
  // In memory only: nothing decides on it after a crash, the next pull settles a push whose answer was lost
  // from the remote's progress row (and a crash cuts the frames beyond the recorded position off again).
  yield* stageMetadata(state, (m) => ({ ...m, transferredChangeId: lastChangeId }))
  const start = m.syncedFrame + 1
  const end = start + tail.count
  const folded = m.foldedFrame ?? 0
  yield* state.step("push:beforeSend")
  // At the head: the synced frame goes first. The remote takes the push only if it holds that frame byte
  // for byte and nothing after it (any other frame there is a conflict): the check of step 1a's pull, in
  // the push itself.
  let result = atHead === undefined
    ? yield* sendFrames(state, m.generation, folded, start, end, { resent: 0, quiet: false }, scratch)
    : yield* sendFrames(state, m.generation, folded, start - 1, end, { resent: 1, quiet: true, databaseId: atHead.databaseId }, scratch)
  if (
    atHead === undefined &&
    result._tag === "Conflict" && result.generation === m.generation && result.maxFrameNo < start - 1 &&
    result.maxFrameNo >= folded
  ) {
    yield* RemoteBinding.rewindDecision(start, result.maxFrameNo)
    // The server cannot tell us from a pusher whose session it lost after acknowledging frames up to our
    // start, so it asks for its frames from maxFrameNo + 1 again. Those are synced frames we pulled from
    // it: sending them proves which head we build on (identical bytes), and our frames follow. (A fold
    // keeps the last transaction in the WAL for this; frames already folded leave it a conflict.)
    result = yield* sendFrames(state, m.generation, folded, result.maxFrameNo + 1, end, { resent: 0, quiet: false }, scratch)
  }
  yield* state.step("push:answered")
  if (result._tag === "Ok") {
    if (tail.state !== undefined) yield* Ref.set(state.syncedPrefix, { generation: m.generation, state: tail.state })
    yield* acknowledge(state, tail.count, lastChangeId, replayed.replayed)
    return "Pushed" as const
  }
  yield* stageMetadata(state, withoutTransfer)
  yield* resetSyncedWal(state)
  return "Conflict" as const
})

/**
 * Local changes a push at the head replays at most while this replica's last push at the head found it
 * behind: a stale push costs its replay again after the pull, so a large one waits for a sign that the
 * replica is at the head again (a push at the head that landed, or a pull before a push that brought nothing).
 */
const AT_HEAD_MAX_CHANGES = 1000

/**
 * How far a push at the head counts the pending changes: to the bound, after a push at the head that found
 * the replica behind (it goes only when the count is within it); else only as far as the replay's choice
 * between one by one and runs needs (a long log is never read through to learn its length).
 */
export const atHeadCount = (missedLast: boolean): number => missedLast ? AT_HEAD_MAX_CHANGES + 1 : Replay.BULK_FROM

/** Whether a push at the head goes with `counted` pending changes (counted up to `atHeadCount`). */
export const atHeadGoes = (counted: number, missedLast: boolean): boolean =>
  counted > 0 && (!missedLast || counted <= AT_HEAD_MAX_CHANGES)

/**
 * Whether a push may go without the pull before it (`pushAtHead`): the remote refuses a push that names
 * another database (`pushIdentity`, learnt from its last `/info`), an identity was recorded to name, the
 * synced frame is still in Synced's WAL to send first, no roll or fold is left to finish, and no push's
 * outcome is in doubt (a pull settles that from the progress row).
 */
export const atHeadDecision = (
  m: Pick<
    SyncMetadata.Metadata,
    "databaseId" | "syncedFrame" | "foldedFrame" | "rollInProgress" | "foldInProgress" | "transferredChangeId"
  >,
  pushIdentity: boolean
): m is typeof m & { readonly databaseId: string } =>
  pushIdentity && m.databaseId !== undefined && m.syncedFrame > (m.foldedFrame ?? 0) && !m.rollInProgress &&
  m.foldInProgress !== true && m.transferredChangeId === undefined

/**
 * A push without step 1a: the local changes replayed onto Synced as it stands and pushed from the synced
 * frame, naming the recorded identity. When this replica is at the remote's head (a live replica almost
 * always is) that saves the pull's two requests; when it is not, the remote answers a conflict and stores
 * nothing ("Stale": the rounds with their pull follow). A stale push costs its replay: after one, only a small
 * push goes at the head until a push finds the replica at the head again (`atHeadCount`).
 * Its durable steps are a push's (the acknowledgement, one metadata write): a crash anywhere leaves what
 * a crash in a push leaves, and the next push after an open pulls first (the remote's `/info` is not known).
 */
export const pushAtHead = Effect.fn("Engine.pushAtHead")(function*(state: State) {
  const m = yield* SynchronizedRef.get(state.metadata)
  if (!atHeadDecision(m, true)) return "NotTried" as const
  // Asked once when no check of the remote asked it yet (a pull settled by its answer alone asks no `/info`).
  const known = yield* Ref.get(state.pushIdentity)
  const pushIdentity = known ?? (yield* Effect.map(state.remote.info, (info) => info.pushIdentity === true))
  yield* Ref.set(state.pushIdentity, pushIdentity)
  if (!pushIdentity) return "NotTried" as const
  const missedLast = yield* Ref.get(state.atHeadMissed)
  const bound = atHeadCount(missedLast)
  const pending = yield* stepOn(
    state.draft,
    (exec) => Capture.countPendingIn(exec, m.lastPushedChangeId, bound),
    ChangeCapture.countPending(m.lastPushedChangeId, bound)
  ).pipe(
    Effect.mapError(sqlStatementError("Capture"))
  )
  if (!atHeadGoes(pending, missedLast)) return "NotTried" as const
  yield* cutToSyncedFrame(state)
  // (the count, when it is exact: below the bound)
  const replay = yield* Replay.replayDraftOntoSynced(state, "push", m.lastPushedChangeId, undefined, pending < bound ? pending : undefined)
  if (replay.replayed === 0) return "NotTried" as const
  const outcome = yield* pushSyncedFrames(state, replay, { databaseId: m.databaseId })
  yield* Ref.set(state.atHeadMissed, outcome === "Conflict")
  return outcome === "Conflict" ? "Stale" as const : "Pushed" as const
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
