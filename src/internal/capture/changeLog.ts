/**
 * The change log's storage format and its typed rows.
 *
 * `_sync_changes` keeps each value in a column of its own (`v0`, `v1`, ...; no affinity), so SQLite stores it
 * exactly as the row held it — storage class, all 64 bits of an INTEGER, a REAL's bits (-0.0 included),
 * TEXT's bytes (NULs and invalid UTF-8 included), a BLOB of any size — at the value's own size. An insert's
 * after image takes `v0..v(n-1)`, a delete's before image too; an update's before image `v0..v(n-1)` and its
 * after image `vn..v(2n-1)`. `cols` names the n columns (a JSON array). The log widens (ALTER TABLE ADD
 * COLUMN) when a wider table is captured.
 *
 * The first format (before 0.2) held JSON objects of `quote()` literals in `before`/`after`; {@link migrate}
 * rewrites such a log in place, in one transaction.
 *
 * @internal
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as ChangeCapture from "../../ChangeCapture.js"
import type { Executor } from "../sqlite/executor.js"
import { ident } from "../sqlite/sqlText.js"
import * as SqlValue from "../sqlite/sqlValue.js"

export const FIXED_COLUMNS = ["id", "tx_id", "tbl", "kind", "cols", "before_rowid", "after_rowid", "sql"] as const

/** Width of a new log; it grows with the widest table captured. */
export const INITIAL_WIDTH = 2

/**
 * SQLite allows 2000 columns per table: a row of the log holds the fixed columns and both images of an
 * update of a table of up to {@link MAX_PAIRED} columns. An update of a wider table keeps its after image in
 * `_sync_changes_after` under the same id; tables of more than {@link MAX_TABLE_COLUMNS} columns are not
 * captured.
 */
export const MAX_TABLE_COLUMNS = 2000 - FIXED_COLUMNS.length
export const MAX_PAIRED = Math.floor(MAX_TABLE_COLUMNS / 2)

/** Whether an update of a table with `n` columns keeps its after image in `_sync_changes_after`. */
export const splitUpdate = (n: number) => n > MAX_PAIRED

export const AFTER_TABLE = "_sync_changes_after"

export const valueColumn = (i: number) => `v${i}`

const valueColumns = (from: number, to: number) =>
  Array.from({ length: to - from }, (_, i) => valueColumn(from + i))

/**
 * The log's table. Its ids are plain rowids handed out by the triggers ({@link nextId}), not AUTOINCREMENT:
 * AUTOINCREMENT rewrites `sqlite_sequence` at the end of every statement that logs a row, a third page (and
 * WAL frame) in every one-row transaction. What AUTOINCREMENT guaranteed — no id handed out again once its
 * rows are pruned — is kept by {@link FLOOR_TABLE}. Its CHECK on `kind` is a chain of comparisons: `kind IN (...)` builds a lookup table
 * each time it is evaluated inside a trigger, once per captured row (a log created by an earlier version
 * keeps that form; the two accept the same rows).
 */
export const createChangesTable = `CREATE TABLE IF NOT EXISTS main._sync_changes (
  id INTEGER PRIMARY KEY,
  tx_id INTEGER NOT NULL,
  tbl TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind = 'insert' OR kind = 'update' OR kind = 'delete' OR kind = 'ddl'),
  cols TEXT,
  before_rowid,
  after_rowid,
  sql TEXT,
  ${valueColumns(0, INITIAL_WIDTH).join(", ")}
)`

/**
 * The highest change id pruned or acknowledged, kept when the log's rows are pruned (or a copy's log holds
 * only its still-pending changes), so that ids are never handed out twice. One row; made the first time a
 * floor must be kept (a new log is one schema change, not two).
 */
export const FLOOR_TABLE = "_sync_change_floor"

export const createFloorTable = `CREATE TABLE IF NOT EXISTS main.${FLOOR_TABLE} (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  floor INTEGER NOT NULL
)`

/**
 * The next change id (SQL), on a connection with capture installed: above every id the log holds and above
 * the floor the connection's session holds (loaded from {@link storedFloor}). Both lookups are a seek to one
 * end of a b-tree.
 */
