/**
 * Folds: each copy's WAL is kept under `maxWalFrames` at rest by moving its frames into its database file,
 * as a recorded, crash-safe step (SQLite never checkpoints either copy on its own).
 *
 * - Synced: the synced frames but the last transaction (kept so a push the server asks to resend from it can
 *   be answered) are written into its file while its WAL still holds them (SQLite reads the WAL's copy of
 *   a page first, so a file ahead of the metadata is harmless); the rest of the WAL is written as
 *   `<path>-synced-wal.next`; the metadata records the new `foldedFrame` with `foldInProgress`; the new WAL
 *   replaces the old one. The protocol's frame numbers stay: the WAL holds `foldedFrame + 1..syncedFrame`.
 * - Draft: the pages its WAL's frames change (read from the frame headers) are recorded in the metadata
 *   (`draftPages`, with `draftFoldInProgress`), then SQLite's own checkpoint runs; the flag is cleared
 *   on disk by the next metadata write. The record is what lets a pull write only the pages where Draft can
 *   differ from Synced. A WAL of ordinary writes is not cut to nothing (the next writes would grow the file
 *   again, a frame at a time): the next write starts it over from its
 *   beginning and SQLite cuts the file back to the bound's size then (`journal_size_limit`). Its frames are
 *   counted from SQLite's wal-index (walIndex.ts), since its size no longer counts them.
 *
 * Open, and the next push or pull, finish a flagged fold.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SyncError from "../../SyncError.js"
import type { Service as FileService } from "../../SyncFiles.js"
import type * as SyncMetadata from "../../SyncMetadata.js"
import * as SyncProtocol from "../../SyncProtocol.js"
import * as WalFrame from "../../WalFrame.js"
import * as Files from "../sqlite/files.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import * as Scratch from "../sqlite/scratch.js"
import * as WalIndex from "../sqlite/walIndex.js"
import * as DraftPages from "./draftPages.js"
import * as Gates from "./gates.js"
import { on, type Paths, persistStaged, type State, syncedFileAt, updateMetadata, walFrames } from "./state.js"
import { prefixAtSyncedFrame } from "./syncedWal.js"

/**
 * A flagged fold's file steps (Synced closed): the rest of the WAL replaces it; with nothing left, the WAL
 * is cut to nothing. Idempotent: recovery redoes it.
 */
export const finishFoldFiles = (paths: Paths, m: SyncMetadata.Metadata) =>
  Effect.gen(function*() {
    if (yield* Files.exists(paths.syncedWalNext)) {
      yield* Files.remove(Files.shmPath(paths.synced))
      yield* Files.rename(paths.syncedWalNext, Files.walPath(paths.synced))
    }
    yield* Files.truncateWal(paths.synced, walFrames(m))
  })

/** Frames of Synced's WAL a fold reads at a time, into the buffer a push reads its batches into (scratch.ts). */
const FOLD_CHUNK = SyncProtocol.MAX_FRAMES_PER_REQUEST

/** Folds Synced's WAL when its synced frames outgrew `maxWalFrames` (the caller holds the sync lock). */
export const foldSynced = Effect.fn("Engine.foldSynced")(
  function*(state: State) {
    const m = yield* SynchronizedRef.get(state.metadata)
    if (walFrames(m) <= state.maxWalFrames) return
    yield* prefixAtSyncedFrame(state) // validates the synced frames once if this process has not yet
    // Through a reused buffer, a chunk at a time: the WAL is not held in fresh memory (whose first touch
    // costs as much as the fold's own work).
    yield* Scratch.withBuffer(FOLD_CHUNK * WalFrame.FRAME_SIZE, (scratch) => foldSyncedWith(state, walFrames(m), scratch))
  },
  (effect, state) => Effect.ensuring(effect, Effect.ignore(state.synced.open))
)

