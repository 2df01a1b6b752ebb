/**
 * SQLite-facing helpers shared by both store backends: the generation-1 base file, and the
 * "would SQLite call this database malformed?" check run before a commit is acknowledged.
 */
import Database from "better-sqlite3"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as WalFrame from "../../WalFrame.js"

// `quick_check` finds every structural fault (b-tree pages, cell and freelist bounds, overflow chains,
// pages used twice or never, NOT NULL) in one pass, linear in the database size. `integrity_check` also
// verifies that every index matches its table and UNIQUE constraints; an index out of step with its
// table is not unreadable, but later writes through it fail with SQLITE_CORRUPT on every replica. The
// default, `changed_tables`, runs `quick_check` and then `integrity_check` of the tables the commit
// changed (see changedTables.ts), which catches that at a fraction of the full cost.
import type { IntegrityCheck } from "../../ServerStore.js"
import type { CheckPlan, SchemaEntry } from "./changedTables.js"
import * as ChangedTables from "./changedTables.js"
import { SCHEMA_QUERY } from "./changedTables.js"
export type { IntegrityCheck }

/** The pragmas of a mode that does not depend on the commit. */
export const fixedPlan = (mode: Exclude<IntegrityCheck, "changed_tables">): CheckPlan =>
  mode === "off" ? [] : [mode]

let cachedEmptyBase: Uint8Array | undefined

/**
 * The 4096-byte file `PRAGMA journal_mode=WAL` leaves on an empty database (header bytes 18/19 = 2),
 * made by the bundled SQLite itself so its header carries a real version number.
 */
