/**
 * Opening after a crash: finish the roll, the fold or the copy the metadata flags (or drop its half-made
 * file), and cut Synced back to its synced frame (invariants 1 and 3).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as SyncMetadata from "../../SyncMetadata.js"
import * as Files from "../sqlite/files.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import { finishCopyFiles } from "./copy.js"
import * as DraftPages from "./draftPages.js"
import { finishFoldFiles } from "./fold.js"
import { finishRollFiles } from "./roll.js"
import { type Opening, syncedFileAt, walFrames } from "./state.js"

/** Finishes what a crash interrupted, and cuts Synced back to its synced frame (invariants 1, 3). */
export const recover = Effect.fn("Engine.recover")(function*(opening: Opening, stored: SyncMetadata.Metadata) {
  const { paths } = opening
  let metadata = stored
  if (metadata.rollInProgress) {
    if (yield* Files.exists(paths.syncedNext)) yield* finishRollFiles(paths)
    metadata = { ...metadata, rollInProgress: false }
  } else {
    yield* Files.remove(paths.syncedNext)
  }
  if (metadata.foldInProgress) {
    yield* finishFoldFiles(paths, metadata)
    metadata = { ...metadata, foldInProgress: false }
  } else {
    yield* Files.remove(paths.syncedWalNext)
  }
  if (metadata.copyInProgress) {
    if (yield* Files.exists(paths.draftWalNext)) {
      yield* finishCopyFiles(paths)
      metadata = { ...metadata, copyInProgress: false }
    } else {
      // Flagged but no fresh WAL: either it was renamed (Draft has the copy) or it was dropped when the copy
      // failed after its flag reached the disk (Draft is the old one). Which cannot be told apart, so the
      // copy is treated as not done: the next pull replays and copies again, over every page of Draft.
      const { draftBase: _, draftPages: __, ...rest } = metadata
      metadata = { ...rest, copyInProgress: false }
    }
  } else {
    yield* Files.remove(paths.draftWalNext)
  }
  // The copy file of an earlier version of the engine, which materialized whole copies.
  yield* Files.remove(paths.draftNew)
  metadata = { ...metadata, activeCopy: "draft" }
  if (metadata.draftPages === undefined) {
    // Metadata of an earlier version: where Draft differs from Synced is unknown; the next copy writes it all.
    const pages = yield* Files.attempt(paths.draft, "cannot read", (fs) =>
      Math.max(PageCopy.headerPages(fs, paths.draft), PageCopy.headerPages(fs, paths.synced)))
    metadata = { ...metadata, draftPages: DraftPages.unknown(syncedFileAt(metadata), pages) }
  }
  const wal = yield* Files.readWal(paths.synced)
  const frames = Option.match(wal, { onNone: () => 0, onSome: (w) => w.frames.length })
  if (frames < walFrames(metadata)) {
    // Cannot happen with fsync honoured; re-pulling from what is there is still correct.
    yield* Effect.logWarning(`synced WAL holds ${frames} frames, metadata says ${walFrames(metadata)}`)
    metadata = { ...metadata, syncedFrame: (metadata.foldedFrame ?? 0) + frames }
  }
  yield* Files.truncateWal(paths.synced, walFrames(metadata))
  if (metadata !== stored) yield* opening.metadataStore.write(metadata)
  return metadata
})