const foldSyncedWith = (state: State, count: number, scratch: Uint8Array) =>
  Effect.gen(function*() {
    const { paths } = state
    const read = yield* readSyncedHeaders(paths.synced, count, scratch)
    const frames = read.frames
    const fold = PageCopy.foldLength(frames, Math.max(1, Math.floor(state.maxWalFrames / 2)))
    if (fold === 0) return
    // The frames go into the file, past recovery's reach: the metadata file must count them first.
    yield* persistStaged(state)
    yield* state.synced.close
    yield* Ref.set(state.syncedPrefix, undefined)
    yield* Files.remove(paths.syncedWalNext)
    yield* applySyncedFrames(paths.synced, frames, fold, scratch, read.loaded)
    if (fold < count) {
      // the last transaction, rewritten as a WAL of its own (at most half the bound, so it fits the buffer
      // unless the bound is large)
      const kept = count - fold
      const last = kept * WalFrame.FRAME_SIZE <= scratch.byteLength
        ? yield* Files.readWireFrames(paths.synced, kept, fold, scratch)
        : yield* Files.readWalFrames(paths.synced, kept, fold)
      yield* PageCopy.writeWalFile(paths.syncedWalNext, last)
    }
    yield* state.step("fold:applied")
    const pages = PageCopy.pageNumbers(frames.slice(0, fold))
    const next = yield* updateMetadata(state, (m) => {
      const foldedFrame = (m.foldedFrame ?? 0) + fold
      const at = { generation: m.generation, frame: foldedFrame }
      return {
        ...m,
        foldedFrame,
        foldInProgress: true,
        ...(m.draftPages ? { draftPages: DraftPages.syncedFolded(m.draftPages, at, pages) } : {})
      }
    })
    yield* state.step("fold:flagged")
    yield* finishFoldFiles(paths, next)
    yield* updateMetadata(state, (m) => ({ ...m, foldInProgress: false }))
  })

/**
 * Every synced frame of Synced's WAL (`count`) written into its file, which then holds the synced generation
 * at its last frame: the next generation's base, made in place (a roll, roll.ts), at the cost of those
 * frames rather than of a copy of the whole database. Synced is closed, and the metadata file counts the
 * frames already (`persistStaged`): until the roll is flagged, its WAL still holds them, so SQLite reads the
 * same pages from file and WAL alike. Answers the pages they wrote.
 */
export const applyAllSynced = (state: State, count: number) =>
  count === 0
    ? Effect.succeed<ReadonlyArray<number>>([])
    : Scratch.withBuffer(FOLD_CHUNK * WalFrame.FRAME_SIZE, (scratch) =>
      Effect.gen(function*() {
        const read = yield* readSyncedHeaders(state.paths.synced, count, scratch)
        yield* applySyncedFrames(state.paths.synced, read.frames, count, scratch, read.loaded)
        return PageCopy.pageNumbers(read.frames)
      }))

/**
 * Reads `count` frames of `<db>-wal` (synced frames: validated already) from frame `first` into
 * `scratch`, which holds at least that many.
 */
const readChunk = (fs: FileService, fd: number, scratch: Uint8Array, first: number, count: number) => {
  const length = count * WalFrame.FRAME_SIZE
  if (fs.readSync(fd, scratch, 0, length, WalFrame.walSize(first)) !== length) {
    throw new Error(`WAL holds fewer than ${first + count} frames`)
  }
}

/**
 * The headers of the first `count` frames of `<db>-wal`, read a chunk at a time into `scratch`; `loaded`:
 * the first frame of the chunk `scratch` holds after it.
 */
const readSyncedHeaders = (db: string, count: number, scratch: Uint8Array) =>
  Files.attempt(Files.walPath(db), "cannot read WAL", (fs) => {
    const chunk = Math.floor(scratch.byteLength / WalFrame.FRAME_SIZE)
    const view = new DataView(scratch.buffer, scratch.byteOffset, scratch.byteLength)
    const frames: Array<PageCopy.FrameHeader> = new Array(count)
    let loaded = 0
    const fd = fs.openSync(Files.walPath(db), "r")
    try {
      for (let first = 0; first < count; first += chunk) {
        const n = Math.min(chunk, count - first)
        readChunk(fs, fd, scratch, first, n)
        loaded = first
        for (let i = 0; i < n; i++) {
          frames[first + i] = { pgno: view.getUint32(i * WalFrame.FRAME_SIZE), commitSize: view.getUint32(i * WalFrame.FRAME_SIZE + 4) }
        }
      }
    } finally {
      fs.closeSync(fd)
    }
    return { frames, loaded }
  })

/**
 * Which of the first `count` frames a fold writes into the database file: the newest frame of each page
 * within the size the last commit frame among them gives (the file is cut to that size); each page is
 * written once. All false when none of them commits.
 */
