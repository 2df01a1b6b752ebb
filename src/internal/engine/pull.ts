/**
 * Steps 1a and 2a: every frame the remote has beyond the synced frame comes into Synced's WAL (written
 * while Synced is closed, whole transactions only), following generation rolls; then the remote's
 * progress row for this client says which local changes it has.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeReplay from "../../ChangeReplay.js"
import * as SyncError from "../../SyncError.js"
import type * as SyncMetadata from "../../SyncMetadata.js"
import * as SyncProtocol from "../../SyncProtocol.js"
import type * as SyncRemote from "../../SyncRemote.js"
import * as WalFrame from "../../WalFrame.js"
import * as Files from "../sqlite/files.js"
import { sqlStatementError } from "./errors.js"
import * as RemoteBinding from "./remoteBinding.js"
import { finishFlaggedRoll, rollSynced } from "./roll.js"
import { finishFlaggedFold, foldSynced } from "./fold.js"
import { type OfferedAnswer, on, owesSync, received, stageMetadata, type State, walFrames, withoutTransfer } from "./state.js"
import { cutToSyncedFrame, prefixAtSyncedFrame, syncedPageIndex } from "./syncedWal.js"
import * as Validate from "./validate.js"

/** Frames held in memory during a pull before they are written into Synced's WAL. */
const FLUSH_FRAMES = 2048

/** Where a pull stands: Synced's generation and frame on disk, and frames received but not yet written. */
interface Cursor {
  generation: number
  frame: number
  buffer: Array<WalFrame.Frame>
  changed: boolean
}

/** Writes the buffer's whole transactions into Synced's WAL, then makes them the synced frames. */
const flush = Effect.fn("Engine.writePulledFrames")(function*(state: State, cursor: Cursor) {
  const committed = WalFrame.committedLength(cursor.buffer)
  if (committed === 0) return
  const generation = cursor.generation
  // Synced's WAL holds the synced frames after the folded ones: frame n of the generation is WAL frame
  // n - foldedFrame.
  const m = yield* SynchronizedRef.get(state.metadata)
  const inWal = walFrames(m)
  yield* Validate.frames(cursor.buffer.slice(0, committed), yield* syncedPages(state, inWal), cursor.frame + 1)
  const prefix = inWal === 0 ? undefined : yield* prefixAtSyncedFrame(state)
  const index = yield* syncedPageIndex(state, m, prefix)
  const trees = yield* syncedTrees(state)
  yield* state.synced.close
  const frames = cursor.buffer.slice(0, committed)
  // Not fsynced here: only the staged position counts on the frames until the next metadata write, which
  // fsyncs them first (`owesSync`); the copy that shows them comes sooner.
  const wal = yield* Files.appendWal(state.paths.synced, inWal, frames, prefix, { sync: false })
  yield* owesSync(state, Files.walPath(state.paths.synced))
  // SQLite's checks before the frames count as synced (of the pages they wrote, or the whole database
  // when those cannot tell); refused, they are cut off again.
  yield* Validate.pulled(
    state.paths.synced,
    inWal,
    frames,
    trees,
    `generation ${generation} up to frame ${cursor.frame + committed}`,
    index.newest
  ).pipe(
    Effect.tapError(() => Files.truncateWal(state.paths.synced, inWal))
  )
  yield* Ref.set(state.syncedPrefix, { generation, state: wal })
  yield* state.step("pull:framesWritten")
  cursor.frame += committed
  cursor.buffer = cursor.buffer.slice(committed)
  const at = cursor.frame
  // Staged: the frames are in Synced's WAL, fsynced before the next metadata write records the position,
  // so a crash before that only makes recovery cut them off again (the next pull brings them back). The
  // settle, a copy's flag or a fold writes it.
  yield* stageMetadata(state, (m) => ({ ...m, generation, syncedFrame: at }))
  cursor.changed = true
  for (const listener of state.changes.positionListeners) listener()
  // A long catch-up never holds more than the bound in the WAL.
  yield* foldSynced(state)
})

/** The b-trees of Synced as it stands (`sqlite_schema` rows with a root page), for the check of pulled frames. */
const syncedTrees = (state: State) =>
  Effect.flatMap(state.synced.open, (sql) =>
    sql.unsafe<{ readonly name: string; readonly rootpage: number }>(
      "SELECT name, rootpage FROM sqlite_schema WHERE rootpage > 0"
    ).pipe(
      Effect.mapError((cause) =>
        new SyncError.StorageError({ reason: "Corrupt", message: `cannot read the schema of ${state.paths.synced}`, path: state.paths.synced, cause })
      )
    ))

