/**
 * Generation rolls: following the remote to generation G+1, whose base is G's base with all of G's frames
 * (a TRUNCATE checkpoint). Synced becomes it in place: its WAL's frames are written into its file (the
 * metadata counting them first), the roll is flagged, then the WAL goes. A roll costs the frames the WAL
 * holds, not a copy of the database.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as Files from "../sqlite/files.js"
import * as DraftPages from "./draftPages.js"
import { applyAllSynced } from "./fold.js"
import { type Paths, persistStaged, type State, updateMetadata, walFrames } from "./state.js"
import { prefixAtSyncedFrame } from "./syncedWal.js"

/**
 * The file steps of a flagged roll: Synced's WAL (the old generation's frames, in its file already) goes,
 * and a next base made beside Synced (`<path>-synced.next`, a re-bootstrap's) replaces it. Idempotent:
 * recovery and the next pull redo it.
 */
export const finishRollFiles = (paths: Paths) =>
  Effect.gen(function*() {
    yield* Files.remove(Files.walPath(paths.synced))
    yield* Files.remove(Files.shmPath(paths.synced))
    if (yield* Files.exists(paths.syncedNext)) yield* Files.rename(paths.syncedNext, paths.synced)
  })

/** Follows the remote to `generation + 1`: the new base = old base + all its frames, made in Synced's file. */
export const rollSynced = Effect.fn("Engine.rollSynced")(function*(state: State, next: number) {
  const m = yield* SynchronizedRef.get(state.metadata)
  yield* prefixAtSyncedFrame(state) // validates the synced frames once if this process has not yet
  // The frames go into the file, past recovery's reach: the metadata file must count them first.
  yield* persistStaged(state)
  // A base left beside Synced by a re-bootstrap that stopped before its flag: once this roll is flagged, its
  // file steps would take it for theirs and rename it over the base this roll makes.
  yield* Files.remove(state.paths.syncedNext)
  yield* state.synced.close
  yield* Ref.set(state.syncedPrefix, undefined)
  const pages = yield* applyAllSynced(state, walFrames(m))
  yield* state.step("roll:materialized")
  const at = { generation: next, frame: 0 }
  yield* updateMetadata(state, (m) => ({
    ...m,
    generation: next,
    syncedFrame: 0,
    foldedFrame: 0,
    rollInProgress: true,
    // Synced's file moves past every frame of the old generation: Draft may differ on their pages.
    ...(m.draftPages ? { draftPages: DraftPages.syncedFolded(m.draftPages, at, pages) } : {})
  }))
  yield* state.step("roll:flagged")
  yield* finishRollFiles(state.paths)
  yield* updateMetadata(state, (m) => ({ ...m, rollInProgress: false }))
})

/**
 * A roll flagged in metadata (generation + 1, frame 0) whose file steps then failed leaves the old
 * generation's WAL beside the new base (or, for a base made beside Synced, the old base in place): finish it
 * as open would, before anything reads or extends Synced. Otherwise the next pull would build on files that
 * are not the new generation's base (and a push would send pages made on them).
 */
export const finishFlaggedRoll = (state: State) =>
  Effect.gen(function*() {
    if (!(yield* SynchronizedRef.get(state.metadata)).rollInProgress) return
    yield* state.synced.close
    yield* Ref.set(state.syncedPrefix, undefined)
    yield* finishRollFiles(state.paths)
    yield* updateMetadata(state, (m) => ({ ...m, rollInProgress: false }))
  }).pipe(Effect.ensuring(Effect.ignore(state.synced.open)))
