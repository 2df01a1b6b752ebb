/**
 * Steps 2b and 2c: Draft becomes equal to Synced (the remote's frames + the pending changes replayed onto
 * it) by rewriting only the pages where the two can differ (`DraftPages.copyPages`), taken from Synced, as
 * one transaction in a fresh WAL `<path>-draft-wal.next` that replaces Draft's WAL while Draft is closed,
 * so that SQLite's WAL recovery makes the switch atomic (invariant 3). Its cost follows the changed pages.
 *
 * Everything that waits for the disk happens before writes are held: the replay (reading Draft's change
 * log one page at a time, each read under the write gate), the fresh WAL (fsynced) and the metadata that
 * flags it, with Draft's WAL as it stood when the replay began. Under the write gate only: no write
 * started since (else the copy is dropped and made again), Draft closed, the fresh WAL renamed over its
 * WAL, Draft reopened; reads go to Synced meanwhile (invariant 4). After the gate: the rename made
 * durable, the copy's pages written into Draft's file too (its WAL holds them, so nothing changes for
 * SQLite), and one metadata write that clears the flag and records the file's new position.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import type * as SyncMetadata from "../../SyncMetadata.js"
import type * as WalFrame from "../../WalFrame.js"
import * as Capture from "../capture/capture.js"
import * as Changes from "../live/changes.js"
import * as Files from "../sqlite/files.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import * as DraftPages from "./draftPages.js"
import { sqlStatementError } from "./errors.js"
import * as Fold from "./fold.js"
import * as Gates from "./gates.js"
import * as Replay from "./replay.js"
import { on, owesSync, type Paths, stageMetadata, type State, syncedFileAt, updateMetadata } from "./state.js"
import { prefixAtSyncedFrame, resetSyncedWal, syncedPageIndex } from "./syncedWal.js"

/** Opens Draft with capture installed and change ids above everything the remote has (invariant 6), in one transaction. */
export const openDraft = (state: State) =>
  Effect.gen(function*() {
    yield* state.draft.open
    const floor = (yield* SynchronizedRef.get(state.metadata)).lastPushedChangeId
    yield* on(
      state.draft,
      Capture.installAbove(floor)
    ).pipe(Effect.mapError(sqlStatementError("Capture")))
  })

/** The file steps of a flagged copy: the fresh WAL replaces Draft's (Draft closed); SQLite recovers it on open. */
export const finishCopyFiles = (paths: Paths) =>
  Effect.gen(function*() {
    yield* Files.remove(Files.shmPath(paths.draft))
    yield* Files.rename(paths.draftWalNext, Files.walPath(paths.draft))
  })

/**
 * What open does with a copy the metadata flags, from whether its fresh WAL is still there and whether
 * Draft's WAL is still the one the copy was prepared over (`undefined`: metadata that did not record it).
 * - `finish`: rename the fresh WAL over Draft's (nothing was written to Draft since the copy was prepared);
 * - `done`: the rename happened (the fresh WAL is gone and Draft's WAL is another one);
 * - `drop`: the copy did not happen and will not (remove the fresh WAL; where Draft differs from Synced is
 *   no longer known, so the next pull writes every page).
 */
export const flaggedCopyOutcome = (nextExists: boolean, walUnchanged: boolean | undefined): "finish" | "done" | "drop" =>
  nextExists
    ? (walUnchanged === false ? "drop" : "finish")
    : (walUnchanged === false ? "done" : "drop")

/** Whether Draft was last copied from Synced as it stands: a pull that brought nothing needs no copy. */
export const draftIsCurrent = (state: State) =>
  Effect.map(SynchronizedRef.get(state.metadata), (m) =>
    m.draftBase !== undefined && m.draftBase.generation === m.generation && m.draftBase.frame === m.syncedFrame)

/** Above this many pages from the synced frames, a copy reads them all in one read. */
const FRAMES_READ_ONE_BY_ONE = 32