/** Buffers the frames of one answer, flushing when the buffer is large. */
const receive = (state: State, cursor: Cursor, start: number, end: number, frames: ReadonlyArray<WalFrame.Frame>) =>
  Effect.gen(function*() {
    yield* received(state, frames.length, frames.length * WalFrame.FRAME_SIZE)
    if (frames.length === 0) {
      return yield* new SyncError.RemoteError({ reason: "Protocol", message: `pull from ${start} answered no frames` })
    }
    if (frames.length > end - start) {
      return yield* new SyncError.RemoteError({
        reason: "InvalidData",
        message: `pull of ${end - start} frames from ${start} answered ${frames.length}`
      })
    }
    for (const f of frames) cursor.buffer.push({ pgno: f.pgno, commitSize: f.commitSize, page: Uint8Array.from(f.page) })
    if (cursor.buffer.length >= FLUSH_FRAMES) yield* flush(state, cursor)
  })

/** The first request of a pull, asked beside the check of the remote and used once that passed. */
interface FirstRequest {
  readonly start: number
  readonly end: number
  readonly result: Either.Either<SyncRemote.PullResult, SyncError.RemoteFailure>
}

/**
 * Pulls until the remote has nothing more, rolling Synced to each next generation it reports. `head`: where
 * `/info` said the remote's head was when the pull began, if it said; frames up to it make the pull
 * complete (it brings the remote as it was when it began) without a request only to hear that there is
 * nothing more. A commit that landed since is the next pull's, as it would be a moment later.
 */
const pullFrames = (
  state: State,
  cursor: Cursor,
  batch: number,
  head: { readonly generation: number; readonly maxFrameNo: number } | undefined,
  first: FirstRequest | undefined
) =>
  Effect.gen(function*() {
    let pending = first
    for (;;) {
      const start = cursor.frame + cursor.buffer.length + 1
      const usable = pending !== undefined && pending.start === start ? pending : undefined
      pending = undefined
      const end = usable?.end ?? start + batch
      const result = usable !== undefined ? yield* usable.result : yield* state.remote.pull(cursor.generation, start, end)
      if (result._tag === "Frames") {
        yield* receive(state, cursor, start, end, result.frames)
        if (
          head !== undefined && head.generation === cursor.generation &&
          cursor.frame + cursor.buffer.length >= head.maxFrameNo
        ) {
          yield* flush(state, cursor)
          // The head is a commit; frames that do not end on one (a remote that moved back) are asked on.
          if (cursor.buffer.length === 0) return
        }
        continue
      }
      if (result.generation > cursor.generation) {
        yield* state.options.observer?.generationChanged(cursor.generation, cursor.generation + 1) ?? Effect.void
      }
      yield* flush(state, cursor)
      if (cursor.buffer.length > 0) {
        return yield* new SyncError.RemoteError({
          reason: "Protocol",
          message: `generation ${cursor.generation} ends inside a transaction at frame ${cursor.frame + cursor.buffer.length}`
        })
      }
      if (result.generation <= cursor.generation) return
      // One generation per answer, like the libSQL client: the base of G+1 is G with all its frames.
      yield* rollSynced(state, cursor.generation + 1)
      cursor.generation += 1
      cursor.frame = 0
      cursor.changed = true
    }
  })

/** The size in pages of Synced at frame `frame` of the synced generation (its commit size, or the base's). */
const syncedPages = (state: State, frame: number) =>
  frame === 0
    ? Effect.map(Files.fileSize(state.paths.synced), (bytes) => Math.floor(bytes / WalFrame.PAGE_SIZE))
    : Effect.map(Files.readWalFrames(state.paths.synced, 1, frame - 1), (frames) => frames[0].commitSize)

/**
 * The part of one answer to a pull from the synced frame that the check of the remote reads: the frame at
 * the synced position, as a pull of that frame alone would have answered.
 */
export const checkPart = (answer: SyncRemote.PullResult): SyncRemote.PullResult =>
  answer._tag === "Frames" && answer.frames.length > 1 ? { ...answer, frames: answer.frames.slice(0, 1) } : answer

/**
 * The rest of that answer: what a pull from the frame after `at` would have answered, or `undefined` when
 * it cannot tell (then that pull is asked). The frames after the first; none with `/info`'s head (asked at
 * the same time) at `at` in its generation: nothing more, as the remote would have said. Any other answer
 * (nothing at `at`, a head elsewhere) is the check's to judge and the pull's to ask.
 */
export const restPart = (
  answer: SyncRemote.PullResult,
  at: { readonly generation: number; readonly frame: number },
  head: { readonly generation: number; readonly maxFrameNo?: number | undefined }
): SyncRemote.PullResult | undefined => {
  if (answer._tag !== "Frames" || answer.frames.length === 0) return undefined
  if (answer.frames.length > 1) return { ...answer, frames: answer.frames.slice(1) }
  return head.generation === at.generation && head.maxFrameNo === at.frame
    ? { _tag: "CheckpointNeeded", generation: at.generation, maxFrameNo: at.frame }
    : undefined
}

