/**
 * Opening after a crash: finish the roll or the copy the metadata flags (or drop its half-made file), and
 * cut Synced back to its synced frame (invariants 1 and 3).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as SyncMetadata from "../../SyncMetadata.js"
import * as Files from "../sqlite/files.js"
import { finishCopyFiles } from "./copy.js"
import { finishRollFiles } from "./roll.js"
import type { Opening } from "./state.js"

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
  if (metadata.copyInProgress) {
    if (yield* Files.exists(paths.draftNew)) yield* finishCopyFiles(paths)
    metadata = { ...metadata, copyInProgress: false }
  } else {
    yield* Files.remove(paths.draftNew)
  }
  metadata = { ...metadata, activeCopy: "draft" }
  const wal = yield* Files.readWal(paths.synced)
  const frames = Option.match(wal, { onNone: () => 0, onSome: (w) => w.frames.length })
  if (frames < metadata.syncedFrame) {
    // Cannot happen with fsync honoured; re-pulling from what is there is still correct.
    yield* Effect.logWarning(`synced WAL holds ${frames} frames, metadata says ${metadata.syncedFrame}`)
    metadata = { ...metadata, syncedFrame: frames }
  }
  yield* Files.truncateWal(paths.synced, metadata.syncedFrame)
  if (metadata !== stored) yield* opening.metadataStore.write(metadata)
  return metadata
})