export const emptyWalBase = (): Uint8Array => {
  if (cachedEmptyBase !== undefined) return cachedEmptyBase
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-sqlite-sync-base-"))
  try {
    const file = path.join(dir, "empty.db")
    const db = new Database(file)
    db.pragma("journal_mode = WAL")
    db.close()
    const bytes = new Uint8Array(fs.readFileSync(file))
    if (bytes.byteLength !== WalFrame.PAGE_SIZE || bytes[18] !== 2 || bytes[19] !== 2) {
      throw new Error(`unexpected empty WAL-mode database: ${bytes.byteLength} bytes, header 18/19 = ${bytes[18]}/${bytes[19]}`)
    }
    cachedEmptyBase = bytes
    return bytes
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const HEADER_MAGIC = Buffer.from("SQLite format 3\0", "latin1")

/**
 * Page 1 of every replica must stay a WAL-mode database of 4096-byte pages: a pushed page 1 that says
 * otherwise would switch replicas out of WAL mode (or change their page size) on their next open.
 */
export const checkHeaderFrames = (frames: ReadonlyArray<WalFrame.Frame>): string | undefined => {
  for (const frame of frames) {
    if (frame.pgno !== 1) continue
    const page = frame.page
    if (Buffer.compare(page.subarray(0, 16), HEADER_MAGIC) !== 0) return "page 1 does not start with the SQLite header"
    const pageSize = (page[16] << 8) | page[17]
    if (pageSize !== WalFrame.PAGE_SIZE) return `page 1 declares a page size of ${pageSize}`
    if (page[18] !== 2 || page[19] !== 2) return `page 1 is not a WAL-mode database (header bytes 18/19 = ${page[18]}/${page[19]})`
  }
  return undefined
}

const isCorruption = (error: unknown): boolean => {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === "string" && (code.startsWith("SQLITE_CORRUPT") || code.startsWith("SQLITE_NOTADB"))
}

/**
 * The page cache of a check's connection (64 pages). The check reads each page about once, from the OS's
 * cache, and its connection lives for one check: a larger cache only makes every check touch that much
 * fresh memory, a page fault per 4 KiB, which on a virtualized machine costs more than the check itself.
 * With the bundled SQLite's default (16 MiB) a 13 MB table took 110 ms, 20-25 ms with this; 2.6 MB: 20
 * ms with the default, 14 ms with 1 MiB, 5 ms with this. Tables with indexes gain less, but do not lose:
 * the pages their lookups revisit (the b-trees' upper levels) fit.
 */
export const CHECK_CACHE_PRAGMA = "cache_size = -256"

/**
 * Runs the check on an open connection: `undefined` when SQLite finds nothing, else its complaint.
 * SQLite reports some faults by failing the pragma itself (SQLITE_CORRUPT); those count as findings.
 * Any other failure is thrown (a storage problem, not a verdict on the pages).
 */
export const checkConnection = (db: Database.Database, plan: CheckPlan): string | undefined => {
  if (plan.length === 0) return undefined
  try {
    db.pragma(CHECK_CACHE_PRAGMA)
  } catch (error) {
    if (isCorruption(error)) return (error as Error).message
    throw error
  }
  for (const pragma of plan) {
    try {
      const rows = db.pragma(pragma) as ReadonlyArray<Record<string, unknown>>
      const messages = rows.map((row) => String(Object.values(row)[0]))
      if (messages.length === 1 && messages[0] === "ok") continue
      return messages.slice(0, 5).join("; ")
    } catch (error) {
      if (isCorruption(error)) return (error as Error).message
      throw error
    }
  }
  return undefined
}

/**
 * Checks a complete database image held in memory (WAL-mode header bytes allowed: the copy handed to
 * SQLite is switched to rollback mode, which is what `new Database(buffer)` requires).
 */
export const checkImage = (
  image: Uint8Array,
  plan: CheckPlan,
  options?: { readonly owned?: boolean | undefined }
): string | undefined => {
  if (plan.length === 0) return undefined
  // better-sqlite3 copies the buffer it deserializes, so an image the caller owns needs no copy of its own.
  const copy = options?.owned === true
    ? Buffer.from(image.buffer, image.byteOffset, image.byteLength)
    : Buffer.from(image)
  const versions = [copy[18], copy[19]] as const
  if (copy.byteLength >= 20) {
    copy[18] = 1
    copy[19] = 1
  }
  try {
    return checkDeserialized(copy, plan)
  } finally {
    if (copy.byteLength >= 20) {
      copy[18] = versions[0]
      copy[19] = versions[1]
    }
  }
}

const checkDeserialized = (copy: Buffer, plan: CheckPlan): string | undefined => {
  let db: Database.Database
  try {
    db = new Database(copy)
  } catch (error) {
    if (isCorruption(error)) return (error as Error).message
    throw error
  }
  try {
    return checkConnection(db, plan)
  } finally {
    db.close()
  }
}

/**
 * The check plan of a commit of `frames` on the database image `head`, for stores that hold their head
 * in memory. `schema` is `head`'s sqlite_schema when known (read from `head` otherwise); the answer's
 * `schema` is the one to keep for the image after the commit (undefined when the commit changes it).
 */
export const planOnImage = (
  mode: IntegrityCheck,
  head: Uint8Array,
  schema: ReadonlyArray<SchemaEntry> | undefined,
  frames: ReadonlyArray<WalFrame.Frame>
): { readonly plan: CheckPlan; readonly schema: ReadonlyArray<SchemaEntry> | undefined } => {
  if (mode !== "changed_tables") return { plan: fixedPlan(mode), schema }
  const known = schema ?? schemaOfImage(head)
  const placement = ChangedTables.place(frames, known, (pgno) =>
    pgno * WalFrame.PAGE_SIZE <= head.byteLength
      ? head.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
      : undefined)
  return {
    plan: ChangedTables.planOf(placement),
    schema: placement._tag === "Full" && placement.schemaChanged ? undefined : known
  }
}

/** The `sqlite_schema` b-trees of a database image held in memory (see `changedTables.place`). */
export const schemaOfImage = (image: Uint8Array): ReadonlyArray<SchemaEntry> => {
  const copy = Buffer.from(image)
  if (copy.byteLength >= 20) {
    copy[18] = 1
    copy[19] = 1
  }
  const db = new Database(copy, { readonly: true })
  try {
    return db.prepare<[], SchemaEntry>(SCHEMA_QUERY).all()
  } finally {
    db.close()
  }
}
