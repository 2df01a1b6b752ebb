/**
 * Lost or damaged local files, found on open before either copy is opened (opening a missing copy would
 * create an empty database that then "syncs"):
 *
 * - copies without their `<path>-info`: which changes are pending is unknown, so the open is refused
 *   (`StorageError("MetadataLost")`, nothing touched) unless the app asks to start over;
 * - each copy: a cheap header and size check always; SQLite's `quick_check` too when the last owner did
 *   not close cleanly (the metadata's `inUse` is still set);
 * - a damaged or missing Synced is rebuilt from the remote (a re-bootstrap: Draft's pending changes are
 *   kept); a damaged or missing Draft is rebuilt from Synced with the copy step's crash-safe file steps
 *   (its pending changes, if it had any, are lost with it: a warning says so).
 *
 * @internal
 */
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as Fs from "node:fs"
import * as SyncError from "../../SyncError.js"
import * as WalFrame from "../../WalFrame.js"
import * as Files from "../sqlite/files.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import { replaceSynced } from "./rebootstrap.js"
import { type Paths, type State, syncedFileAt, updateMetadata, walFrames } from "./state.js"
import { headerPageSize, quickCheckProblem } from "./validate.js"

/** What is wrong with one copy, `undefined` when nothing was found. */
export type Problem = string | undefined

/** The header and size of the database file `file`: present, an SQLite header of 4096-byte pages, whole pages. */
export const cheapCheck = (file: string): Problem => {
  if (!Fs.existsSync(file)) return "the file is missing"
  const size = Fs.statSync(file).size
  if (size === 0 || size % WalFrame.PAGE_SIZE !== 0) return `the file has ${size} bytes, not whole ${WalFrame.PAGE_SIZE}-byte pages`
  const header = new Uint8Array(100)
  const fd = Fs.openSync(file, "r")
  try {
    Fs.readSync(fd, header, 0, 100, 0)
  } finally {
    Fs.closeSync(fd)
  }
  const pageSize = headerPageSize(header)
  if (pageSize !== WalFrame.PAGE_SIZE) return "the file does not start with an SQLite header of 4096-byte pages"
  return undefined
}

/** SQLite's `quick_check` on a read-only connection (which never checkpoints the WAL). */
export const sqliteCheck = (file: string): Problem =>
  quickCheckProblem(() => new BetterSqlite3(file, { readonly: true, fileMustExist: true }))

/** Whether any file of a copy is on disk (a database whose metadata was lost). */
export const anyCopyExists = (paths: Paths) =>
  Files.attempt(paths.info, "cannot stat", (fs) =>
    [paths.draft, Files.walPath(paths.draft), paths.synced, Files.walPath(paths.synced)].some((f) => fs.existsSync(f)))

/** Refuses an open that would silently start over on files whose metadata is lost. */
export const metadataLost = (paths: Paths) =>
  new SyncError.StorageError({
    reason: "MetadataLost",
    message: `${paths.info} is missing but the local copies exist: which local changes are not pushed yet is ` +
      "unknown, so nothing was touched. Restore that file, or open with startOver: true (command line: " +
      "--start-over) to discard the local files and start again from the remote",
    path: paths.info
  })

/** Both copies, checked; the full check after an unclean shutdown. */
export const inspect = (paths: Paths, unclean: boolean) =>
  Effect.sync(() => {
    const check = (file: string): Problem => cheapCheck(file) ?? (unclean ? sqliteCheck(file) : undefined)
    return { synced: check(paths.synced), draft: check(paths.draft) }
  })

/** Synced rebuilt from the remote's current state; Draft (its pending changes) untouched. */
const repairSynced = (state: State, problem: string) =>
  Effect.gen(function*() {
    yield* Effect.logWarning(`the synced copy ${state.paths.synced} cannot be used (${problem}): rebuilding it from the remote`)
    yield* Files.remove(Files.walPath(state.paths.synced))
    yield* Files.remove(Files.shmPath(state.paths.synced))
    // Left closed: open opens it once everything is repaired (a failed rebuild must not create an empty file).
    yield* replaceSynced(state, "SyncedCopyDamaged")
  }).pipe(
    Effect.mapError((cause) =>
      new SyncError.StorageError({
        reason: "Corrupt",
        message: `the synced copy ${state.paths.synced} cannot be used (${problem}) and cannot be rebuilt from the ` +
          `remote: ${cause.message}`,
        path: state.paths.synced,
        cause
      })
    )
  )

/**
 * Draft rebuilt from Synced at the synced frame: a whole file made beside it, then renamed over it with
 * its WAL gone. The metadata is written first: a crash before the rename leaves the damaged Draft, which
 * the next open finds (and repairs) again; the copy step's WAL swap cannot serve, as Draft's file itself is
 * what is lost.
 */
const repairDraft = (state: State, problem: string) =>
  Effect.gen(function*() {
    yield* Effect.logWarning(
      `the draft copy ${state.paths.draft} cannot be used (${problem}): rebuilding it from the synced copy; ` +
        "local changes it held that were not pushed are lost"
    )
    yield* state.draft.close
    const m = yield* SynchronizedRef.get(state.metadata)
    const frames = yield* Files.readWalFrames(state.paths.synced, walFrames(m))
    yield* Files.materialize(state.paths.synced, frames, state.paths.draftNew)
    // The rebuilt file is Synced's file plus the pages of Synced's WAL: exactly where it differs from it.
    yield* updateMetadata(state, ({ draftPages: _, ...m }) => ({
      ...m,
      copyInProgress: false,
      draftBase: { generation: m.generation, frame: m.syncedFrame },
      draftPages: { fileBase: syncedFileAt(m), filePages: [...PageCopy.pageNumbers(frames)].sort((a, b) => a - b), syncedPages: [] }
    }))
    yield* Files.remove(Files.walPath(state.paths.draft))
    yield* Files.remove(Files.shmPath(state.paths.draft))
    yield* Files.rename(state.paths.draftNew, state.paths.draft)
  })

/** Repairs what `inspect` found, Synced first (Draft may be rebuilt from it). */
export const repair = (state: State, found: { readonly synced: Problem; readonly draft: Problem }) =>
  Effect.gen(function*() {
    if (found.synced !== undefined) yield* repairSynced(state, found.synced)
    if (found.draft !== undefined) {
      yield* state.synced.close
      yield* repairDraft(state, found.draft)
    }
  })