export const nextId = `(max(coalesce((SELECT max(id) FROM main._sync_changes), 0), ` +
  `(SELECT floor FROM temp._sync_session WHERE id = 1)) + 1)`

const tableExists = (exec: Executor, name: string) =>
  exec.values(`SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?`, [name]).length > 0

/** Whether main holds the id floor table. */
export const hasFloor = (exec: Executor) => tableExists(exec, FLOOR_TABLE)

/**
 * Keeps `floor` in main (the table made if absent; written only when the floor moves: an unchanged page costs
 * no WAL frame). True when the table was made (a schema change).
 */
export const persistFloor = (exec: Executor, floor: number): boolean => {
  const made = !hasFloor(exec)
  if (made) {
    if (floor <= 0) return false
    exec.once(createFloorTable)
  }
  exec.run(
    `INSERT INTO main.${FLOOR_TABLE} (id, floor) VALUES (1, ?)
     ON CONFLICT (id) DO UPDATE SET floor = excluded.floor WHERE floor < excluded.floor`,
    [Math.trunc(floor)]
  )
  return made
}

/**
 * The floor main keeps: its floor table, an earlier version's AUTOINCREMENT sequence, and the highest change
 * id the replica's progress counts as applied. Reads only.
 */
export const storedFloor = (exec: Executor): number => {
  const parts = ["0"]
  if (hasFloor(exec)) parts.push(`coalesce((SELECT floor FROM main.${FLOOR_TABLE} WHERE id = 1), 0)`)
  if (tableExists(exec, "sqlite_sequence")) {
    parts.push("coalesce((SELECT seq FROM main.sqlite_sequence WHERE name = '_sync_changes'), 0)")
  }
  if (tableExists(exec, "_sync_progress")) parts.push("coalesce((SELECT max(change_id) FROM main._sync_progress), 0)")
  return Number(exec.values(`SELECT max(${parts.join(", ")})`)[0]![0])
}

/** The last id handed out: the log's highest id or the stored floor, whichever is higher. Reads only. */
export const lastId = (exec: Executor): number =>
  Math.max(Number(exec.values(`SELECT coalesce(max(id), 0) FROM main._sync_changes`)[0]![0]), storedFloor(exec))

/** Whether the log in `main` still has the AUTOINCREMENT id of versions before 0.3. */
export const isAutoincrement = (exec: Executor): boolean =>
  exec.values(
    `SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = '_sync_changes' AND sql LIKE '%AUTOINCREMENT%'`
  ).length > 0

/**
 * Rewrites an AUTOINCREMENT log as one with plain ids (see {@link createChangesTable}), every row and its
 * width kept, the id sequence moved to the floor. Within the caller's transaction.
 */
export const dropAutoincrement = (exec: Executor) => {
  const sequence = exec.values(`SELECT seq FROM main.sqlite_sequence WHERE name = '_sync_changes'`)
  const width = widthOf(exec, "main", "_sync_changes")
  const columns = exec.values(`SELECT name FROM pragma_table_info('_sync_changes', 'main') ORDER BY cid`)
    .map((row) => ident(row[0] as string)).join(", ")
  exec.once(`ALTER TABLE main._sync_changes RENAME TO _sync_changes_autoincrement`)
  exec.once(createChangesTableOfWidth(width))
  exec.once(`INSERT INTO main._sync_changes (${columns}) SELECT ${columns} FROM main._sync_changes_autoincrement`)
  exec.once(`DROP TABLE main._sync_changes_autoincrement`)
  const last = exec.values(`SELECT coalesce(max(id), 0) FROM main._sync_changes`)[0]![0]
  persistFloor(exec, Math.max(sequence.length === 0 ? 0 : Number(sequence[0]![0]), Number(last)))
}

/** `createChangesTable` with `width` value columns. */
export const createChangesTableOfWidth = (width: number) =>
  createChangesTable.replace(valueColumns(0, INITIAL_WIDTH).join(", "), valueColumns(0, Math.max(width, INITIAL_WIDTH)).join(", "))

