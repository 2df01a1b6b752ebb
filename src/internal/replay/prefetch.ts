/**
 * Replay reads the rows it compares (the target's row at each update's or delete's key) a page at a time,
 * a few statements per table instead of one per change.
 *
 * A row read ahead stands for the row the change meets only while nothing in between wrote it. Replay's
 * own statements write only the row at their key when no trigger fires, no foreign-key action runs and no
 * constraint of the table resolves a conflict by REPLACE (see {@link enabled}); under those conditions a
 * row read ahead is used unless an earlier change of the same replay wrote at its key ({@link Prefetch}
 * tracks the written keys), and is read again by itself otherwise. A savepoint rollback or a schema change
 * forgets everything read ahead.
 *
 * The plan (which changes need a row, which of them can be read together) is pure; reading runs on an
 * executor.
 *
 * @internal
 */
import type { LogChange, Values } from "../capture/changeLog.js"
import type { Executor } from "../sqlite/executor.js"
import { ident } from "../sqlite/sqlText.js"
import * as SqlValue from "../sqlite/sqlValue.js"
import type * as TableInfo from "../sqlite/tableInfo.js"
import { type Key, lookupKey } from "./replayValues.js"

/** Keys read by one statement (each key column is one bound parameter; SQLite allows 32766). */
export const CHUNK = 500

/** One change of a page whose row is read ahead: its position in the page and its lookup key. */
export interface Wanted {
  readonly index: number
  readonly key: Key
}

/**
 * Pure: the changes of `page` whose current row replay will read (updates and deletes; inserts are written
 * first and read only when their key is taken), grouped by table, up to the first schema change (the
 * tables after it may not be the ones described now). A key holding NULL or TEXT given as bytes is read
 * by itself (`IS` and `CAST` semantics the batched read does not have). `tableOf` answers the description
 * of a table, undefined when replay will not read ahead on it.
 */
export const plan = (
  page: ReadonlyArray<LogChange>,
  tableOf: (name: string) => TableInfo.TableInfo | undefined
): ReadonlyMap<string, ReadonlyArray<Wanted>> => {
  const byTable = new Map<string, Array<Wanted>>()
  for (let index = 0; index < page.length; index++) {
    const change = page[index]!
    if (change.kind === "ddl") break
    if (change.kind === "insert") continue
    const table = tableOf(change.table)
    if (table === undefined || table.columns.length === 0) continue
    const key = lookupKey(change, table)
    if (key === undefined || !key.values.every(batchable)) continue
    let wanted = byTable.get(change.table)
    if (wanted === undefined) {
      wanted = []
      byTable.set(change.table, wanted)
    }
    wanted.push({ index, key })
  }
  return byTable
}

const batchable = (value: SqlValue.SqlValue) => value !== null && !(value instanceof SqlValue.TextBytes)

const hexOf = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex")

/**
 * Pure: a token for a key such that two keys SQLite may take for the same row get the same token (numbers
 * by value whatever their storage class or text form, text compared without case and trailing spaces, as
 * NOCASE and RTRIM collations do). Distinct rows may share a token: that only makes replay read again. A
 * key of one number is its own token (the common rowid or INTEGER PRIMARY KEY: nothing to build).
 */
export const token = (values: ReadonlyArray<SqlValue.SqlValue>): string | number => {
  if (values.length === 1) {
    const value = values[0]!
    if (typeof value === "bigint" || typeof value === "number") return Number(value)
  }
  let out = ""
  for (const value of values) {
    if (value === null) out += "\u0001z"
    else if (typeof value === "bigint" || typeof value === "number") out += `\u0001n${Number(value)}`
    else if (typeof value === "string") {
      const trimmed = value.trim()
      const n = trimmed === "" ? NaN : Number(trimmed)
      out += Number.isNaN(n) ? `\u0001s${value.toLowerCase().trimEnd()}` : `\u0001n${n}`
    } else out += `\u0001b${hexOf(value instanceof SqlValue.TextBytes ? value.bytes : value)}`
  }
  // a one-column text key that reads as a number meets the number's own token
  return values.length === 1 && out.startsWith("\u0001n") ? Number(out.slice(2)) : out
}

/** Pure: the statement reading the rows at `count` keys of `table` (`i` = the key's place in the list). */
export const selectText = (table: TableInfo.TableInfo, keyColumns: ReadonlyArray<string>, count: number): string => {
  const row = `(?, ${keyColumns.map(() => "?").join(", ")})`
  const rows = Array.from({ length: count }, () => row).join(", ")
  const names = ["i", ...keyColumns.map((_, j) => `k${j}`)]
  // (the list's name cannot be a user table's: `_sync_` names are the engine's)
  const on = keyColumns.map((column, j) => `t.${ident(column)} = _sync_keys.${names[j + 1]}`).join(" AND ")
  return `WITH _sync_keys(${names.join(", ")}) AS (VALUES ${rows}) ` +
    `SELECT _sync_keys.i, ${table.columns.map((column) => `t.${ident(column)}`).join(", ")} ` +
    `FROM _sync_keys JOIN main.${ident(table.name)} AS t ON ${on}`
}

