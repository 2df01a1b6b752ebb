/**
 * SQLite's own structural checks, on the pages a commit wrote only: what `quick_check` verifies of a
 * b-tree page (sqlite.org/fileformat.html; `checkTreePage` and `btreeInitPage` in btree.c), so that
 * checking pulled frames costs what they changed, not the database size.
 *
 * Every b-tree of the database after the commit is walked through its interior pages (leaves are not
 * read, their numbers come from their parents), with the freelist; a page referenced twice, a child out
 * of range, or a level that mixes leaves and interior pages is refused. Each page the commit wrote is then
 * checked in full: its type against its place in the walk, its header, every cell's bounds (payload sizes,
 * overflow pointers), cells and freeblocks that neither overlap nor leave unaccounted bytes, rowids in
 * order, records whose header agrees with their length. A commit that changes the schema, or writes a page
 * the walk does not place (an overflow page, a pointer-map page), is answered `Full`: the caller runs the
 * whole `quick_check`. The checks of unchanged pages are not repeated: the state before the commit passed
 * them already.
 *
 * @internal
 */
import type * as WalFrame from "../../WalFrame.js"

/** One b-tree of the database (`sqlite_schema` rows with a root page). */
export interface Tree {
  readonly name: string
  readonly rootpage: number
}

/** What a check found: nothing, a fault (named), or that it cannot judge without the whole check. */
export type Verdict =
  | { readonly _tag: "Ok"; readonly pages: number }
  | { readonly _tag: "Fault"; readonly message: string }
  | { readonly _tag: "Full"; readonly why: string }

const TABLE_LEAF = 0x0d
const INDEX_LEAF = 0x0a
const TABLE_INTERIOR = 0x05
const INDEX_INTERIOR = 0x02

interface Place {
  readonly tree: string
  readonly table: boolean
  readonly leaf: boolean
}

const u16 = (p: Uint8Array, at: number) => (p[at] << 8) | p[at + 1]
const u32 = (p: Uint8Array, at: number) => ((p[at] << 24) >>> 0) + (p[at + 1] << 16) + (p[at + 2] << 8) + p[at + 3]

/** A varint at `at` (at most 9 bytes): its value (as a number, exact to 2^53) and its length. */
const varint = (p: Uint8Array, at: number, end: number): readonly [number, number] | undefined => {
  let value = 0
  for (let i = 0; i < 9; i++) {
    if (at + i >= end) return undefined
    const byte = p[at + i]
    if (i === 8) return [value * 256 + byte, 9]
    value = value * 128 + (byte & 0x7f)
    if ((byte & 0x80) === 0) return [value, i + 1]
  }
  return undefined
}

/** A rowid: the varint at `at` read exactly, as a signed 64-bit integer, and its length. */
const rowidAt = (p: Uint8Array, at: number, end: number): readonly [bigint, number] | undefined => {
  let value = 0n
  for (let i = 0; i < 9; i++) {
    if (at + i >= end) return undefined
    const byte = p[at + i]
    if (i === 8) return [BigInt.asIntN(64, (value << 8n) | BigInt(byte)), 9]
    value = (value << 7n) | BigInt(byte & 0x7f)
    if ((byte & 0x80) === 0) return [BigInt.asIntN(64, value), i + 1]
  }
  return undefined
}

/** Bytes of a record column of serial type `t` (-1: a reserved type). */
const contentSize = (t: number): number =>
  t <= 4 ? t : t === 5 ? 6 : t === 6 || t === 7 ? 8 : t === 8 || t === 9 ? 0 : t === 10 || t === 11 ? -1 : Math.floor((t - 12) / 2)

/** Where the walk placed each page: 0 nowhere, FREE the freelist, else 1 + 2 × tree + (1 for a leaf). */
const FREE = -1

/**
 * Walks every b-tree through its interior pages, and the freelist, into one number per page (a typed
 * array: a database of 100 MB has 25 000 pages). The reason when the structure does not walk as SQLite's
 * does.
 */
