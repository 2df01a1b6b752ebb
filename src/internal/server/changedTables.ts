/**
 * Which tables a commit changed, found from its page numbers, so the commit check can cross-check the
 * indexes of those tables only (`PRAGMA integrity_check(TABLE)`) instead of every index of the database.
 *
 * A page is placed by walking the interior pages of every b-tree of the database after the commit (one
 * leaf per level is read to learn where the leaves start; leaves themselves are not read) and the
 * freelist. Anything that cannot be placed (an overflow page, a pointer-map page, a structure that does
 * not walk cleanly) or a change to the schema itself asks for the full `integrity_check`: the
 * placement only ever narrows the check when it is sure. `quick_check` always runs first, over the
 * whole file, so a commit that breaks the structure of a b-tree it did not seem to touch is still refused.
 * When the changed tables hold half the database or more, the full check is cheaper than the two and
 * is asked for instead.
 */
import * as WalFrame from "../../WalFrame.js"

/** One row of `sqlite_schema` before the commit. */
export interface SchemaEntry {
  readonly name: string
  readonly tblName: string
  readonly rootpage: number
}

/** What the check must cover: everything, or the listed tables (with their indexes). */
export type Placement =
  | {
    readonly _tag: "Full"
    readonly why: string
    /** The schema may differ after the commit: a cached copy of it must be read again. */
    readonly schemaChanged: boolean
  }
  | { readonly _tag: "Tables"; readonly tables: ReadonlyArray<string> }

/** The pragmas a commit must pass, in order; the first finding refuses it. */
export type CheckPlan = ReadonlyArray<string>

/** `sqlite_schema` as SQLite's own pragma output lists it. */
export const SCHEMA_QUERY = "SELECT name, tbl_name AS tblName, rootpage FROM sqlite_schema WHERE rootpage > 0"

const TABLE_LEAF = 0x0d
const INDEX_LEAF = 0x0a
const TABLE_INTERIOR = 0x05
const INDEX_INTERIOR = 0x02

const SCHEMA_TABLE = "\u0000sqlite_schema"
const FREE = "\u0000free"

const full = (why: string, schemaChanged = false): Placement => ({ _tag: "Full", why, schemaChanged })

const u16 = (page: Uint8Array, at: number) => (page[at] << 8) | page[at + 1]
const u32 = (page: Uint8Array, at: number) =>
  ((page[at] << 24) >>> 0) + (page[at + 1] << 16) + (page[at + 2] << 8) + page[at + 3]

/**
 * Places the pages `frames` (whole transactions) write in the tables of the database they produce.
 * `readHead` reads a page of the database before the commit; `schema` is its `sqlite_schema`.
 */
export const place = (
  frames: ReadonlyArray<WalFrame.Frame>,
  schema: ReadonlyArray<SchemaEntry>,
  readHead: (pgno: number) => Uint8Array | undefined
): Placement => {
  let size = 0
  for (const frame of frames) if (frame.commitSize > 0) size = frame.commitSize
  if (size === 0) return full("no commit frame")
  const latest = new Map<number, Uint8Array>()
  for (const frame of frames) if (frame.pgno <= size) latest.set(frame.pgno, frame.page)
  const page = (pgno: number) => latest.get(pgno) ?? readHead(pgno)

  const touched = new Set(latest.keys())
  const page1 = latest.get(1)
  if (page1 !== undefined) {
    // Page 1 carries the file header, which every commit rewrites, and the root of sqlite_schema.
    const before = readHead(1)
    if (before === undefined || Buffer.compare(before.subarray(100), page1.subarray(100)) !== 0) {
      return full("the commit changes the schema", true)
    }
    touched.delete(1)
  }
  if (touched.size === 0) return { _tag: "Tables", tables: [] }

  const owner = new Map<number, string>()
  let visits = 0
  // Walks one b-tree level by level. False when it does not walk as a b-tree does.
  const walk = (root: number, label: string): boolean => {
    let level = [root]
    while (level.length > 0) {
      for (const pgno of level) {
        if (pgno < 1 || pgno > size || owner.has(pgno) || ++visits > size) return false
        owner.set(pgno, label)
      }
      const first = page(level[0])
      if (first === undefined) return false
      const at = level[0] === 1 ? 100 : 0
      if (first[at] === TABLE_LEAF || first[at] === INDEX_LEAF) return true
      const next: Array<number> = []
      for (const pgno of level) {
        const p = page(pgno)
        const off = pgno === 1 ? 100 : 0
        if (p === undefined || (p[off] !== TABLE_INTERIOR && p[off] !== INDEX_INTERIOR)) return false
        const cells = u16(p, off + 3)
        if (off + 12 + 2 * cells > p.byteLength) return false
        for (let i = 0; i < cells; i++) {
          const cell = u16(p, off + 12 + 2 * i)
          if (cell + 4 > p.byteLength) return false
          next.push(u32(p, cell))
        }
        next.push(u32(p, off + 8))
      }
      level = next
    }
    return true
  }

  if (!walk(1, SCHEMA_TABLE)) return full("sqlite_schema does not walk as a b-tree", true)
  for (const entry of schema) {
    if (!walk(entry.rootpage, entry.tblName)) return full(`the b-tree of ${entry.name} does not walk as a b-tree`)
  }
  const header = page(1)
  if (header === undefined) return full("no page 1")
  // The freelist: trunk pages chained from the header, each listing its leaf pages.
  for (let trunk = u32(header, 32); trunk !== 0;) {
    const p = page(trunk)
    if (trunk > size || owner.has(trunk) || p === undefined || ++visits > size) return full("the freelist does not walk")
    owner.set(trunk, FREE)
    const leaves = u32(p, 4)
    if (8 + 4 * leaves > p.byteLength) return full("a freelist trunk page lists too many leaves")
    for (let i = 0; i < leaves; i++) owner.set(u32(p, 8 + 4 * i), FREE)
    trunk = u32(p, 0)
  }

  const tables = new Set<string>()
  for (const pgno of touched) {
    const label = owner.get(pgno)
    if (label === undefined) return full(`page ${pgno} is in no b-tree or freelist`)
    if (label === SCHEMA_TABLE) return full("the commit changes the schema", true)
    if (label !== FREE) tables.add(label)
  }
  // quick_check reads every page and integrity_check(T) reads T's again: when the changed tables hold
  // half the database or more, one full integrity_check costs less.
  let all = 0
  let changed = 0
  for (const label of owner.values()) {
    if (label === FREE || label === SCHEMA_TABLE) continue
    all++
    if (tables.has(label)) changed++
  }
  if (tables.size > 0 && 2 * changed >= all) return full("the changed tables hold half the database or more")
  return { _tag: "Tables", tables: Array.from(tables).sort() }
}

const quote = (name: string) => `"${name.replaceAll("\"", "\"\"")}"`

/**
 * The pragmas a placement asks for. A table whose name reads as a number gets the full check:
 * `integrity_check(N)` would read N as a count of errors to report.
 */
export const planOf = (placement: Placement): CheckPlan => {
  if (placement._tag === "Full" || placement.tables.some((name) => /^[0-9+-]/.test(name.trim()))) {
    return ["integrity_check"]
  }
  return ["quick_check", ...placement.tables.map((name) => `integrity_check(${quote(name)})`)]
}
