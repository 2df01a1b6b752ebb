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
import { finishCopyFiles, flaggedCopyOutcome } from "./copy.js"
import * as DraftPages from "./draftPages.js"
import { finishFoldFiles } from "./fold.js"
import { finishRollFiles } from "./roll.js"
import { type Opening, syncedFileAt, walFrames } from "./state.js"

/** Finishes what a crash interrupted, and cuts Synced back to its synced frame (invariants 1, 3). */
export const recover = Effect.fn("Engine.recover")(function*(opening: Opening, stored: SyncMetadata.Metadata) {
  const { paths } = opening
  let metadata = stored
  if (metadata.rollInProgress) {
    yield* finishRollFiles(paths)
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
    const before = metadata.draftWalBeforeCopy
    const walUnchanged = before === undefined
      ? undefined
      : PageCopy.sameWal(before, yield* PageCopy.walIdentity(paths.draft))
    const outcome = flaggedCopyOutcome(yield* Files.exists(paths.draftWalNext), walUnchanged)
    const { draftWalBeforeCopy: _, ...rest } = metadata
    metadata = { ...rest, copyInProgress: false }
    if (outcome === "finish") {
      yield* finishCopyFiles(paths)
    } else if (outcome === "drop") {
      // Draft is the old one (or took writes the copy would lose): the copy is treated as not done, and
      // where Draft differs from Synced as unknown: the next pull replays and copies every page of Draft.
      yield* Files.remove(paths.draftWalNext)
      const { draftBase: __, draftPages: ___, ...kept } = metadata
      metadata = kept
    }
  } else {
    yield* Files.remove(paths.draftWalNext)
  }
  // The copy file of an earlier version of the engine, which materialized whole copies.
  yield* Files.remove(paths.draftNew)
  // A metadata write the crash cut short before its rename: the record in place is the one recovery uses.
  yield* Files.removeTemps(paths.info)
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
