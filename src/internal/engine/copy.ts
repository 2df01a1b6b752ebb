/**
 * Step 2c: Draft becomes a copy of Synced (the remote's frames + the pending changes just replayed).
 * Materialized into `<path>-draft.new`, fsynced, flagged in the metadata, renamed over Draft
 * (invariant 3); reads go to Synced meanwhile (invariant 4).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeCapture from "../../ChangeCapture.js"
import * as Files from "../sqlite/files.js"
import { sqlStatementError } from "./errors.js"
import * as Gates from "./gates.js"
import { on, type Paths, type State, updateMetadata } from "./state.js"
import { prefixAtSyncedFrame } from "./syncedWal.js"

/** Opens Draft with capture installed and change ids above everything the remote has (invariant 6). */
export const openDraft = (state: State) =>
  Effect.gen(function*() {
    yield* state.draft.open
    const floor = (yield* SynchronizedRef.get(state.metadata)).lastPushedChangeId
    yield* on(
      state.draft,
      Effect.zipRight(ChangeCapture.install, ChangeCapture.ensureChangeIdsAbove(floor))
    ).pipe(Effect.mapError(sqlStatementError("Capture")))
  })

/** The file steps of a flagged copy: `<path>-draft.new` replaces Draft (and its WAL). */
export const finishCopyFiles = (paths: Paths) =>
  Effect.gen(function*() {
    yield* Files.remove(Files.walPath(paths.draft))
    yield* Files.remove(Files.shmPath(paths.draft))
    yield* Files.rename(paths.draftNew, paths.draft)
  })

/** Whether Draft was last copied from Synced as it stands: a pull that brought nothing needs no copy. */
export const draftIsCurrent = (state: State) =>
  Effect.map(SynchronizedRef.get(state.metadata), (m) =>
    m.draftBase !== undefined && m.draftBase.generation === m.generation && m.draftBase.frame === m.syncedFrame)

/**
 * Step 2c, first part, while writes still flow: Synced at the synced frame (base + the remote's
 * frames, no local replay yet) materialized into `<path>-draft.new`. The part under the write gate then
 * only adds the frames of step 2b, so writes wait for work that follows the pending changes, not the
 * database size.
 */
export const prepareDraftCopy = Effect.fn("Engine.prepareDraftCopy")(function*(state: State) {
  const m = yield* SynchronizedRef.get(state.metadata)
  const prefix = yield* prefixAtSyncedFrame(state)
  const frames = yield* Files.readWalFrames(state.paths.synced, m.syncedFrame)
  yield* Files.materialize(state.paths.synced, frames, state.paths.draftNew)
  return prefix
})

/** Closes Draft and renames the copy over it; reads are on Synced meanwhile. */
const swapDraft = (state: State) =>
  Effect.gen(function*() {
    yield* state.draft.close
    yield* state.step("copy:draftClosed")
    yield* finishCopyFiles(state.paths)
    yield* state.step("copy:renamed")
    yield* updateMetadata(state, (m) => ({ ...m, copyInProgress: false, activeCopy: "draft" }))
  })

/**
 * Step 2c: replace Draft by a copy of Synced (remote frames + the pending changes just replayed).
 * Materialized into `<path>-draft.new`, fsynced, flagged in metadata, renamed over Draft. Reads go to
 * Synced meanwhile; the caller holds every write permit.
 */
export const copySyncedOverDraft = Effect.fn("Engine.copySyncedOverDraft")(
  function*(state: State, prefix: Files.WalState | undefined) {
    const { paths } = state
    const m = yield* SynchronizedRef.get(state.metadata)
    const tail = yield* Files.readWalTail(paths.synced, prefix)
    yield* Files.applyInPlace(paths.draftNew, tail.frames)
    yield* state.step("copy:materialized")
    const previousBase = m.draftBase
    yield* updateMetadata(state, (m) => ({
      ...m,
      copyInProgress: true,
      activeCopy: "synced",
      draftBase: { generation: m.generation, frame: m.syncedFrame }
    }))
    yield* state.step("copy:flagged")
    yield* Gates.switchReads(state.gates, "synced")
    yield* swapDraft(state).pipe(
      Effect.tapError(() =>
        // Not renamed: the old Draft is whole (closing it checkpointed its WAL); forget the copy.
        Effect.ignore(Effect.all([
          Files.remove(paths.draftNew),
          updateMetadata(state, (m) => {
            const { draftBase: _, ...rest } = m
            return { ...rest, copyInProgress: false, activeCopy: "draft", ...(previousBase ? { draftBase: previousBase } : {}) }
          })
        ]))
      ),
      Effect.exit,
      // Whatever happened, Draft is opened again (capture reinstalled) before reads move back to it.
      Effect.flatMap((exit) => Effect.zipRight(openDraft(state), exit)),
      Effect.ensuring(Effect.ignore(state.draft.open)),
      Effect.ensuring(Gates.switchReads(state.gates, "draft"))
    )
  },
  (effect, state) => Effect.tapError(effect, () => Effect.ignore(Files.remove(state.paths.draftNew)))
)