export const foldWrites = (frames: ReadonlyArray<PageCopy.FrameHeader>, count: number): {
  readonly pages: number
  readonly writes: ReadonlyArray<boolean>
} => {
  let committed = count
  while (committed > 0 && frames[committed - 1]!.commitSize === 0) committed--
  const writes: Array<boolean> = new Array(count).fill(false)
  if (committed === 0) return { pages: 0, writes }
  const pages = frames[committed - 1]!.commitSize
  const newest = new Map<number, number>()
  for (let i = 0; i < committed; i++) newest.set(frames[i]!.pgno, i)
  for (const [pgno, i] of newest) if (pgno <= pages) writes[i] = true
  return { pages, writes }
}

/**
 * The first `fold` frames of `<db>-wal` written into `db`'s file in place (see {@link foldWrites}), read a
 * chunk at a time into `scratch` (the chunk it holds, from frame `loaded`, first), and the file fsynced.
 * Each chunk's pages to write are moved together in `scratch` (over the headers and pages already dealt
 * with), so that a run of consecutive pages is one write. Only with `db` closed.
 */
const applySyncedFrames = (
  db: string,
  frames: ReadonlyArray<PageCopy.FrameHeader>,
  fold: number,
  scratch: Uint8Array,
  loaded: number
) =>
  Files.attempt(db, "cannot apply frames", (fs) => {
    const { pages, writes } = foldWrites(frames, fold)
    const chunk = Math.floor(scratch.byteLength / WalFrame.FRAME_SIZE)
    const wal = fs.openSync(Files.walPath(db), "r")
    try {
      const fd = fs.openSync(db, "r+")
      try {
        if (pages > 0) {
          fs.ftruncateSync(fd, pages * WalFrame.PAGE_SIZE)
          const apply = (first: number) => {
            const n = Math.min(chunk, fold - first)
            let runPgno = 0
            let runLength = 0
            const flush = () => {
              if (runLength > 0) fs.writeSync(fd, scratch, 0, runLength * WalFrame.PAGE_SIZE, (runPgno - 1) * WalFrame.PAGE_SIZE)
              runLength = 0
            }
            for (let i = 0; i < n; i++) {
              if (!writes[first + i]) continue
              const pgno = frames[first + i]!.pgno
              if (runLength > 0 && pgno !== runPgno + runLength) flush()
              if (runLength === 0) runPgno = pgno
              // (to an offset below the frame's own: nothing not yet dealt with is overwritten)
              const source = i * WalFrame.FRAME_SIZE + WalFrame.FRAME_HEADER_SIZE
              scratch.copyWithin(runLength * WalFrame.PAGE_SIZE, source, source + WalFrame.PAGE_SIZE)
              runLength++
            }
            flush()
          }
          if (loaded < fold) apply(loaded)
          for (let first = 0; first < fold; first += chunk) {
            if (first === loaded) continue
            readChunk(fs, wal, scratch, first, Math.min(chunk, fold - first))
            apply(first)
          }
        }
        fs.fsyncSync(fd)
      } finally {
        fs.closeSync(fd)
      }
    } finally {
      fs.closeSync(wal)
    }
  })

/** A fold flagged in metadata whose file steps failed: finished before anything reads or extends Synced. */
export const finishFlaggedFold = (state: State) =>
  Effect.gen(function*() {
    const m = yield* SynchronizedRef.get(state.metadata)
    if (!m.foldInProgress) return
    yield* state.synced.close
    yield* Ref.set(state.syncedPrefix, undefined)
    yield* finishFoldFiles(state.paths, m)
    yield* updateMetadata(state, (m) => ({ ...m, foldInProgress: false }))
  }).pipe(Effect.ensuring(Effect.ignore(state.synced.open)))

/**
 * SQLite's checkpoint of Draft's WAL into its file: every frame is copied into the file and the next write
 * starts the WAL over. A WAL just past its bound (ordinary writes) keeps its file for the next writes to
 * reuse (RESTART; that write cuts it back to the bound's size); one of more than twice the bound (a large
 * transaction) is cut to nothing at once (TRUNCATE), so that it does not stay on disk until the next write.
 */
const checkpointDraft = (state: State) =>
  Effect.flatMap(Files.fileSize(Files.walPath(state.paths.draft)), (size) =>
    on(
      state.draft,
      Effect.flatMap(SqlClient.SqlClient, (sql) =>
        Effect.zipRight(
          sql.unsafe(`PRAGMA journal_size_limit = ${WalFrame.walSize(state.maxWalFrames)}`).raw,
          sql.unsafe<{ busy: number }>(
            `PRAGMA wal_checkpoint(${size > WalFrame.walSize(2 * state.maxWalFrames) ? "TRUNCATE" : "RESTART"})`
          )
        ))
    )).pipe(
    Effect.mapError((cause) =>
      new SyncError.StorageError({ reason: "Files", message: `cannot fold the WAL of ${state.paths.draft}`, path: state.paths.draft, cause })
    ),
    Effect.flatMap((rows) =>
      rows[0]?.busy === 0 ? Effect.void : Effect.fail(
        new SyncError.StorageError({ reason: "Files", message: `folding the WAL of ${state.paths.draft} was blocked`, path: state.paths.draft })
      )
    )
  )

