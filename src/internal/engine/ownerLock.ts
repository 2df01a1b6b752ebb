/**
 * One owner per local database: an exclusive OS-level lock on `<path>-lock`, held for the life of the
 * opener's scope.
 *
 * Node has no flock, so the lock is SQLite's own: `<path>-lock` is an (empty) SQLite file opened with
 * `locking_mode=EXCLUSIVE` and an exclusive transaction (rolled back: nothing is written to it), after
 * which the connection keeps its POSIX lock until it closes. The OS drops the lock when the process dies
 * (SIGKILL included), and SQLite's unix VFS also makes a second connection in the same process see it (it
 * tracks locks per file, not per process as POSIX does). A second opener gets SQLITE_BUSY at once (no busy timeout) and a `DatabaseLocked`
 * naming the holder's pid, which the holder writes to `<path>-lock.pid` once it has the lock.
 *
 * @internal
 */
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import { DatabaseLocked, StorageError } from "../../SyncError.js"

/** @internal */
export const lockPath = (path: string) => `${path}-lock`
/** @internal */
export const pidPath = (path: string) => `${path}-lock.pid`

const isBusy = (error: unknown) =>
  typeof error === "object" && error !== null && "code" in error &&
  typeof error.code === "string" && error.code.startsWith("SQLITE_BUSY")

/** The pid the holder wrote, when there is one to read. */
const holderPid = (path: string): number | undefined => {
  try {
    const pid = Number(Fs.readFileSync(pidPath(path), "utf8").trim())
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

const take = (path: string): BetterSqlite3.Database => {
  const db = new BetterSqlite3(lockPath(path), { timeout: 0 })
  try {
    // Nothing is ever written to the file: its lock is all that counts. A journal in memory and a rolled
    // back transaction keep it so (a committed one on a new file wrote its first page, with a journal file
    // and its fsyncs: most of an open's time).
    db.pragma("journal_mode = MEMORY")
    db.pragma("locking_mode = EXCLUSIVE")
    // An exclusive transaction takes the EXCLUSIVE lock at BEGIN; in EXCLUSIVE locking mode it is kept after
    // the transaction ends.
    db.exec("BEGIN EXCLUSIVE; ROLLBACK")
    return db
  } catch (error) {
    db.close()
    throw error
  }
}

/**
 * Takes the lock of the local database at `path` for the current scope, or fails at once with
 * `DatabaseLocked` when another opener holds it.
 *
 * @internal
 */
export const acquire = (path: string): Effect.Effect<void, DatabaseLocked | StorageError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => take(path),
      catch: (cause) => {
        if (!isBusy(cause)) {
          return new StorageError({ reason: "Files", message: `cannot lock ${lockPath(path)}: ${String(cause)}`, path: lockPath(path), cause })
        }
        const pid = holderPid(path)
        return new DatabaseLocked({
          reason: "InUse",
          message: `${path} is in use by another process${pid === undefined ? "" : ` (pid ${pid})`}` +
            " or another SyncDatabase in this one; a local database has one owner at a time",
          path,
          ...(pid === undefined ? {} : { pid }),
          cause
        })
      }
    }).pipe(
      Effect.tap(() =>
        Effect.sync(() => {
          try {
            Fs.writeFileSync(pidPath(path), `${process.pid}\n`)
          } catch {
            // The pid is a courtesy for the error message of a second opener; the lock is what counts.
          }
        })
      )
    ),
    (db) =>
      Effect.sync(() => {
        // Removed while still holding the lock, so it never names a later holder.
        Fs.rmSync(pidPath(path), { force: true })
        db.close()
        // An open that failed before the database file existed (a bootstrap from an unreachable remote)
        // leaves nothing to own: the lock file goes too, so a failed first open leaves no file behind.
        if (!Fs.existsSync(path)) Fs.rmSync(lockPath(path), { force: true })
      })
  ).pipe(Effect.asVoid)