/**
 * Before anything is pulled or pushed: the remote is still the server database this one was made from
 * and still holds the synced position (RemoteBinding.verify); an identity first seen is recorded.
 * `remote`: the remote the check asks (one that answers the frame at the synced position from a pull
 * already under way).
 */
const verifyRemote = (state: State, remote: SyncRemote.Service = state.remote) =>
  Effect.gen(function*() {
    const m = yield* SynchronizedRef.get(state.metadata)
    // A frame already folded into Synced's file is no longer at hand to compare (identity and head still are).
    const folded = m.foldedFrame ?? 0
    const info = yield* RemoteBinding.verify(m, remote, (frame) =>
      frame <= folded
        ? Effect.succeed(undefined)
        : Effect.map(Files.readWalFrames(state.paths.synced, 1, frame - 1 - folded), (frames) => frames[0]))
    yield* Ref.set(state.pushIdentity, info.pushIdentity === true)
    if (info.databaseId !== undefined && m.databaseId === undefined) {
      // Staged: lost in a crash, it is seen and recorded again by the next check.
      yield* stageMetadata(state, (m) => ({ ...m, databaseId: info.databaseId }))
    }
    return info
  })

/**
 * The check and the first frames from one pull that starts at the synced frame (which the check compares)
 * instead of two requests: `/info` and that pull, side by side. Its frames after the synced one are the
 * pull's first request, used only once the check passed.
 */
const verifyAndFirstTogether = (
  state: State,
  m: { readonly generation: number; readonly syncedFrame: number },
  start: number,
  end: number
) =>
  Effect.gen(function*() {
    const both = yield* Effect.cached(state.remote.pull(m.generation, m.syncedFrame, end))
    const remote: SyncRemote.Service = {
      ...state.remote,
      pull: (generation, from, to, options) =>
        generation === m.generation && from === m.syncedFrame && to === from + 1 && options === undefined
          ? Effect.map(both, checkPart)
          : state.remote.pull(generation, from, to, options)
    }
    const info = yield* verifyRemote(state, remote)
    // The check passed: the pull answered (the check read it).
    const rest = restPart(yield* both, { generation: m.generation, frame: m.syncedFrame }, info)
    const first: FirstRequest | undefined = rest === undefined ? undefined : { start, end, result: Either.right(rest) }
    return { first, info }
  })

/**
 * Hands the next step (a) an answer the remote gave already (live sync's waiting pull): used in place of
 * its requests when it settles the check (`settledByFrames`), else dropped. Only the latest is kept.
 */
export const offer = (state: State, answer: OfferedAnswer): Effect.Effect<void> =>
  Effect.sync(() => {
    state.offeredAnswer.current = answer
  })

/**
 * Whether an answer to a pull that starts at the synced frame settles the check before a pull
 * (RemoteBinding.verify) on its own: it names the recorded database (what `/info`'s identity says), it has
 * frames of the synced generation (so the remote has not gone back to an earlier one), and its first frame
 * is the synced frame as this client holds it (`local`; `undefined` when it is folded into Synced's file,
 * and then the remote still having it is enough, as for `verify`). Anything else is left to `verify`.
 */
export const settledByFrames = (
  known: {
    readonly generation: number
    readonly syncedFrame: number
    readonly databaseId?: string | undefined
  },
  answer: OfferedAnswer,
  local: WalFrame.Frame | undefined
): boolean =>
  known.syncedFrame > 0 && known.databaseId !== undefined && answer.generation === known.generation &&
  answer.start === known.syncedFrame && answer.result._tag === "Frames" && answer.result.frames.length > 0 &&
  answer.result.databaseId === known.databaseId &&
  (local === undefined || WalFrame.equals(local, answer.result.frames[0]))

/**
 * An offered answer that settles the check, as the check's `/info` and the pull's first request: `/info`
 * with the answer's last frame as the head (the pull brings the remote as the answer found it; a commit
 * since is the next pull's), the frames after the synced one as the first request's answer. `undefined`:
 * no answer offered, or one that cannot settle the check.
 */
const takeOffered = (state: State, m: SyncMetadata.Metadata) =>
  Effect.gen(function*() {
    const answer = state.offeredAnswer.current
    state.offeredAnswer.current = undefined
    if (answer === undefined || answer.result._tag !== "Frames") return undefined
    const folded = m.foldedFrame ?? 0
    const local = m.syncedFrame <= folded
      ? undefined
      : (yield* Files.readWalFrames(state.paths.synced, 1, m.syncedFrame - 1 - folded))[0]
    if (!settledByFrames(m, answer, local)) return undefined
    const frames = answer.result.frames
    const info: SyncRemote.Info = {
      generation: m.generation,
      databaseId: m.databaseId,
      maxFrameNo: m.syncedFrame + frames.length - 1
    }
    const first: FirstRequest | undefined = frames.length === 1 ? undefined : {
      start: m.syncedFrame + 1,
      end: answer.end,
      result: Either.right({ _tag: "Frames", frames: frames.slice(1) })
    }
    return { info, first }
  })