const walk = (
  trees: ReadonlyArray<Tree>,
  size: number,
  page: (pgno: number) => Uint8Array | undefined
): { readonly owner: Int32Array; readonly tables: ReadonlyArray<boolean> } | string => {
  const owner = new Int32Array(size + 1)
  const tables: Array<boolean> = []
  const nameOf = (code: number) => code === FREE ? "the freelist" : trees[(code - 1) >> 1].name
  let visits = 0
  for (const [index, tree] of trees.entries()) {
    const root = page(tree.rootpage)
    const rootAt = tree.rootpage === 1 ? 100 : 0
    if (root === undefined) return `the root page ${tree.rootpage} of ${tree.name} is missing`
    const table = root[rootAt] === TABLE_LEAF || root[rootAt] === TABLE_INTERIOR
    tables.push(table)
    let level = [tree.rootpage]
    while (level.length > 0) {
      const first = page(level[0])
      if (first === undefined) return `page ${level[0]} of ${tree.name} is missing`
      const type = first[level[0] === 1 ? 100 : 0]
      const leaf = type === TABLE_LEAF || type === INDEX_LEAF
      const code = 1 + 2 * index + (leaf ? 1 : 0)
      for (const pgno of level) {
        if (pgno < 1 || pgno > size) return `${tree.name} refers to page ${pgno} of a database of ${size} pages`
        if (owner[pgno] !== 0) return `page ${pgno} is referenced twice (${nameOf(owner[pgno])}, ${tree.name})`
        if (++visits > size) return "the b-trees hold more pages than the database"
        owner[pgno] = code
      }
      if (leaf) break
      const next: Array<number> = []
      for (const pgno of level) {
        const p = page(pgno)
        const at = pgno === 1 ? 100 : 0
        if (p === undefined) return `page ${pgno} of ${tree.name} is missing`
        if (p[at] !== (table ? TABLE_INTERIOR : INDEX_INTERIOR)) {
          return `page ${pgno} of ${tree.name} is not an interior page of its b-tree (leaves at different depths)`
        }
        const cells = u16(p, at + 3)
        if (at + 12 + 2 * cells > p.byteLength) return `page ${pgno} has too many cells`
        for (let i = 0; i < cells; i++) {
          const cell = u16(p, at + 12 + 2 * i)
          if (cell + 4 > p.byteLength) return `page ${pgno}: cell ${i} starts outside the page`
          next.push(u32(p, cell))
        }
        next.push(u32(p, at + 8))
      }
      level = next
    }
  }
  const header = page(1)
  if (header === undefined) return "page 1 is missing"
  let count = 0
  for (let trunk = u32(header, 32); trunk !== 0;) {
    const p = trunk <= size ? page(trunk) : undefined
    if (trunk > size || owner[trunk] !== 0 || p === undefined || ++visits > size) {
      return `the freelist does not walk (trunk page ${trunk})`
    }
    owner[trunk] = FREE
    const leaves = u32(p, 4)
    if (8 + 4 * leaves > p.byteLength) return `freelist trunk page ${trunk} lists too many leaves`
    for (let i = 0; i < leaves; i++) {
      const leaf = u32(p, 8 + 4 * i)
      if (leaf < 2 || leaf > size || owner[leaf] !== 0) return `freelist leaf ${leaf} is out of range or used twice`
      owner[leaf] = FREE
    }
    count += 1 + leaves
    trunk = u32(p, 0)
  }
  if (count !== u32(header, 36)) return `the freelist holds ${count} pages, the header says ${u32(header, 36)}`
  return { owner, tables }
}

