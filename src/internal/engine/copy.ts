/**
 * Step 2c: Draft becomes equal to Synced (the remote's frames + the pending changes just replayed) by
 * rewriting only the pages where the two can differ (`DraftPages.copyPages`), taken from Synced, as one
 * transaction in a fresh WAL `<path>-draft-wal.next`: fsynced, flagged in the metadata, renamed over
 * Draft's WAL while Draft is closed, so that SQLite's WAL recovery makes the switch atomic (invariant 3);
 * reads go to Synced meanwhile (invariant 4). Its cost follows the changed pages, not the database size.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeCapture from "../../ChangeCapture.js"
import * as Files from "../sqlite/files.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import * as DraftPages from "./draftPages.js"
import { sqlStatementError } from "./errors.js"
import * as Gates from "./gates.js"
import { on, type Paths, type State, syncedFileAt, updateMetadata, walFrames } from "./state.js"
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

/** The file steps of a flagged copy: the fresh WAL replaces Draft's (Draft closed); SQLite recovers it on open. */
export const finishCopyFiles = (paths: Paths) =>
  Effect.gen(function*() {
    yield* Files.remove(Files.shmPath(paths.draft))
    yield* Files.rename(paths.draftWalNext, Files.walPath(paths.draft))
  })

/** Whether Draft was last copied from Synced as it stands: a pull that brought nothing needs no copy. */
export const draftIsCurrent = (state: State) =>
  Effect.map(SynchronizedRef.get(state.metadata), (m) =>
    m.draftBase !== undefined && m.draftBase.generation === m.generation && m.draftBase.frame === m.syncedFrame)

/** Closes Draft and renames the fresh WAL over its own; reads are on Synced meanwhile. */
const swapDraft = (state: State) =>
  Effect.gen(function*() {
    yield* state.draft.close
    yield* state.step("copy:draftClosed")
    yield* finishCopyFiles(state.paths)
    yield* state.step("copy:renamed")
    yield* updateMetadata(state, (m) => ({ ...m, copyInProgress: false, activeCopy: "draft" }))
  })

/** The frames of the copy transaction: Draft's pages that can differ, as Synced (with the replay) has them. */
const copyTransaction = (state: State) =>
  Effect.gen(function*() {
    const { paths } = state
    const m = yield* SynchronizedRef.get(state.metadata)
    const prefix = yield* prefixAtSyncedFrame(state)
    const synced = yield* Files.readWalFrames(paths.synced, walFrames(m))
    const replay = yield* Files.readWalTail(paths.synced, prefix)
    const all = [...synced, ...replay.frames]
    const targetPages = all.length > 0
      ? all[all.length - 1].commitSize
      : yield* Files.attempt(paths.synced, "cannot read", (fs) => PageCopy.headerPages(fs, paths.synced))
    const tracking = m.draftPages ?? DraftPages.fresh(syncedFileAt(m))
    const pages = DraftPages.copyPages(tracking, PageCopy.pageNumbers(all), targetPages)
    const frames = yield* PageCopy.pagesAsTransaction(paths.synced, all, pages, targetPages)
    return { frames, replayPages: PageCopy.pageNumbers(replay.frames) }
  })

/**
 * Step 2c: Draft's pages that can differ from Synced, in a fresh WAL renamed over Draft's. The caller holds
 * every write permit. Returns the frames written.
 */
export const copySyncedOverDraft = Effect.fn("Engine.copySyncedOverDraft")(
  function*(state: State) {
    const { paths } = state
    const { frames, replayPages } = yield* copyTransaction(state)
    yield* PageCopy.writeWalFile(paths.draftWalNext, frames)
    yield* state.step("copy:walWritten")
    const previous = yield* SynchronizedRef.get(state.metadata)
    yield* updateMetadata(state, (m) => {
      const at = { generation: m.generation, frame: m.syncedFrame }
      const tracking = m.draftPages ?? DraftPages.fresh(syncedFileAt(m))
      return {
        ...m,
        copyInProgress: true,
        activeCopy: "synced",
        draftBase: at,
        draftPages: DraftPages.copied(tracking, at, frames.length, replayPages)
      }
    })
    yield* state.step("copy:flagged")
    yield* Gates.switchReads(state.gates, "synced")
    // Let reads waiting at the door run on Synced before Draft closes (nothing here need wait for I/O).
    yield* Effect.yieldNow()
    yield* swapDraft(state).pipe(
      Effect.tapError(() =>
        Effect.ignore(Effect.gen(function*() {
          if (!(yield* Files.exists(paths.draftWalNext))) {
            // Renamed (the failure came after it): Draft has the copy, as the metadata says.
            yield* updateMetadata(state, (m) => ({ ...m, copyInProgress: false, activeCopy: "draft" }))
            return
          }
          // Not renamed: the old Draft and its WAL are whole (closing keeps the WAL); forget the copy.
          yield* Files.remove(paths.draftWalNext)
          yield* updateMetadata(state, (m) => {
            const { draftBase: _, draftPages: __, ...rest } = m
            return {
              ...rest,
              copyInProgress: false,
              activeCopy: "draft",
              ...(previous.draftBase ? { draftBase: previous.draftBase } : {}),
              ...(previous.draftPages ? { draftPages: previous.draftPages } : {})
            }
          })
        }))
      ),
      Effect.exit,
      // Whatever happened, Draft is opened again (capture reinstalled) before reads move back to it.
      Effect.flatMap((exit) => Effect.zipRight(openDraft(state), exit)),
      Effect.ensuring(Effect.ignore(state.draft.open)),
      Effect.ensuring(Gates.switchReads(state.gates, "draft"))
    )
    return frames.length
  },
  (effect, state) => Effect.tapError(effect, () => Effect.ignore(Files.remove(state.paths.draftWalNext)))
)