const texts = new WeakMap<TableInfo.TableInfo, Map<string, string>>()
const cachedSelect = (table: TableInfo.TableInfo, keyColumns: ReadonlyArray<string>, count: number) => {
  let map = texts.get(table)
  if (map === undefined) {
    map = new Map()
    texts.set(table, map)
  }
  const cacheKey = `${keyColumns.join("\u0000")}|${count}`
  let text = map.get(cacheKey)
  if (text === undefined) {
    text = selectText(table, keyColumns, count)
    if (map.size >= 64) map.clear()
    map.set(cacheKey, text)
  }
  return text
}

/**
 * Reads the rows at the wanted keys of `table`, {@link CHUNK} keys a statement. The answer maps a change's
 * index in its page to the row (null: no row there); an index missing from it is read by itself (its row
 * may hold TEXT that is not valid UTF-8, which better-sqlite3 reads lossily).
 */
export const read = (
  exec: Executor,
  table: TableInfo.TableInfo,
  wanted: ReadonlyArray<Wanted>,
  into: Map<number, Values | null>
): void => {
  const byKeyColumns = new Map<string, Array<Wanted>>()
  for (const w of wanted) {
    const name = w.key.columns.join("\u0000")
    let list = byKeyColumns.get(name)
    if (list === undefined) {
      list = []
      byKeyColumns.set(name, list)
    }
    list.push(w)
  }
  for (const list of byKeyColumns.values()) {
    const keyColumns = list[0]!.key.columns
    for (let from = 0; from < list.length; from += CHUNK) {
      const chunk = list.slice(from, from + CHUNK)
      const params: Array<unknown> = []
      for (const w of chunk) {
        params.push(w.index)
        for (const value of w.key.values) params.push(SqlValue.bindable(value))
      }
      const found = new Set<number>()
      const lossy = new Set<number>()
      for (const row of exec.values(cachedSelect(table, keyColumns, chunk.length), params)) {
        const index = Number(row[0])
        // two rows at one key (the key is no unique constraint): read by itself, as a single read does
        if (found.has(index)) lossy.add(index)
        found.add(index)
        let exact = true
        const values = new Array<SqlValue.SqlValue>(table.columns.length)
        for (let i = 0; i < values.length; i++) {
          const value = row[i + 1]
          if (SqlValue.mayBeLossy(value)) exact = false
          values[i] = SqlValue.fromDriver(value)
        }
        if (exact) into.set(index, { columns: table.columns, values })
        else lossy.add(index)
      }
      for (const w of chunk) {
        if (lossy.has(w.index)) into.delete(w.index)
        else if (!found.has(w.index)) into.set(w.index, null)
      }
    }
  }
}

/**
 * Whether replay may read ahead on this target at all: no user trigger fires (replay suspends the target's
 * own, but not TEMP ones other than capture's), and no foreign key can cascade a write to other rows.
 */
export const PROBE = `SELECT NOT EXISTS (SELECT 1 FROM temp.sqlite_schema WHERE type = 'trigger' AND substr(name, 1, 6) <> '_sync_')
  AND NOT ((SELECT foreign_keys FROM pragma_foreign_keys) = 1 AND EXISTS (
    SELECT 1 FROM main.sqlite_schema AS m JOIN pragma_foreign_key_list(m.name) AS f WHERE m.type = 'table'))`

/** Whether a table's definition lets a write replace other rows (`ON CONFLICT REPLACE` on a constraint). */
export const replaces = (createSql: string | null): boolean => createSql === null || /\breplace\b/i.test(createSql)

/**
 * Rows read ahead for one page, and the keys written since (per table). `take` answers the row for the
 * change at `index`, or undefined when it must be read by itself.
 */
export class Prefetch {
  private rows = new Map<number, Values | null>()
  private readonly written = new Map<string, Set<string | number>>()

  /** The map to fill for a new page (writes before it were read by it: they are forgotten). */
  reset(): Map<number, Values | null> {
    this.rows = new Map()
    this.written.clear()
    return this.rows
  }

  /** Forgets every row read ahead (a rollback to a savepoint, a schema change, a write that moves a key). */
  clear(): void {
    this.rows.clear()
  }

  take(index: number, table: string, key: Key): Values | null | undefined {
    const row = this.rows.get(index)
    if (row === undefined) return undefined
    this.rows.delete(index)
    const written = this.written.get(table)
    if (written !== undefined && written.has(token(key.values))) return undefined
    return row
  }

  /** A write at `key` of `table`: a row read ahead there is stale. */
  wrote(table: string, key: Key): void {
    if (this.rows.size === 0) return
    let set = this.written.get(table)
    if (set === undefined) {
      set = new Set()
      this.written.set(table, set)
    }
    set.add(token(key.values))
  }
}