/** The checks `quick_check` makes of one b-tree page; a message for the first fault. */
const checkTreePage = (
  pgno: number,
  p: Uint8Array,
  place: Place,
  size: number,
  owned: (pgno: number) => boolean
): string | undefined => {
  const U = p.byteLength
  const hdr = pgno === 1 ? 100 : 0
  const type = p[hdr]
  const expected = place.table ? (place.leaf ? TABLE_LEAF : TABLE_INTERIOR) : (place.leaf ? INDEX_LEAF : INDEX_INTERIOR)
  if (type !== expected) return `page ${pgno} of ${place.tree} has type ${type}, expected ${expected}`
  const headerSize = place.leaf ? 8 : 12
  const cells = u16(p, hdr + 3)
  const contentStart = u16(p, hdr + 5) === 0 ? 65536 : u16(p, hdr + 5)
  const fragmented = p[hdr + 7]
  const cellFirst = hdr + headerSize + 2 * cells
  if (cellFirst > contentStart || contentStart > U) return `page ${pgno}: ${cells} cells do not fit (content from ${contentStart})`
  if (!place.leaf) {
    const right = u32(p, hdr + 8)
    if (right < 2 || right > size) return `page ${pgno}: right child ${right} out of range`
  }
  const maxLocal = place.table ? U - 35 : Math.floor(((U - 12) * 64) / 255) - 23
  const minLocal = Math.floor(((U - 12) * 32) / 255) - 23
  const spans: Array<readonly [number, number]> = []
  let previousKey: bigint | undefined
  for (let i = 0; i < cells; i++) {
    const at = u16(p, hdr + headerSize + 2 * i)
    if (at < contentStart || at + 4 > U) return `page ${pgno}: cell ${i} at ${at} is outside the content area`
    let pos = at
    if (!place.leaf) {
      const child = u32(p, pos)
      if (child < 2 || child > size) return `page ${pgno}: cell ${i} points to page ${child}`
      pos += 4
    }
    let payload = 0
    if (!(place.table && !place.leaf)) {
      const v = varint(p, pos, U)
      if (v === undefined) return `page ${pgno}: cell ${i} has a broken payload size`
      payload = v[0]
      pos += v[1]
    }
    if (place.table) {
      const key = rowidAt(p, pos, U)
      if (key === undefined) return `page ${pgno}: cell ${i} has a broken rowid`
      pos += key[1]
      const rowid = key[0]
      if (previousKey !== undefined && (place.leaf ? rowid <= previousKey : rowid < previousKey)) {
        return `page ${pgno}: rowid ${rowid} out of order`
      }
      previousKey = rowid
      if (!place.leaf) {
        spans.push([at, pos])
        continue
      }
    }
    let local = payload
    if (payload > maxLocal) {
      const surplus = minLocal + ((payload - minLocal) % (U - 4))
      local = surplus <= maxLocal ? surplus : minLocal
    }
    // SQLite counts a cell as at least 4 bytes.
    const end = Math.max(at + 4, pos + local + (local < payload ? 4 : 0))
    if (end > U) return `page ${pgno}: cell ${i} extends past the page`
    if (local < payload) {
      const overflow = u32(p, pos + local)
      if (overflow < 2 || overflow > size || owned(overflow)) return `page ${pgno}: cell ${i} overflows to page ${overflow}`
    }
    // The record's header: its length and serial types agree with the payload's size.
    const hs = varint(p, pos, pos + local)
    if (hs !== undefined && hs[0] <= local) {
      let total = hs[0]
      for (let h = pos + hs[1]; h < pos + hs[0];) {
        const t = varint(p, h, pos + hs[0])
        if (t === undefined) return `page ${pgno}: cell ${i} has a broken record header`
        const n = contentSize(t[0])
        if (n < 0) return `page ${pgno}: cell ${i} has a reserved serial type ${t[0]}`
        total += n
        h += t[1]
      }
      if (total !== payload) return `page ${pgno}: cell ${i} holds a record of ${total} bytes in a payload of ${payload}`
    } else if (hs === undefined && local === payload) {
      return `page ${pgno}: cell ${i} has a broken record header`
    } else if (hs !== undefined && hs[0] > payload) {
      return `page ${pgno}: cell ${i} has a record header longer than its payload`
    }
    spans.push([at, end])
  }
  // Freeblocks: ascending, inside the content area, at least 4 bytes.
  let lastEnd = 0
  for (let at = u16(p, hdr + 1), n = 0; at !== 0; n++) {
    if (at < contentStart || at + 4 > U || at < lastEnd || n > U / 4) return `page ${pgno}: freeblock at ${at} is out of place`
    const length = u16(p, at + 2)
    if (length < 4 || at + length > U) return `page ${pgno}: freeblock at ${at} of ${length} bytes`
    spans.push([at, at + length])
    lastEnd = at + length
    at = u16(p, at)
  }
  // Cells and freeblocks cover the content area without overlap; the gaps are the fragmented bytes.
  spans.sort((a, b) => a[0] - b[0])
  let covered = contentStart
  let gaps = 0
  for (const [from, to] of spans) {
    if (from < covered) return `page ${pgno}: cells or freeblocks overlap at ${from}`
    gaps += from - covered
    covered = to
  }
  gaps += U - covered
  if (gaps !== fragmented) return `page ${pgno}: ${gaps} fragmented bytes, the header says ${fragmented}`
  return undefined
}

