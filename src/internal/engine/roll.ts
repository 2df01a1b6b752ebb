/**
 * Generation rolls: following the remote to generation G+1, whose base is G's base with all of G's frames
 * (a TRUNCATE checkpoint), made beside Synced and renamed over it once flagged in the metadata.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as Files from "../sqlite/files.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import * as DraftPages from "./draftPages.js"
import { type Paths, type State, updateMetadata, walFrames } from "./state.js"
import { prefixAtSyncedFrame } from "./syncedWal.js"

/** The file steps of a flagged roll: `<path>-synced.next` replaces Synced (and its WAL). */
export const finishRollFiles = (paths: Paths) =>
  Effect.gen(function*() {
    yield* Files.remove(Files.walPath(paths.synced))
    yield* Files.remove(Files.shmPath(paths.synced))
    yield* Files.rename(paths.syncedNext, paths.synced)
  })

/** Follows the remote to `generation + 1`: the new base = old base + all its frames (a TRUNCATE checkpoint). */
export const rollSynced = Effect.fn("Engine.rollSynced")(function*(state: State, next: number) {
  const m = yield* SynchronizedRef.get(state.metadata)
  yield* prefixAtSyncedFrame(state) // validates the synced frames once if this process has not yet
  const frames = yield* Files.readWalFrames(state.paths.synced, walFrames(m))
  yield* state.synced.close
  yield* Ref.set(state.syncedPrefix, undefined)
  yield* Files.materialize(state.paths.synced, frames, state.paths.syncedNext)
  yield* state.step("roll:materialized")
  const at = { generation: next, frame: 0 }
  yield* updateMetadata(state, (m) => ({
    ...m,
    generation: next,
    syncedFrame: 0,
    foldedFrame: 0,
    rollInProgress: true,
    // Synced's file moves past every frame of the old generation: Draft may differ on their pages.
    ...(m.draftPages ? { draftPages: DraftPages.syncedFolded(m.draftPages, at, PageCopy.pageNumbers(frames)) } : {})
  }))
  yield* state.step("roll:flagged")
  yield* finishRollFiles(state.paths)
  yield* updateMetadata(state, (m) => ({ ...m, rollInProgress: false }))
})

/**
 * A roll flagged in metadata (generation + 1, frame 0) whose file steps then failed leaves Synced on the
 * old generation's files: finish it as open would, before anything reads or extends Synced. Otherwise
 * the next pull appends the new generation's frames to the old base (and a push would send pages made
 * on it).
 */
export const finishFlaggedRoll = (state: State) =>
  Effect.gen(function*() {
    if (!(yield* SynchronizedRef.get(state.metadata)).rollInProgress) return
    yield* state.synced.close
    yield* Ref.set(state.syncedPrefix, undefined)
    if (yield* Files.exists(state.paths.syncedNext)) yield* finishRollFiles(state.paths)
    yield* updateMetadata(state, (m) => ({ ...m, rollInProgress: false }))
  }).pipe(Effect.ensuring(Effect.ignore(state.synced.open)))
