/**
 * What a remote sends is checked before any of it is recorded as synced: a lying or broken remote must
 * not leave garbage that later pushes and pulls build on, nor a database file of terabytes.
 *
 * - a base (`/export`): an SQLite file of the protocol's page size whose header agrees with its length;
 * - frames (pull): page numbers and commit sizes within what the transaction can reach from the size the
 *   database had before it, and never more frames than asked for;
 * - the result: SQLite's own checks: `quick_check`'s checks of every page the frames wrote, after a walk of
 *   every b-tree's interior pages (`pageCheck.ts`), so that the cost follows the frames; the whole
 *   `quick_check` on the file with its WAL when the frames change the schema or write a page outside every
 *   b-tree (as for a base, always).
 *
 * Pure checks return `Either`; the SQLite check opens its own read-only connection (which never
 * checkpoints, so the WAL stays as the engine wrote it).
 *
 * @internal
 */
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { RemoteError } from "../../SyncError.js"
import * as WalFrame from "../../WalFrame.js"
import { attempt, walPath } from "../sqlite/files.js"
import * as PageCheck from "../sqlite/pageCheck.js"

const invalid = (message: string, cause?: unknown) =>
  new RemoteError({ reason: "InvalidData", message, ...(cause === undefined ? {} : { cause }) })

const SQLITE_MAGIC = "SQLite format 3\u0000"

/**
 * The page size an SQLite header declares (bytes 16-17; 1 means 65536), or undefined when `bytes` does
 * not start with an SQLite header.
 */
export const headerPageSize = (bytes: Uint8Array): number | undefined => {
  if (bytes.byteLength < 100) return undefined
  if (new TextDecoder().decode(bytes.subarray(0, 16)) !== SQLITE_MAGIC) return undefined
  const raw = (bytes[16] << 8) | bytes[17]
  return raw === 1 ? 65536 : raw
}

/**
 * The length an SQLite file's header gives (page size × in-header page count), when that count is valid
 * (its change counter matches "version-valid-for", sqlite.org/fileformat.html); otherwise undefined.
 */
export const headerLength = (file: Uint8Array): number | undefined => {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength)
  const raw = view.getUint16(16)
  const pageSize = raw === 1 ? 65536 : raw
  const pages = view.getUint32(28)
  return pages > 0 && view.getUint32(24) === view.getUint32(92) ? pages * pageSize : undefined
}

/** A generation's base as `/export` sent it. */
export const base = (bytes: Uint8Array, generation: number): Either.Either<void, RemoteError> => {
  const pageSize = headerPageSize(bytes)
  if (pageSize === undefined) {
    return Either.left(invalid(`the base of generation ${generation} (${bytes.byteLength} bytes) is not an SQLite database`))
  }
  if (pageSize !== WalFrame.PAGE_SIZE) {
    return Either.left(
      invalid(`the base of generation ${generation} has ${pageSize}-byte pages; the protocol speaks ${WalFrame.PAGE_SIZE}-byte pages only`)
    )
  }
  if (bytes.byteLength % WalFrame.PAGE_SIZE !== 0) {
    return Either.left(invalid(`the base of generation ${generation} (${bytes.byteLength} bytes) is not whole pages`))
  }
  // A base cut short (whole pages, so the transport did not notice) would be written and its metadata with
  // it: every later open would fail on a malformed Synced. Its header says how long it is.
  const expected = headerLength(bytes)
  if (expected !== undefined && expected !== bytes.byteLength) {
    return Either.left(
      invalid(`the base of generation ${generation} has ${bytes.byteLength} bytes, its header says ${expected}`)
    )
  }
  return Either.right(undefined)
}

/**
 * Committed frames about to follow a database of `pages` pages. A transaction can grow the database only
 * by pages it writes (plus the lock-byte page SQLite never writes), so a commit size beyond that, or a
 * page beyond its commit size, is refused; page 1, when sent, must be an SQLite header of the protocol's
 * page size. `at` is the frame number of the first frame, for messages.
 */
export const frames = (
  committed: ReadonlyArray<WalFrame.Frame>,
  pages: number,
  at: number
): Either.Either<void, RemoteError> => {
  let size = pages
  let written = 0
  let maxPgno = 0
  for (let i = 0; i < committed.length; i++) {
    const frame = committed[i]
    const n = at + i
    if (frame.page.byteLength !== WalFrame.PAGE_SIZE) {
      return Either.left(invalid(`frame ${n} has a page of ${frame.page.byteLength} bytes`))
    }
    if (frame.pgno < 1 || frame.pgno > size + written + 2) {
      return Either.left(invalid(`frame ${n} writes page ${frame.pgno} of a database of ${size} pages`))
    }
    if (frame.pgno === 1 && headerPageSize(frame.page) !== WalFrame.PAGE_SIZE) {
      return Either.left(invalid(`frame ${n} writes page 1 without an SQLite header of ${WalFrame.PAGE_SIZE}-byte pages`))
    }
    written++
    maxPgno = Math.max(maxPgno, frame.pgno)
    if (frame.commitSize !== 0) {
      if (frame.commitSize < maxPgno || frame.commitSize > size + written + 1) {
        return Either.left(
          invalid(
            `frame ${n} commits a database of ${frame.commitSize} pages after one of ${size} pages and ${written} written ` +
              `(highest page ${maxPgno})`
          )
        )
      }
      size = frame.commitSize
      written = 0
      maxPgno = 0
    }
  }
  return Either.right(undefined)
}