/**
 * Records, flagged, that Draft's WAL of `frames` is being folded into its file: the pages they write (after
 * the copy transaction, if the WAL starts with one) become pages where Draft's file can differ, with a
 * margin of pages after them (see `DraftPages.withGrowth`). Nothing is written when the record already
 * holds every page (a fold of pages already recorded needs no flag: whatever a crash leaves, the record is
 * right); false then.
 */
const recordDraftFold = (state: State, frames: ReadonlyArray<PageCopy.FrameHeader>) =>
  Effect.gen(function*() {
    const { paths } = state
    const now = yield* SynchronizedRef.get(state.metadata)
    // Only a record the metadata file holds as well (nothing staged) can stand for the fold.
    if (now.draftPages !== undefined && !now.draftFoldInProgress && !(yield* Ref.get(state.staged))) {
      const local = PageCopy.pageNumbers(frames.slice(now.draftPages.copy?.frames ?? 0))
      if (!DraftPages.foldChanges(now.draftPages, local)) return false
    }
    // Without a record of where Draft's file differs, none is made up: every page of it may.
    const filePages = now.draftPages !== undefined
      ? 0
      : yield* Files.attempt(paths.draft, "cannot read", (fs) =>
        frames.reduce((max, f) => Math.max(max, f.commitSize), PageCopy.headerPages(fs, paths.draft)))
    yield* updateMetadata(state, (m) => {
      const t = DraftPages.orUnknown(m.draftPages, syncedFileAt(m), filePages)
      const local = PageCopy.pageNumbers(frames.slice(t.copy?.frames ?? 0))
      return {
        ...m,
        draftPages: DraftPages.draftFolded(t, DraftPages.withGrowth(local, state.maxWalFrames), syncedFileAt(m)),
        draftFoldInProgress: true
      }
    })
    return true
  })

/**
 * The checkpoint of a recorded Draft fold, then its flag cleared in memory only: the cleared flag reaches
 * the disk with the next metadata write, which saves a write (and its fsyncs) per fold. A restart that
 * finds the flag still set cannot tell whether the checkpoint ran, so `finishDraftFold` records whatever
 * Draft's WAL then holds before checkpointing it: right either way, the record only grows.
 */
const checkpointRecorded = (state: State) =>
  Effect.zipRight(
    // A copy's cleared flag may still be only in memory (`stageMetadata`): written first, since the
    // checkpoint empties Draft's WAL, which could then look like the WAL the flagged copy was prepared over.
    Effect.zipRight(persistStaged(state), checkpointDraft(state)),
    SynchronizedRef.update(state.metadata, (m) => ({ ...m, draftFoldInProgress: false }))
  )

/**
 * A Draft fold flagged in metadata whose checkpoint did not run, failed, or ran without its flag cleared on
 * disk: the pages of every frame Draft's WAL holds now are recorded as folded too (frames written since
 * the flag, if the checkpoint ran or failed), then the checkpoint runs.
 */
export const finishDraftFold = (state: State) =>
  Effect.gen(function*() {
    if (!(yield* SynchronizedRef.get(state.metadata)).draftFoldInProgress) return
    const wal = yield* PageCopy.readFrameHeaders(state.paths.draft)
    if (wal.frames.length > 0) yield* recordDraftFold(state, wal.frames)
    yield* checkpointRecorded(state)
  })

/**
 * Folds Draft's WAL into its file when it holds more than `maxWalFrames` frames (`force`: whatever it
 * holds). The caller holds every write permit: no transaction is under way in Draft.
 */