/** The pages where Draft can differ from Synced now, as Synced (with the replay) has them, as one transaction. */
const copyTransaction = (state: State) =>
  Effect.gen(function*() {
    const { paths } = state
    const m = yield* SynchronizedRef.get(state.metadata)
    const prefix = yield* prefixAtSyncedFrame(state)
    const index = yield* syncedPageIndex(state, m, prefix)
    const replay = yield* Files.readWalTail(paths.synced, prefix)
    const targetPages = replay.frames.length > 0
      ? replay.frames[replay.frames.length - 1].commitSize
      : index.frames > 0
      ? index.lastCommitSize
      : yield* Files.attempt(paths.synced, "cannot read", (fs) => PageCopy.headerPages(fs, paths.synced))
    // No record of where Draft differs (lost, or dropped with a copy that did not happen): every page.
    const tracking = m.draftPages ?? DraftPages.orUnknown(
      undefined,
      syncedFileAt(m),
      Math.max(targetPages, yield* Files.attempt(paths.draft, "cannot read", (fs) => PageCopy.headerPages(fs, paths.draft)))
    )
    const pages = DraftPages.copyPages(tracking, [...index.newest.keys(), ...PageCopy.pageNumbers(replay.frames)], targetPages)
    // The newest copy of each page to copy among the synced frames (the replay's frames come after them):
    // read one by one when they are few, else the synced frames are read at once.
    const at = pages.flatMap((pgno) => index.newest.get(pgno) ?? [])
    const synced: Array<WalFrame.Frame> = []
    if (at.length > FRAMES_READ_ONE_BY_ONE) {
      const all = yield* Files.readWalFrames(paths.synced, index.frames)
      for (const i of at) synced.push(all[i])
    } else {
      for (const i of at) synced.push(...(yield* Files.readWalFrames(paths.synced, 1, i)))
    }
    const frames = yield* PageCopy.pagesAsTransaction(paths.synced, [...synced, ...replay.frames], pages, targetPages)
    return { frames, tracking, replayPages: PageCopy.pageNumbers(replay.frames) }
  })

/** A copy made and flagged, waiting for the swap; `previous`: the metadata to restore if it is dropped. */
interface Prepared {
  readonly frames: ReadonlyArray<WalFrame.Frame>
  readonly previous: SyncMetadata.Metadata
}

/**
 * 2b and the making of 2c: the replay onto Synced, the fresh WAL (fsynced), then the metadata flag naming
 * Draft's WAL as it stood (`before`) when the replay began.
 */
const prepare = (
  state: State,
  progress: number,
  before: SyncMetadata.WalIdentity,
  readDraft: Replay.ReadDraft,
  replayed: Effect.Effect<void> = Effect.void
) =>
  Effect.gen(function*() {
    const { paths } = state
    yield* Replay.replayDraftOntoSynced(state, "pull", progress, readDraft) /* 2b */
    yield* replayed
    const { frames, replayPages, tracking } = yield* copyTransaction(state)
    // Its fsync goes with the flag's metadata write (with Synced's owed frames and the record's own, all
    // at once, off the event loop), which puts the flag in place only once they are all done.
    yield* PageCopy.writeWalFile(paths.draftWalNext, frames, { sync: false })
    yield* owesSync(state, paths.draftWalNext)
    yield* state.step("copy:walWritten")
    const previous = yield* SynchronizedRef.get(state.metadata)
    yield* updateMetadata(state, (m) => {
      const at = { generation: m.generation, frame: m.syncedFrame }
      return {
        ...m,
        copyInProgress: true,
        draftWalBeforeCopy: before,
        draftBase: at,
        draftPages: DraftPages.copied(tracking, at, frames.length, replayPages)
      }
    })
    yield* state.step("copy:flagged")
    return { frames, previous } satisfies Prepared
  }).pipe(Effect.withSpan("Engine.prepareCopy"))

/** A prepared copy that will not happen: the metadata forgets it first, then its fresh WAL goes. */
const drop = (state: State, prepared: Prepared) =>
  Effect.gen(function*() {
    yield* updateMetadata(state, (m) => {
      const { draftBase: _, draftPages: __, draftWalBeforeCopy: ___, ...rest } = m
      const { previous } = prepared
      return {
        ...rest,
        copyInProgress: false,
        ...(previous.draftBase ? { draftBase: previous.draftBase } : {}),
        ...(previous.draftPages ? { draftPages: previous.draftPages } : {})
      }
    })
    yield* Files.remove(state.paths.draftWalNext)
  })