/**
 * Rows a BEFORE trigger found in the way of a write through a UNIQUE index other than the key (see
 * capture.ts), with their values laid out as in the log.
 */
export const createEvicted = (width: number) => `CREATE TEMP TABLE IF NOT EXISTS _sync_evicted (
  seq INTEGER PRIMARY KEY,
  tbl TEXT NOT NULL,
  before_rowid,
  ${valueColumns(0, Math.max(1, width)).join(", ")}
)`

/** Images of one change: the column names and their values, in the same order. */
export interface Values {
  readonly columns: ReadonlyArray<string>
  readonly values: ReadonlyArray<SqlValue.SqlValue>
}

/** A change as the log holds it: values exact (see sqlValue.ts). */
export interface LogChange {
  readonly id: number
  readonly txId: number
  readonly table: string
  readonly kind: "insert" | "update" | "delete" | "ddl"
  readonly before: Values | null
  readonly after: Values | null
  /** The rowids of tables identified by rowid (no primary key); null otherwise. */
  readonly rowidBefore: SqlValue.SqlValue
  readonly rowidAfter: SqlValue.SqlValue
  readonly sql: string | null
}

// ---------------------------------------------------------------------------------------------------------
// Pure conversions to and from the public model (images of SQL literals)
// ---------------------------------------------------------------------------------------------------------

const imageOf = (values: Values): ChangeCapture.Image =>
  // fromEntries defines own properties: a column named __proto__ stays a column
  Object.fromEntries(values.columns.map((column, i) => [column, SqlValue.toLiteral(values.values[i] ?? null)]))

/** The public form of a change (values as exact SQL literals). */
export const toPublic = (change: LogChange): ChangeCapture.Change => {
  const base = {
    id: change.id,
    txId: change.txId,
    table: change.table,
    kind: change.kind,
    before: change.before === null ? null : imageOf(change.before),
    after: change.after === null ? null : imageOf(change.after)
  }
  const withRowid = change.rowidBefore !== null || change.rowidAfter !== null
    ? {
      ...base,
      rowid: {
        before: change.rowidBefore === null ? null : SqlValue.toLiteral(change.rowidBefore),
        after: change.rowidAfter === null ? null : SqlValue.toLiteral(change.rowidAfter)
      }
    }
    : base
  return change.sql !== null ? { ...withRowid, sql: change.sql } : withRowid
}

/** Values of an image of literals; undefined when one is not a literal (the column is named). */
export const valuesOf = (image: ChangeCapture.Image): Values | { readonly invalid: string } => {
  const columns = Object.keys(image)
  const values: Array<SqlValue.SqlValue> = []
  for (const column of columns) {
    const literal = image[column]
    const value = typeof literal === "string" ? SqlValue.fromLiteral(literal) : undefined
    if (value === undefined) return { invalid: column }
    values.push(value)
  }
  return { columns, values }
}