export const foldDraft = Effect.fn("Engine.foldDraft")(function*(state: State, force: boolean) {
  const { paths } = state
  yield* finishDraftFold(state)
  const copyFrames = (yield* SynchronizedRef.get(state.metadata)).draftPages?.copy?.frames ?? 0
  // SQLite's wal-index, while it can be read and is the WAL's: how many frames the WAL holds, how many a
  // fold copied already (they stay in the file until the next write starts it over), and the page of each
  // frame, in a few KB rather than from every frame of the WAL. A WAL shorter than the metadata's copy is
  // looked at below.
  const index = yield* Files.attempt(paths.draft, "cannot read", (fs) => WalIndex.readIndex(fs, paths.draft))
  if (index !== undefined && index.frames >= copyFrames) {
    const unfolded = index.frames - index.backfilled
    if (unfolded === 0 || (!force && unfolded <= state.maxWalFrames)) return
    const frames = index.pages.map((pgno, i) => ({ pgno, commitSize: i === index.pages.length - 1 ? index.dbPages : 0 }))
    yield* recordDraftFold(state, frames)
    yield* state.step("draftFold:flagged")
    return yield* checkpointRecorded(state)
  }
  // Frame headers only: the pages the frames write and where they commit, not the pages themselves (a fold
  // then costs about what SQLite's checkpoint does). Their page set can only be larger than the committed
  // frames' (see readFrameHeaders), which costs a copy of a page, never a missed one.
  const wal = yield* PageCopy.readFrameHeaders(paths.draft)
  if (wal.committed < copyFrames) {
    // Draft's WAL is not the one the metadata describes (SQLite folded it when a close could not keep it):
    // where Draft's file differs from Synced is unknown, so the next copy writes every page.
    const pages = yield* Files.attempt(paths.draft, "cannot read", (fs) =>
      wal.frames.reduce(
        (max, f) => Math.max(max, f.commitSize),
        Math.max(PageCopy.headerPages(fs, paths.draft), PageCopy.headerPages(fs, paths.synced))
      ))
    yield* Effect.logWarning(`the WAL of ${paths.draft} holds ${wal.committed} frames, its copy wrote ${copyFrames}`)
    yield* updateMetadata(state, (m) => ({ ...m, draftPages: DraftPages.unknown(syncedFileAt(m), pages) }))
  }
  if (wal.committed === 0 || (!force && wal.committed <= state.maxWalFrames)) return
  yield* recordDraftFold(state, wal.frames)
  yield* state.step("draftFold:flagged")
  yield* checkpointRecorded(state)
})

/**
 * After a local write: folds Draft's WAL if it outgrew its bound, no write is in flight and no push or pull
 * runs (a pull writes its copy's pages into Draft's file; the next write or sync folds instead).
 */
export const maybeFoldDraft = (state: State) =>
  Effect.gen(function*() {
    if (!(yield* draftOutgrown(state))) return
    yield* state.syncLock.withPermitsIfAvailable(1)(foldDraftIfIdle(state))
  }).pipe(Effect.catchAll(cannotFold))

/**
 * `maybeFoldDraft` for a caller that has just read Draft's wal-index and found it past its bound: the index
 * is not read a second time for that (`foldDraft` reads it once more, under the locks, before it folds).
 */
export const foldOutgrownDraft = (state: State) =>
  state.syncLock.withPermitsIfAvailable(1)(foldDraftIfIdle(state)).pipe(Effect.catchAll(cannotFold))

const cannotFold = (error: SyncError.StorageError) => Effect.logWarning("cannot fold the WAL of the draft copy", error)

/**
 * Whether Draft's WAL holds more than `maxWalFrames` frames not yet folded: by SQLite's wal-index
 * (`unfolded`, when it could be read), else by the WAL file's size (which counts frames a fold copied and no
 * write has overwritten yet; read only then).
 */
export const outgrownBound = (maxWalFrames: number, unfolded: number | undefined, walBytes: () => number): boolean =>
  unfolded !== undefined ? unfolded > maxWalFrames : walBytes() > WalFrame.walSize(maxWalFrames)

/** `outgrownBound` of Draft's WAL, read through the engine's file service. */
export const draftOutgrown = (state: State): Effect.Effect<boolean, SyncError.StorageError> =>
  Files.attempt(state.paths.draft, "cannot read", (fs) => {
    const wal = Files.walPath(state.paths.draft)
    return outgrownBound(
      state.maxWalFrames,
      WalIndex.unfoldedFrames(fs, state.paths.draft),
      () => (fs.existsSync(wal) ? fs.sizeSync(wal) : 0)
    )
  })

/** Folds Draft's WAL past its bound if no write is in flight (the caller holds the sync lock). */
export const foldDraftIfIdle = (state: State) => Gates.ifNoWrites(state.gates, foldDraft(state, false))