/**
 * Steps 1a and 2a: pull every frame the remote has beyond the synced frame into Synced's WAL (written
 * while Synced is closed), following generation rolls. Returns whether anything arrived.
 */
export const pullRemoteIntoSynced = Effect.fn("Engine.pullRemoteIntoSynced")(function*(state: State) {
  yield* finishFlaggedRoll(state)
  yield* finishFlaggedFold(state)
  yield* cutToSyncedFrame(state)
  const m = yield* SynchronizedRef.get(state.metadata)
  const cursor: Cursor = { generation: m.generation, frame: m.syncedFrame, buffer: [], changed: false }
  // Live sync's waiting pull answered from the synced frame: no request at all when that settles the check.
  const offered = yield* takeOffered(state, m)
  if (offered !== undefined) {
    return offered.first === undefined
      ? yield* pulled(state, false)
      : yield* pullChecked(state, cursor, offered.info, offered.first)
  }
  // The first frames are asked for beside the check (one round trip for both), and used only once the
  // check passed. A catch-up of more frames goes on with as many per request as the server answers.
  const start = m.syncedFrame + 1
  const end = start + SyncProtocol.CLIENT_BATCH_FRAMES
  // Not folded: the frame at the synced position is at hand to compare, and one pull from it brings the
  // check's frame and the first frames beside `/info`.
  if (m.syncedFrame > (m.foldedFrame ?? 0)) {
    const { first, info } = yield* verifyAndFirstTogether(state, m, start, end)
    return yield* pullChecked(state, cursor, info, first)
  }
  const first = Effect.either(state.remote.pull(m.generation, start, end))
  // With the synced frame folded (after a bootstrap, a fold) the first answer alone can settle the check
  // when nothing is new: one request, no `/info`. Otherwise the check follows, before the answer is used.
  if (RemoteBinding.settlesByAnswer(m)) {
    const answer = yield* first
    if (Either.isRight(answer) && RemoteBinding.settledByAnswer(m, answer.right)) {
      return yield* pulled(state, false)
    }
    return yield* pullChecked(state, cursor, yield* verifyRemote(state), { start, end, result: answer })
  }
  const [info, result] = yield* Effect.all([verifyRemote(state), first], { concurrency: 2 })
  return yield* pullChecked(state, cursor, info, { start, end, result })
})

/** The rest of step (a) once the remote passed the check: every frame after the first answer's. */
const pullChecked = (state: State, cursor: Cursor, info: SyncRemote.Info, first: FirstRequest | undefined) =>
  Effect.gen(function*() {
    // As many frames per request as the server says it answers at once.
    const batch = info.maxPullFrames !== undefined && info.maxPullFrames > 0
      ? info.maxPullFrames
      : SyncProtocol.CLIENT_BATCH_FRAMES
    const head = info.maxFrameNo === undefined ? undefined : { generation: info.generation, maxFrameNo: info.maxFrameNo }
    yield* pullFrames(state, cursor, batch, head, first).pipe(
      Effect.ensuring(Effect.ignore(state.synced.open))
    )
    return yield* pulled(state, cursor.changed)
  })

/** The end of step (a): Synced open again and the pull's time noted (in memory: the next metadata write takes it along). */
const pulled = (state: State, changed: boolean) =>
  Effect.zipRight(
    state.synced.open,
    Effect.as(SynchronizedRef.update(state.metadata, (m) => ({ ...m, lastPullAt: Date.now() })), changed)
  )

/**
 * After step (a): the remote's progress row for this client says which changes it has. That settles a
 * push whose answer was lost (before or after a restart).
 */
export const settleProgress = Effect.fn("Engine.settleProgress")(function*(state: State) {
  const progress = yield* on(state.synced, ChangeReplay.progress(state.clientId)).pipe(
    Effect.mapError(sqlStatementError("Replay"))
  )
  // Staged with the pulled position (the row is in the frames it counts): a crash before the next write
  // leaves both to the next pull. A push's acknowledgement or a pull's copy or settle writes them.
  yield* stageMetadata(state, (m) => ({
    ...withoutTransfer(m),
    lastPushedChangeId: Math.max(progress, m.lastPushedChangeId)
  }))
  yield* state.step("pull:settled")
  // Changes at or below lastPushedChangeId were acknowledged: never replayed again, even onto a remote
  // whose progress row is older (a re-bootstrap onto a server that lost them).
  return (yield* SynchronizedRef.get(state.metadata)).lastPushedChangeId
})