/**
 * Under the write gate: Draft closed, the fresh WAL renamed over its WAL (made durable after the gate),
 * Draft reopened with capture; reads on Synced meanwhile.
 */
const swap = (state: State, prepared: Prepared, shown = false) =>
  Effect.gen(function*() {
    const { paths } = state
    yield* state.step("copy:writesHeld")
    yield* Gates.switchReads(state.gates, "synced")
    // Let reads waiting at the door run on Synced before Draft closes (nothing here need wait for I/O).
    yield* Effect.yieldNow()
    yield* Effect.gen(function*() {
      yield* state.draft.close
      yield* state.step("copy:draftClosed")
      yield* Files.remove(Files.shmPath(paths.draft))
      yield* Files.renameUnsynced(paths.draftWalNext, Files.walPath(paths.draft))
      yield* state.step("copy:renamed")
    }).pipe(
      Effect.catchAll((error) =>
        Effect.gen(function*() {
          // Renamed (the failure came after it): Draft has the copy, as the metadata says.
          if (!(yield* Files.exists(paths.draftWalNext))) return
          // Not renamed: the old Draft and its WAL are whole (closing keeps the WAL); forget the copy.
          yield* Effect.ignore(drop(state, prepared))
          return yield* error
        })
      ),
      Effect.exit,
      // Whatever happened, Draft is opened again (capture reinstalled) before reads move back to it.
      Effect.flatMap((exit) => Effect.zipRight(openDraft(state), exit)),
      Effect.ensuring(Effect.ignore(state.draft.open)),
      // Back to Draft, unless the copy failed while pulls had left Draft behind (follow.ts): reads stay on
      // Synced, which holds what they showed.
      Effect.onExit((exit) =>
        Gates.switchReads(state.gates, Exit.isFailure(exit) && state.following.behind ? "synced" : "draft")
      ),
      // Reactive queries look again whatever the outcome (a failure after the rename leaves Draft replaced),
      // as soon as Draft serves reads again, writes still held; not after a copy whose rows they were shown
      // from Synced before it (`shown`), which succeeded: Draft holds what they read then.
      Effect.onExit((exit) => Changes.afterCopy(state.changes, state.draft, shown && Exit.isSuccess(exit)))
    )
  }).pipe(Effect.withSpan("Engine.swapDraft"))

/**
 * After the gate: the rename made durable; the copy's pages written into Draft's file as well (its WAL
 * holds every one of them, so SQLite reads the same pages; nothing checkpoints Draft during a pull), so
 * that the file follows the copy and the next copy writes only what changes after this one, fsynced (a
 * later metadata write takes the record of that to the file); then the flag is cleared and that recorded,
 * in memory: the next metadata write takes it to the file. A crash before that finds the copy flagged,
 * its fresh WAL renamed and Draft's WAL no longer the one before the copy: done (`flaggedCopyOutcome`),
 * with the record of before `copyApplied`, which `DraftPages.copyPages` already allows for.
 */
const settle = (state: State, prepared: Prepared) =>
  Effect.gen(function*() {
    const { paths } = state
    // The reactive queries the swap woke read the new rows before this waits for the disk.
    yield* Effect.yieldNow()
    // The rename made durable and the pages fsynced together, off the event loop: their order does not
    // matter, since a crash that undoes the rename finds the copy flagged and its fresh WAL (which holds
    // every page written here) still there, and finishes it (`flaggedCopyOutcome`).
    yield* PageCopy.writePagesInPlace(paths.draft, prepared.frames, { sync: false })
    yield* Files.syncAll([paths.draft], [paths.draft])
    yield* state.step("copy:applied")
    yield* stageMetadata(state, (m) => {
      const { draftWalBeforeCopy: _, ...rest } = m
      return {
        ...rest,
        copyInProgress: false,
        activeCopy: "draft",
        ...(m.draftPages ? { draftPages: DraftPages.copyApplied(m.draftPages, syncedFileAt(m)) } : {})
      }
    })
  }).pipe(Effect.withSpan("Engine.settleCopy"))

/**
 * With writes held and the replay made: reads go to Synced (invariant 4: with the replay it holds what
 * Draft is about to become) and reactive queries look again there, before the copy waits for the disk.
 */