/** What SQLite's `quick_check` finds on the connection `open` makes (closed after), `undefined` for nothing. */
export const quickCheckProblem = (open: () => BetterSqlite3.Database): string | undefined => {
  let db: BetterSqlite3.Database | undefined
  try {
    db = open()
    const rows = db.pragma("quick_check") as Array<Record<string, unknown>>
    const messages = rows.map((row) => String(Object.values(row)[0]))
    return messages.length === 1 && messages[0] === "ok" ? undefined : messages.slice(0, 5).join("; ")
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  } finally {
    db?.close()
  }
}

const quickCheck = (open: () => BetterSqlite3.Database, what: string): Effect.Effect<void, RemoteError> =>
  Effect.suspend(() => {
    const problem = quickCheckProblem(open)
    return problem === undefined
      ? Effect.void
      : Effect.fail(invalid(`${what} fails SQLite's check (${problem}); nothing of it was recorded as synced`))
  })

/**
 * SQLite's `quick_check` of the database file `file` with its WAL, on a read-only connection of its own.
 * Fails with `InvalidData` naming what SQLite found.
 */
export const database = (file: string, what: string): Effect.Effect<void, RemoteError> =>
  quickCheck(() => new BetterSqlite3(file, { readonly: true, fileMustExist: true }), what)

/** `database` for a file still in memory (a base before it is written). */
export const databaseBytes = (bytes: Uint8Array, what: string): Effect.Effect<void, RemoteError> =>
  quickCheck(() => {
    // A WAL-mode header (bytes 18-19 = 2) cannot be deserialized; the pages are the same in rollback mode.
    // The constructor copies the bytes into SQLite's memory: the header is changed for that copy and put
    // back at once, in the same synchronous step (nothing else can see it), instead of a copy of our own.
    const header = [bytes[18], bytes[19]] as const
    bytes[18] = 1
    bytes[19] = 1
    let db: BetterSqlite3.Database
    try {
      db = new BetterSqlite3(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), { readonly: true })
    } finally {
      bytes[18] = header[0]
      bytes[19] = header[1]
    }
    // Pages read where they lie in memory (the in-memory file maps them) rather than each copied into a page
    // cache that grows to hold them all (alone, on a freshly allocated copy of a 1.3 MB base: 0.9 ms instead
    // of 5).
    try {
      db.pragma(`mmap_size = ${bytes.byteLength}`)
    } catch (error) {
      db.close()
      throw error
    }
    return db
  }, what)

/**
 * Frames just appended after the first `before` frames of `<file>-wal`: SQLite's checks of the pages they
 * wrote (`PageCheck.check`), or the whole `quick_check` when those cannot judge them. `trees`: the b-trees
 * of `sqlite_schema` before the frames. `index`: where each page's newest copy is among those `before`
 * frames (frame index from 0), when the caller keeps it (else read from the frames' headers).
 */
export const pulled = (
  file: string,
  before: number,
  frames: ReadonlyArray<WalFrame.Frame>,
  trees: ReadonlyArray<PageCheck.Tree>,
  what: string,
  index?: ReadonlyMap<number, number> | undefined
) =>
  Effect.flatMap(
    attempt(file, "cannot read pages", (fs) => {
      const fd = fs.openSync(file, "r")
      const wal = before > 0 ? fs.openSync(walPath(file), "r") : undefined
      try {
        // Where each page's newest copy is among the WAL's first `before` frames.
        let inWal = index
        if (inWal === undefined) {
          const read = new Map<number, number>()
          const head = new Uint8Array(4)
          for (let i = 0; i < before; i++) {
            fs.readSync(wal!, head, 0, 4, WalFrame.walSize(i))
            read.set(new DataView(head.buffer).getUint32(0), i)
          }
          inWal = read
        }
        const fileBytes = fs.fsizeSync(fd)
        const pageBefore = (pgno: number): Uint8Array | undefined => {
          const out = new Uint8Array(WalFrame.PAGE_SIZE)
          const i = inWal.get(pgno)
          if (i !== undefined) {
            fs.readSync(wal!, out, 0, WalFrame.PAGE_SIZE, WalFrame.walSize(i) + WalFrame.FRAME_HEADER_SIZE)
            return out
          }
          if (pgno * WalFrame.PAGE_SIZE > fileBytes) return undefined
          fs.readSync(fd, out, 0, WalFrame.PAGE_SIZE, (pgno - 1) * WalFrame.PAGE_SIZE)
          return out
        }
        const newest = new Map<number, Uint8Array>()
        let size = 0
        for (const f of frames) {
          newest.set(f.pgno, f.page)
          if (f.commitSize !== 0) size = f.commitSize
        }
        const page = (pgno: number) => pgno > size ? undefined : newest.get(pgno) ?? pageBefore(pgno)
        return PageCheck.check(frames, trees, size, page, pageBefore)
      } finally {
        fs.closeSync(fd)
        if (wal !== undefined) fs.closeSync(wal)
      }
    }),
    (verdict): Effect.Effect<void, RemoteError> =>
      verdict._tag === "Ok"
        ? Effect.void
        : verdict._tag === "Full"
        ? database(file, what)
        : Effect.fail(invalid(`${what} fails SQLite's checks (${verdict.message}); nothing of it was recorded as synced`))
  )
