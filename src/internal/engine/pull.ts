/**
 * Steps 1a and 2a: every frame the remote has beyond the synced frame comes into Synced's WAL (written
 * while Synced is closed, whole transactions only), following generation rolls; then the remote's
 * progress row for this client says which local changes it has.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeReplay from "../../ChangeReplay.js"
import * as SyncError from "../../SyncError.js"
import * as SyncProtocol from "../../SyncProtocol.js"
import * as WalFrame from "../../WalFrame.js"
import * as Files from "../sqlite/files.js"
import { sqlStatementError } from "./errors.js"
import * as RemoteBinding from "./remoteBinding.js"
import { finishFlaggedRoll, rollSynced } from "./roll.js"
import { finishFlaggedFold, foldSynced } from "./fold.js"
import { on, received, type State, updateMetadata, walFrames, withoutTransfer } from "./state.js"
import { cutToSyncedFrame, prefixAtSyncedFrame } from "./syncedWal.js"
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
const flush = (state: State, cursor: Cursor) =>
  Effect.gen(function*() {
    const committed = WalFrame.committedLength(cursor.buffer)
    if (committed === 0) return
    const generation = cursor.generation
    // Synced's WAL holds the synced frames after the folded ones: frame n of the generation is WAL frame
    // n - foldedFrame.
    const m = yield* SynchronizedRef.get(state.metadata)
    const inWal = walFrames(m)
    yield* Validate.frames(cursor.buffer.slice(0, committed), yield* syncedPages(state, inWal), cursor.frame + 1)
    const prefix = inWal === 0 ? undefined : yield* prefixAtSyncedFrame(state)
    const trees = yield* syncedTrees(state)
    yield* state.synced.close
    const frames = cursor.buffer.slice(0, committed)
    const wal = yield* Files.appendWal(state.paths.synced, inWal, frames, prefix)
    // SQLite's checks before the frames count as synced (of the pages they wrote, or the whole database
    // when those cannot tell); refused, they are cut off again.
    yield* Validate.pulled(state.paths.synced, inWal, frames, trees, `generation ${generation} up to frame ${cursor.frame + committed}`).pipe(
      Effect.tapError(() => Files.truncateWal(state.paths.synced, inWal))
    )
    yield* Ref.set(state.syncedPrefix, { generation, state: wal })
    yield* state.step("pull:framesWritten")
    cursor.frame += committed
    cursor.buffer = cursor.buffer.slice(committed)
    const at = cursor.frame
    yield* updateMetadata(state, (m) => ({ ...m, generation, syncedFrame: at }))
    yield* state.step("pull:metadataWritten")
    cursor.changed = true
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

/** Pulls until the remote has nothing more, rolling Synced to each next generation it reports. */
const pullFrames = (state: State, cursor: Cursor, batch: number) =>
  Effect.gen(function*() {
    for (;;) {
      const start = cursor.frame + cursor.buffer.length + 1
      const end = start + batch
      const result = yield* state.remote.pull(cursor.generation, start, end)
      if (result._tag === "Frames") {
        yield* receive(state, cursor, start, end, result.frames)
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
 * Before anything is pulled or pushed: the remote is still the server database this one was made from
 * and still holds the synced position (RemoteBinding.verify); an identity first seen is recorded.
 */
const verifyRemote = (state: State) =>
  Effect.gen(function*() {
    const m = yield* SynchronizedRef.get(state.metadata)
    // A frame already folded into Synced's file is no longer at hand to compare (identity and head still are).
    const folded = m.foldedFrame ?? 0
    const info = yield* RemoteBinding.verify(m, state.remote, (frame) =>
      frame <= folded
        ? Effect.succeed(undefined)
        : Effect.map(Files.readWalFrames(state.paths.synced, 1, frame - 1 - folded), (frames) => frames[0]))
    if (info.databaseId !== undefined && m.databaseId === undefined) {
      yield* updateMetadata(state, (m) => ({ ...m, databaseId: info.databaseId }))
    }
    return info
  })

/**
 * Steps 1a and 2a: pull every frame the remote has beyond the synced frame into Synced's WAL (written
 * while Synced is closed), following generation rolls. Returns whether anything arrived.
 */
export const pullRemoteIntoSynced = Effect.fn("Engine.pullRemoteIntoSynced")(function*(state: State) {
  yield* finishFlaggedRoll(state)
  yield* finishFlaggedFold(state)
  yield* cutToSyncedFrame(state)
  const info = yield* verifyRemote(state)
  const m = yield* SynchronizedRef.get(state.metadata)
  const cursor: Cursor = { generation: m.generation, frame: m.syncedFrame, buffer: [], changed: false }
  // As many frames per request as the server says it answers at once.
  const batch = info.maxPullFrames !== undefined && info.maxPullFrames > 0
    ? info.maxPullFrames
    : SyncProtocol.CLIENT_BATCH_FRAMES
  yield* pullFrames(state, cursor, batch).pipe(Effect.ensuring(Effect.ignore(state.synced.open)))
  yield* state.synced.open
  // Made durable by `settleProgress`, whose metadata write always follows this step.
  yield* SynchronizedRef.update(state.metadata, (m) => ({ ...m, lastPullAt: Date.now() }))
  return cursor.changed
})

/**
 * After step (a): the remote's progress row for this client says which changes it has. That settles a
 * push whose answer was lost (before or after a restart).
 */
export const settleProgress = Effect.fn("Engine.settleProgress")(function*(state: State) {
  const progress = yield* on(state.synced, ChangeReplay.progress(state.clientId)).pipe(
    Effect.mapError(sqlStatementError("Replay"))
  )
  yield* updateMetadata(state, (m) => ({
    ...withoutTransfer(m),
    lastPushedChangeId: Math.max(progress, m.lastPushedChangeId)
  }))
  // Changes at or below lastPushedChangeId were acknowledged: never replayed again, even onto a remote
  // whose progress row is older (a re-bootstrap onto a server that lost them).
  return (yield* SynchronizedRef.get(state.metadata)).lastPushedChangeId
})