const readsOnSynced = (state: State) =>
  Effect.gen(function*() {
    yield* Gates.switchReads(state.gates, "synced")
    yield* Changes.beforeCopy(state.changes)
    yield* Effect.yieldNow()
  })

/**
 * A copy that failed before Draft served reads again: reads go back to Draft, and queries look there;
 * not while pulls had left Draft behind (follow.ts): reads stay on Synced, which holds what they showed.
 */
const readsBackOnDraft = (state: State) =>
  Effect.gen(function*() {
    if (state.gates.active.current === "draft" || state.following.behind) return
    yield* Gates.switchReads(state.gates, "draft")
    yield* Changes.beforeCopy(state.changes)
  })

/** Optimistic attempts before the copy is made with writes held throughout (a steady stream of writes). */
const ATTEMPTS = 2

/**
 * Steps 2b and 2c. Writes are held only for the swap (and each read of Draft's change log), unless writes
 * keep landing while the copy is made: then, after `ATTEMPTS` tries, it is made with writes held. Returns
 * the frames the copy wrote; records the longest time writes were held.
 */
export const replayAndCopy = Effect.fn("Engine.replayAndCopy")(
  function*(state: State, progress: number) {
    let blocked = 0
    const holding = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.suspend(() => {
        const started = Date.now()
        return Gates.holdingWrites(state.gates, effect).pipe(
          Effect.ensuring(Effect.sync(() => {
            blocked = Math.max(blocked, Date.now() - started)
          }))
        )
      })
    if ((yield* SynchronizedRef.get(state.metadata)).draftFoldInProgress) yield* holding(Fold.finishDraftFold(state))
    if (state.changes.watchers > 0) {
      // Reactive queries watch: they are shown the pulled rows as soon as Synced holds them with the replay
      // (what Draft is about to become), read from Synced while the copy is made, so the whole copy is made
      // with writes held (a write meanwhile would be missing from those reads).
      const prepared = yield* holding(Effect.gen(function*() {
        const before = yield* PageCopy.walIdentity(state.paths.draft)
        const prepared = yield* prepare(state, progress, before, (read) => read, readsOnSynced(state))
        yield* swap(state, prepared, true)
        return prepared
      }).pipe(Effect.onError(() => readsBackOnDraft(state))))
      yield* Ref.set(state.lastWriteBlockedMs, Option.some(blocked))
      yield* settle(state, prepared)
      return prepared.frames.length
    }
    // Where Draft stands when the replay begins: the writes counted so far and its WAL.
    const quiet = holding(Effect.all([Gates.writeEpoch(state.gates), PageCopy.walIdentity(state.paths.draft)]))
    let done: Prepared | undefined
    for (let attempt = 1; attempt <= ATTEMPTS && done === undefined; attempt++) {
      if (attempt > 1) yield* resetSyncedWal(state) // the dropped attempt's replay
      const [epoch, before] = yield* quiet
      const prepared = yield* prepare(state, progress, before, holding)
      const swapped = yield* holding(Effect.gen(function*() {
        // A write started since the replay read Draft: the copy would lose it.
        if ((yield* Gates.writeEpoch(state.gates)) !== epoch) return false
        yield* swap(state, prepared)
        return true
      }))
      if (swapped) done = prepared
      else yield* drop(state, prepared)
    }
    if (done === undefined) {
      yield* resetSyncedWal(state)
      done = yield* holding(Effect.gen(function*() {
        const before = yield* PageCopy.walIdentity(state.paths.draft)
        const prepared = yield* prepare(state, progress, before, (read) => read)
        yield* swap(state, prepared)
        return prepared
      }))
    }
    yield* Ref.set(state.lastWriteBlockedMs, Option.some(blocked))
    yield* settle(state, done)
    return done.frames.length
  },
  // A failure before the flag leaves a stray fresh WAL; one after it keeps it for open to judge.
  (effect, state) =>
    Effect.tapError(effect, () =>
      Effect.ignore(Effect.gen(function*() {
        if (!(yield* SynchronizedRef.get(state.metadata)).copyInProgress) yield* Files.remove(state.paths.draftWalNext)
      })))
)