/** The log form of a public change; a string naming what is not a literal when one value is not. */
export const fromPublic = (change: ChangeCapture.Change): LogChange | string => {
  const convert = (image: ChangeCapture.Image | null) => image === null ? null : valuesOf(image)
  const before = convert(change.before)
  if (before !== null && "invalid" in before) return `column ${before.invalid} of the before image`
  const after = convert(change.after)
  if (after !== null && "invalid" in after) return `column ${after.invalid} of the after image`
  const rowid = (literal: string | null | undefined) =>
    literal === null || literal === undefined ? null : SqlValue.fromLiteral(literal)
  const rowidBefore = rowid(change.rowid?.before)
  const rowidAfter = rowid(change.rowid?.after)
  if (rowidBefore === undefined || rowidAfter === undefined) return "the rowid"
  return {
    id: change.id,
    txId: change.txId,
    table: change.table,
    kind: change.kind,
    before,
    after,
    rowidBefore,
    rowidAfter,
    sql: change.sql ?? null
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reading and writing rows (synchronous, on an executor)
// ---------------------------------------------------------------------------------------------------------

const columnLists = new Map<string, ReadonlyArray<string>>()
const columnsOf = (json: string): ReadonlyArray<string> => {
  let columns = columnLists.get(json)
  if (columns === undefined) {
    columns = JSON.parse(json) as ReadonlyArray<string>
    if (columnLists.size >= 1024) columnLists.clear()
    columnLists.set(json, columns)
  }
  return columns
}

/** The number of value columns of `table` (`main._sync_changes`, `main._sync_changes_after`, `temp._sync_evicted`). */
export const widthOf = (exec: Executor, schema: "main" | "temp", table: string): number => {
  const rows = exec.values(
    `SELECT count(*) AS n FROM pragma_table_info(?, ?) WHERE name GLOB 'v[0-9]*'`,
    [table, schema]
  )
  return Number(rows[0]![0])
}

const createAfterTable = (width: number) =>
  `CREATE TABLE IF NOT EXISTS main.${AFTER_TABLE} (id INTEGER PRIMARY KEY, ${valueColumns(0, Math.max(1, width)).join(", ")})`

/**
 * Makes `table` hold at least `width` value columns (created when absent, for the after-image table). A
 * narrower table is rebuilt at once (one statement per column would reparse the schema each time), its rows
 * and, for the log, its id sequence kept.
 */
export const widen = (exec: Executor, schema: "main" | "temp", table: string, width: number): number => {
  if (table === AFTER_TABLE) exec.once(createAfterTable(width))
  const current = widthOf(exec, schema, table)
  if (current >= width) return current
  const name = `${schema}.${ident(table)}`
  const fixed = exec.values(`SELECT name FROM pragma_table_info(?, ?) WHERE name NOT GLOB 'v[0-9]*' ORDER BY cid`, [table, schema])
    .map((row) => row[0] as string)
  const kept = [...fixed, ...valueColumns(0, current)].map(ident).join(", ")
  // (a log of an earlier version had an AUTOINCREMENT sequence; rebuilt, it keeps it until ensureLog drops it)
  const sequence = tableExists(exec, "sqlite_sequence")
    ? exec.values(`SELECT seq FROM main.sqlite_sequence WHERE name = ?`, [table])
    : []
  const createSql = table === "_sync_changes"
    ? createChangesTableOfWidth(width)
    : table === AFTER_TABLE
    ? createAfterTable(width)
    : undefined
  if (createSql === undefined) {
    // the eviction scratch table (empty between statements): recreated
    exec.once(`DROP TABLE ${name}`)
    exec.once(createEvicted(width))
    return width
  }
  exec.once(`ALTER TABLE ${name} RENAME TO ${ident(`${table}_narrow`)}`)
  exec.once(createSql)
  exec.once(`INSERT INTO ${name} (${kept}) SELECT ${kept} FROM ${schema}.${ident(`${table}_narrow`)}`)
  exec.once(`DROP TABLE ${schema}.${ident(`${table}_narrow`)}`)
  if (sequence.length > 0) {
    exec.run(`INSERT INTO main.sqlite_sequence (name, seq) SELECT ?, 0 WHERE NOT EXISTS (SELECT 1 FROM main.sqlite_sequence WHERE name = ?)`, [table, table])
    exec.run(`UPDATE main.sqlite_sequence SET seq = max(seq, ?) WHERE name = ?`, [sequence[0]![0], table])
  }
  return width
}

const toChange = (row: ReadonlyArray<unknown>, afterImage?: (columns: ReadonlyArray<string>) => Values): LogChange => {
  const kind = row[3] as LogChange["kind"]
  const columns = row[4] === null ? [] : columnsOf(row[4] as string)
  const n = columns.length
  const image = (from: number): Values => {
    const values = new Array<SqlValue.SqlValue>(n)
    for (let i = 0; i < n; i++) values[i] = SqlValue.fromDriver(row[8 + from + i])
    return { columns, values }
  }
  return {
    id: Number(row[0]),
    txId: Number(row[1]),
    table: row[2] as string,
    kind,
    before: kind === "update" || kind === "delete" ? image(0) : null,
    after: kind === "insert" ? image(0) : kind === "update" ? (splitUpdate(n) ? afterImage!(columns) : image(n)) : null,
    rowidBefore: SqlValue.fromDriver(row[5]),
    rowidAfter: SqlValue.fromDriver(row[6]),
    sql: row[7] as string | null
  }
}

/**
 * A row read again with its TEXT as bytes (better-sqlite3 decodes invalid UTF-8 lossily): each of the given
 * columns as `typeof` and its bytes.
 */
const exactRow = (exec: Executor, from: string, columns: ReadonlyArray<string>, where: string, params: ReadonlyArray<unknown>) => {
  const select = columns.map((column, i) =>
    `typeof(${column}) AS t${i}, CASE typeof(${column}) WHEN 'text' THEN CAST(${column} AS BLOB) ELSE ${column} END AS c${i}`
  )
  const [row] = exec.values(`SELECT ${select.join(", ")} FROM ${from} WHERE ${where}`, params)
  return columns.map((_, i) => {
    const type = row![2 * i]
    const value = row![2 * i + 1]
    return type === "text" ? SqlValue.textFromBytes(value as Uint8Array) : SqlValue.fromDriver(value)
  })
}

/** Changes with id > `afterId`, in order, at most `limit`. */
export const readPage = (exec: Executor, afterId: number, limit: number): ReadonlyArray<LogChange> => {
  const width = widthOf(exec, "main", "_sync_changes")
  const columns = [...FIXED_COLUMNS, ...valueColumns(0, width)]
  const text = `SELECT ${columns.join(", ")} FROM main._sync_changes WHERE id > ? ORDER BY id LIMIT ?`
  const rows = exec.values(text, [afterId, limit])
  return rows.map((row) => {
    // an update of a table too wide for one row keeps its after image under the same id
    const afterImage = (names: ReadonlyArray<string>): Values => {
      const slots = valueColumns(0, names.length)
      const [values] = exec.values(`SELECT ${slots.join(", ")} FROM main.${AFTER_TABLE} WHERE id = ?`, [row[0]])
      const exact = values!.some(SqlValue.mayBeLossy)
        ? exactRow(exec, `main.${AFTER_TABLE}`, slots, "id = ?", [row[0]])
        : values!.map(SqlValue.fromDriver)
      return { columns: names, values: exact }
    }
    for (let i = 5; i < row.length; i++) {
      if (i !== 7 && SqlValue.mayBeLossy(row[i])) {
        const exact = exactRow(exec, "main._sync_changes", columns.slice(5), "id = ?", [row[0]])
        return toChange([...row.slice(0, 5), ...exact.slice(0, 2), row[7], ...exact.slice(3)], afterImage)
      }
    }
    return toChange(row, afterImage)
  })
}

/**
 * The column names and the values of a change in log order (before then after for an update). An update
 * whose images name different columns (built by hand) is logged under the after image's columns.
 */
const logLayout = (change: LogChange): { readonly columns: ReadonlyArray<string> | null; readonly values: ReadonlyArray<SqlValue.SqlValue> } => {
  switch (change.kind) {
    case "insert":
      return change.after!
    case "delete":
      return change.before!
    case "ddl":
      return { columns: null, values: [] }
    case "update": {
      const before = change.before!
      const after = change.after!
      if (before.columns === after.columns || JSON.stringify(before.columns) === JSON.stringify(after.columns)) {
        return { columns: after.columns, values: [...before.values, ...after.values] }
      }
      const byName = new Map(before.columns.map((column, i) => [column, before.values[i]!]))
      return { columns: after.columns, values: [...after.columns.map((column) => byName.get(column) ?? null), ...after.values] }
    }
  }
}

/** Writes `change` into the log with its own id (pull mode re-records pending changes into Synced). */
export const record = (exec: Executor, change: LogChange, width: number): number => {
  const layout = logLayout(change)
  const columns = layout.columns
  const split = change.kind === "update" && columns !== null && splitUpdate(columns.length)
  const values = split ? layout.values.slice(0, columns!.length) : layout.values
  if (split) {
    widen(exec, "main", AFTER_TABLE, columns!.length)
    const after = layout.values.slice(columns!.length)
    exec.run(
      `INSERT OR REPLACE INTO main.${AFTER_TABLE} (id, ${valueColumns(0, after.length).join(", ")}) ` +
        `VALUES (?, ${after.map(SqlValue.placeholder).join(", ")})`,
      [change.id, ...after.map(SqlValue.bindable)]
    )
  }
  const needed = Math.max(width, values.length)
  if (needed > width) widen(exec, "main", "_sync_changes", needed)
  const fixed = [
    change.id,
    change.txId,
    change.table,
    change.kind,
    columns === null ? null : JSON.stringify(columns),
    SqlValue.bindable(change.rowidBefore),
    SqlValue.bindable(change.rowidAfter),
    change.sql
  ]
  const placeholders = [
    ...fixed.map((_, i) => i === 5 ? SqlValue.placeholder(change.rowidBefore) : i === 6 ? SqlValue.placeholder(change.rowidAfter) : "?"),
    ...values.map(SqlValue.placeholder)
  ]
  exec.run(
    `INSERT OR REPLACE INTO main._sync_changes (${[...FIXED_COLUMNS, ...valueColumns(0, values.length)].join(", ")}) ` +
      `VALUES (${placeholders.join(", ")})`,
    [...fixed, ...values.map(SqlValue.bindable)]
  )
  return needed
}

// ---------------------------------------------------------------------------------------------------------
// The first format
// ---------------------------------------------------------------------------------------------------------

/** Whether the log in `main` is in the first format (JSON images of literals). */
export const isFirstFormat = (exec: Executor): boolean =>
  exec.values(`SELECT 1 FROM pragma_table_info('_sync_changes', 'main') WHERE name = 'before'`).length > 0

/**
 * Rewrites a first-format log into the current one, keeping every id and the id sequence. Returns the
 * ids that could not be read (their images are not literals); the caller fails then and the transaction
 * rolls back.
 */
export const migrate = (exec: Executor): { readonly unreadable: ReadonlyArray<number> } => {
  const sequence = exec.values(`SELECT seq FROM main.sqlite_sequence WHERE name = '_sync_changes'`)
  const floor = sequence.length === 0 ? 0 : Number(sequence[0]![0])
  const old = exec.values(
    `SELECT id, tx_id, tbl, kind, before, after, before_rowid, after_rowid, sql FROM main._sync_changes ORDER BY id`
  )
  exec.once(`DROP TABLE main._sync_changes`)
  exec.once(createChangesTable)
  let width = INITIAL_WIDTH
  const unreadable: Array<number> = []
  for (const row of old) {
    const parse = (json: unknown) => typeof json === "string" ? JSON.parse(json) as ChangeCapture.Image : null
    const rowid = (literal: unknown) => typeof literal === "string" ? literal : null
    let change: ReturnType<typeof fromPublic>
    try {
      change = fromPublic({
        id: Number(row[0]),
        txId: Number(row[1]),
        table: row[2] as string,
        kind: row[3] as LogChange["kind"],
        before: parse(row[4]),
        after: parse(row[5]),
        ...(row[6] !== null || row[7] !== null ? { rowid: { before: rowid(row[6]), after: rowid(row[7]) } } : {}),
        ...(row[8] !== null ? { sql: row[8] as string } : {})
      })
    } catch {
      change = "its JSON"
    }
    if (typeof change === "string") {
      unreadable.push(Number(row[0]))
      continue
    }
    width = record(exec, change, width)
  }
  const last = old.length === 0 ? 0 : Number(old[old.length - 1]![0])
  persistFloor(exec, Math.max(floor, last))
  return { unreadable }
}

/** Whether main holds a `_sync_changes` table. */
export const exists = (sql: SqlClient.SqlClient): Effect.Effect<boolean, SqlError> =>
  Effect.map(
    sql<{ readonly n: number }>`
      SELECT count(*) AS n FROM main.sqlite_schema WHERE type = 'table' AND name = '_sync_changes'`.withoutTransform,
    (rows) => Number(rows[0]!.n) > 0
  )