/**
 * Checks the database of `size` pages that `page` reads (the state after `frames`, whole transactions):
 * the walk, then every page `frames` wrote. `trees`: `sqlite_schema`'s b-trees before the commit.
 */
export const check = (
  frames: ReadonlyArray<WalFrame.Frame>,
  trees: ReadonlyArray<Tree>,
  size: number,
  page: (pgno: number) => Uint8Array | undefined,
  pageBefore: (pgno: number) => Uint8Array | undefined
): Verdict => {
  const written = new Set<number>()
  for (const f of frames) if (f.pgno <= size) written.add(f.pgno)
  const page1 = page(1)
  if (page1 === undefined) return { _tag: "Fault", message: "page 1 is missing" }
  if (written.has(1)) {
    const before = pageBefore(1)
    // Beyond the file header, page 1 is the root of sqlite_schema: a schema change needs the whole check.
    if (before === undefined || Buffer.compare(before.subarray(100), page1.subarray(100)) !== 0) {
      return { _tag: "Full", why: "the commit changes the schema" }
    }
    // The file header: what SQLite reads of it before anything else.
    if (Buffer.compare(page1.subarray(0, 16), before.subarray(0, 16)) !== 0 || u16(page1, 16) !== u16(before, 16)) {
      return { _tag: "Fault", message: "page 1 changes the file's magic or page size" }
    }
    if (u32(page1, 24) === u32(page1, 92) && u32(page1, 28) !== size) {
      return { _tag: "Fault", message: `the header says ${u32(page1, 28)} pages, the commit ${size}` }
    }
    written.delete(1)
  }
  const schema = [{ name: "sqlite_schema", rootpage: 1 }, ...trees]
  const walked = walk(schema, size, page)
  if (typeof walked === "string") return { _tag: "Fault", message: walked }
  const { owner, tables } = walked
  const owned = (pgno: number) => owner[pgno] !== 0
  for (const pgno of written) {
    const code = owner[pgno]
    if (code === FREE) continue
    if (code === 0) return { _tag: "Full", why: `page ${pgno} is in no b-tree or freelist` }
    const tree = (code - 1) >> 1
    if (tree === 0) return { _tag: "Full", why: "the commit changes the schema" }
    const place: Place = { tree: schema[tree].name, table: tables[tree], leaf: (code - 1) % 2 === 1 }
    const problem = checkTreePage(pgno, page(pgno)!, place, size, owned)
    if (problem !== undefined) return { _tag: "Fault", message: problem }
  }
  return { _tag: "Ok", pages: written.size }
}
