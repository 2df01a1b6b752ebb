/**
 * Replay's per-change decision and the statements that carry it out, on exact values (pure).
 *
 * The same rules as the literal form in replay.ts (`decide`, the public planning functions), on the values
 * the change log holds: the decision compares values exactly (storage class and bits), and the statements
 * are texts with `?` placeholders plus the values to bind, so one prepared statement serves every change of
 * the same table, kind and column set.
 *
 * @internal
 */
import type * as ChangeReplay from "../../ChangeReplay.js"
import type { LogChange, Values } from "../capture/changeLog.js"
import { ident } from "../sqlite/sqlText.js"
import * as SqlValue from "../sqlite/sqlValue.js"
import type * as TableInfo from "../sqlite/tableInfo.js"

/** Columns and values identifying one row. */
export interface Key {
  readonly columns: ReadonlyArray<string>
  readonly values: ReadonlyArray<SqlValue.SqlValue>
}

export type Decision =
  | { readonly _tag: "Upsert"; readonly key: Key; readonly row: Values; readonly rowid: SqlValue.SqlValue; readonly conflict: ChangeReplay.ConflictKind | null }
  | { readonly _tag: "Update"; readonly key: Key; readonly set: Values; readonly setRowid: SqlValue.SqlValue; readonly conflict: ChangeReplay.ConflictKind | null }
  | { readonly _tag: "Delete"; readonly key: Key; readonly conflict: ChangeReplay.ConflictKind | null }
  | { readonly _tag: "Skip"; readonly conflict: ChangeReplay.ConflictKind | null }
  | { readonly _tag: "Ddl"; readonly sql: string }
  | { readonly _tag: "Invalid"; readonly reason: string }

const positions = new WeakMap<ReadonlyArray<string>, Map<string, number>>()

/** The position of `column` in `columns` (-1 when absent). */
export const position = (columns: ReadonlyArray<string>, column: string): number => {
  let map = positions.get(columns)
  if (map === undefined) {
    map = new Map()
    // the first occurrence wins, as for an object's keys
    for (let i = columns.length - 1; i >= 0; i--) map.set(columns[i]!, i)
    positions.set(columns, map)
  }
  return map.get(column) ?? -1
}

/** The value of `column` in an image; undefined when the image has no such column. */
export const valueAt = (image: Values, column: string): SqlValue.SqlValue | undefined => {
  const i = position(image.columns, column)
  return i < 0 ? undefined : image.values[i]
}

/** The key of a row image on `table`: its primary key columns, else its rowid. Undefined: no identity. */
export const keyOf = (table: TableInfo.TableInfo, image: Values, rowid: SqlValue.SqlValue): Key | undefined => {
  if (table.primaryKey.length > 0) {
    const values: Array<SqlValue.SqlValue> = []
    for (const column of table.primaryKey) {
      const value = valueAt(image, column)
      if (value === undefined) return undefined
      values.push(value)
    }
    return { columns: table.primaryKey, values }
  }
  if (table.rowidAlias !== null && rowid !== null) return { columns: [table.rowidAlias], values: [rowid] }
  return undefined
}

/** The key at which replay looks up the row the target holds: the before key, or for an insert the after key. */
export const lookupKey = (change: LogChange, table: TableInfo.TableInfo): Key | undefined =>
  change.kind === "insert"
    ? change.after === null ? undefined : keyOf(table, change.after, change.rowidAfter)
    : change.before === null ? undefined : keyOf(table, change.before, change.rowidBefore)

/** Equal on the columns both images have (a column dropped or added on one side is not a difference). */
export const sameValues = (a: Values, b: Values): boolean => {
  if (a.columns === b.columns || sameNames(a.columns, b.columns)) {
    for (let i = 0; i < a.values.length; i++) if (!SqlValue.equals(a.values[i]!, b.values[i]!)) return false
    return true
  }
  for (let i = 0; i < a.columns.length; i++) {
    const other = valueAt(b, a.columns[i]!)
    if (other !== undefined && !SqlValue.equals(a.values[i]!, other)) return false
  }
  return true
}

const sameNames = (a: ReadonlyArray<string>, b: ReadonlyArray<string>): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** The columns of `after` whose value differs from `before` (or that `before` lacks), with their values. */
export const changed = (before: Values, after: Values): Values => {
  const columns: Array<string> = []
  const values: Array<SqlValue.SqlValue> = []
  const aligned = before.columns === after.columns || sameNames(before.columns, after.columns)
  for (let i = 0; i < after.columns.length; i++) {
    const old = aligned ? before.values[i] : valueAt(before, after.columns[i]!)
    if (old === undefined || !SqlValue.equals(old, after.values[i]!)) {
      columns.push(after.columns[i]!)
      values.push(after.values[i]!)
    }
  }
  return { columns, values }
}

/**
 * Last push wins (the default): the local change is applied over whatever the target holds; without a
 * conflict an update writes only the columns it changed. The conflict kind is recorded for reporting (and
 * for the policy, which may settle it otherwise).
 */
export const decide = (change: LogChange, current: Values | null, table: TableInfo.TableInfo): Decision => {
  switch (change.kind) {
    case "ddl":
      return { _tag: "Ddl", sql: change.sql ?? "" }
    case "insert": {
      const afterKey = change.after === null ? undefined : keyOf(table, change.after, change.rowidAfter)
      if (change.after === null || afterKey === undefined) return { _tag: "Invalid", reason: "insert without a key" }
      if (current === null) return { _tag: "Upsert", key: afterKey, row: change.after, rowid: change.rowidAfter, conflict: null }
      if (sameValues(change.after, current)) return { _tag: "Skip", conflict: null }
      return { _tag: "Upsert", key: afterKey, row: change.after, rowid: change.rowidAfter, conflict: "KeyExists" }
    }
    case "update": {
      const beforeKey = change.before === null ? undefined : keyOf(table, change.before, change.rowidBefore)
      const afterKey = change.after === null ? undefined : keyOf(table, change.after, change.rowidAfter)
      if (change.before === null || change.after === null || beforeKey === undefined || afterKey === undefined) {
        return { _tag: "Invalid", reason: "update without a key" }
      }
      if (current === null) {
        return { _tag: "Upsert", key: afterKey, row: change.after, rowid: change.rowidAfter, conflict: "RowMissing" }
      }
      const set = changed(change.before, change.after)
      const setRowid = table.primaryKey.length === 0 && change.rowidAfter !== null &&
          !SqlValue.equals(change.rowidAfter, change.rowidBefore)
        ? change.rowidAfter
        : null
      const conflict = sameValues(change.before, current) ? null : "RowChanged" as const
      if (set.columns.length === 0 && setRowid === null) return { _tag: "Skip", conflict }
      return { _tag: "Update", key: beforeKey, set, setRowid, conflict }
    }
    case "delete": {
      const beforeKey = change.before === null ? undefined : keyOf(table, change.before, change.rowidBefore)
      if (change.before === null || beforeKey === undefined) return { _tag: "Invalid", reason: "delete without a key" }
      if (current === null) return { _tag: "Skip", conflict: "RowMissing" }
      return { _tag: "Delete", key: beforeKey, conflict: sameValues(change.before, current) ? null : "RowChanged" }
    }
  }
}

/**
 * The decision that writes `row` (a resolver's `Replace`) for `change`: an update moves/overwrites the row
 * at its before key, anything else upserts at the lookup key.
 */
export const replaceDecision = (
  change: LogChange,
  table: TableInfo.TableInfo,
  key: Key,
  current: Values | null,
  row: Values,
  conflict: ChangeReplay.ConflictKind | null
): Decision => {
  const rowid = change.rowidAfter ?? change.rowidBefore
  if (change.kind === "update" && current !== null) {
    const setRowid = table.primaryKey.length === 0 && rowid !== null && !SqlValue.equals(rowid, change.rowidBefore)
      ? rowid
      : null
    return { _tag: "Update", key, set: row, setRowid, conflict }
  }
  return { _tag: "Upsert", key: keyOf(table, row, rowid) ?? key, row, rowid, conflict }
}

// ---------------------------------------------------------------------------------------------------------
// Statements (text with placeholders + values to bind)
// ---------------------------------------------------------------------------------------------------------

export interface Statement {
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
}

const targetColumns = new WeakMap<TableInfo.TableInfo, ReadonlySet<string>>()
const columnSet = (table: TableInfo.TableInfo) => {
  let set = targetColumns.get(table)
  if (set === undefined) {
    set = new Set(table.columns)
    targetColumns.set(table, set)
  }
  return set
}

/** Only columns the target has are written (a column dropped by another replica cannot hold a value). */
const onTarget = (table: TableInfo.TableInfo, image: Values): Values => {
  const columns = columnSet(table)
  if (image.columns.every((column) => columns.has(column))) return image
  const kept: Array<string> = []
  const values: Array<SqlValue.SqlValue> = []
  image.columns.forEach((column, i) => {
    if (columns.has(column)) {
      kept.push(column)
      values.push(image.values[i]!)
    }
  })
  return { columns: kept, values }
}

const whereKey = (key: Key): string =>
  key.columns.map((column, i) => `${ident(column)} IS ${SqlValue.placeholder(key.values[i]!)}`).join(" AND ")

const bind = (values: ReadonlyArray<SqlValue.SqlValue>) => values.map(SqlValue.bindable)

/**
 * Statement texts per table description (a new description after each schema change) and per key shape:
 * the texts repeat for every change of a table, so they are built once.
 */
const texts = new WeakMap<TableInfo.TableInfo, Map<string, string>>()
const cachedText = (table: TableInfo.TableInfo, cacheKey: string, build: () => string): string => {
  let map = texts.get(table)
  if (map === undefined) {
    map = new Map()
    texts.set(table, map)
  }
  let text = map.get(cacheKey)
  if (text === undefined) {
    text = build()
    if (map.size >= 256) map.clear()
    map.set(cacheKey, text)
  }
  return text
}

/** The row `table` holds at `key`: its columns, TEXT as bytes where asked (see readCurrent). */
export const selectCurrent = (table: TableInfo.TableInfo, key: Key, exact: boolean): Statement => ({
  sql: cachedText(table, `select|${exact}|${key.columns.length === 1 ? key.columns[0] : key.columns.join("\u0000")}|${SqlValue.shape(key.values)}`, () => selectText(table, key, exact)),
  params: bind(key.values)
})

/**
 * An insert that writes nothing when any uniqueness constraint (the key or another UNIQUE index) already
 * holds the row's values: replay's first try for an insert, which needs no read when the key is free.
 * Undefined when it cannot stand for the decision (a key holding NULL never conflicts).
 */
export const insertIfAbsent = (change: LogChange, table: TableInfo.TableInfo): Statement | undefined => {
  const image = change.after
  if (image === null) return undefined
  const key = keyOf(table, image, change.rowidAfter)
  if (key === undefined || key.values.some((value) => value === null)) return undefined
  const row = onTarget(table, image)
  const withRowid = table.primaryKey.length === 0 && table.rowidAlias !== null && change.rowidAfter !== null
  const shape = SqlValue.shape(row.values)
  const sql = cachedText(table, `insert|${withRowid}|${row.columns.join("\u0000")}|${shape}|${withRowid ? SqlValue.shape([change.rowidAfter]) : ""}`, () => {
    const columns = row.columns.map(ident)
    const placeholders = row.values.map(SqlValue.placeholder)
    if (withRowid) {
      columns.unshift(ident(table.rowidAlias!))
      placeholders.unshift(SqlValue.placeholder(change.rowidAfter))
    }
    return `INSERT INTO ${ident(table.name)} (${columns.join(", ")}) VALUES (${placeholders.join(", ")}) ON CONFLICT DO NOTHING`
  })
  const params = bind(row.values)
  if (withRowid) params.unshift(SqlValue.bindable(change.rowidAfter))
  return { sql, params }
}

const selectText = (table: TableInfo.TableInfo, key: Key, exact: boolean): string =>
  // (aliases: a client returning objects keeps every column, whatever its name)
  `SELECT ${
    table.columns.map((column, i) =>
      exact
        ? `typeof(${ident(column)}) AS t${i}, ` +
          `CASE typeof(${ident(column)}) WHEN 'text' THEN CAST(${ident(column)} AS BLOB) ELSE ${ident(column)} END AS c${i}`
        : `${ident(column)} AS c${i}`
    ).join(", ")
  } FROM ${ident(table.name)} WHERE ${whereKey(key)} LIMIT 1`

/** Column names in a statement cache key: counted and NUL-terminated, so no two lists read the same. */
const names = (columns: ReadonlyArray<string>) => `${columns.length}\u0000${columns.join("\u0000")}\u0000`

/**
 * The statements carrying out a decision on `table`. Their texts depend only on the table, the kind of
 * decision, its column set and which values are TEXT given as bytes, so each is built once (and prepared
 * once by the executor) and serves every change of that shape.
 */
export const statements = (decision: Decision, table: TableInfo.TableInfo): ReadonlyArray<Statement> => {
  switch (decision._tag) {
    case "Skip":
    case "Invalid":
    case "Ddl":
      return []
    case "Delete": {
      const key = decision.key
      const sql = cachedText(table, `delete|${names(key.columns)}|${SqlValue.shape(key.values)}`, () =>
        `DELETE FROM ${ident(table.name)} WHERE ${whereKey(key)}`)
      return [{ sql, params: bind(key.values) }]
    }
    case "Update": {
      const set = onTarget(table, decision.set)
      const withRowid = decision.setRowid !== null && table.rowidAlias !== null
      if (set.columns.length === 0 && !withRowid) return []
      const key = decision.key
      const sql = cachedText(
        table,
        `update|${names(set.columns)}|${SqlValue.shape(set.values)}|${withRowid ? SqlValue.placeholder(decision.setRowid) : ""}|${
          names(key.columns)
        }|${SqlValue.shape(key.values)}`,
        () => {
          const assignments = set.columns.map((column, i) => `${ident(column)} = ${SqlValue.placeholder(set.values[i]!)}`)
          if (withRowid) assignments.push(`${ident(table.rowidAlias!)} = ${SqlValue.placeholder(decision.setRowid)}`)
          return `UPDATE ${ident(table.name)} SET ${assignments.join(", ")} WHERE ${whereKey(key)}`
        }
      )
      const params = bind(set.values)
      if (withRowid) params.push(SqlValue.bindable(decision.setRowid))
      for (const value of key.values) params.push(SqlValue.bindable(value))
      return [{ sql, params }]
    }
    case "Upsert": {
      const name = ident(table.name)
      const row = onTarget(table, decision.row)
      const withRowid = table.primaryKey.length === 0 && table.rowidAlias !== null && decision.rowid !== null
      const params = bind(row.values)
      if (withRowid) params.unshift(SqlValue.bindable(decision.rowid))
      const shape = `${names(row.columns)}|${SqlValue.shape(row.values)}|${withRowid ? SqlValue.placeholder(decision.rowid) : ""}`
      const insert = () => {
        const columns = row.columns.map(ident)
        const placeholders = row.values.map(SqlValue.placeholder)
        if (withRowid) {
          columns.unshift(ident(table.rowidAlias!))
          placeholders.unshift(SqlValue.placeholder(decision.rowid))
        }
        return `INSERT INTO ${name} (${columns.join(", ")}) VALUES (${placeholders.join(", ")})`
      }
      const key = decision.key
      // An upsert keyed on a NULL never conflicts (NULLs are distinct), so it would add a duplicate.
      if (key.values.some((value) => value === null)) {
        return [
          {
            sql: cachedText(table, `delete|${names(key.columns)}|${SqlValue.shape(key.values)}`, () =>
              `DELETE FROM ${name} WHERE ${whereKey(key)}`),
            params: bind(key.values)
          },
          { sql: cachedText(table, `insert|${shape}`, insert), params }
        ]
      }
      const sql = cachedText(table, `upsert|${shape}|${names(key.columns)}`, () => {
        const keyColumns = new Set(key.columns)
        const updates = row.columns.filter((column) => !keyColumns.has(column))
          .map((column) => `${ident(column)} = excluded.${ident(column)}`)
        const target = key.columns.map(ident).join(", ")
        return `${insert()} ON CONFLICT (${target}) DO ${updates.length === 0 ? "NOTHING" : `UPDATE SET ${updates.join(", ")}`}`
      })
      return [{ sql, params }]
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The public (literal) forms, for reporting and for user-supplied decisions
// ---------------------------------------------------------------------------------------------------------

const imageOf = (values: Values): Record<string, string> =>
  Object.fromEntries(values.columns.map((column, i) => [column, SqlValue.toLiteral(values.values[i]!)]))

export const publicKey = (key: Key): ChangeReplay.Key =>
  key.columns.map((column, i) => [column, SqlValue.toLiteral(key.values[i]!)] as const)

export const publicImage = (values: Values | null) => values === null ? null : imageOf(values)

const literalOrNull = (value: SqlValue.SqlValue) => value === null ? null : SqlValue.toLiteral(value)

export const toPublic = (decision: Decision): ChangeReplay.Decision => {
  switch (decision._tag) {
    case "Upsert":
      return { ...decision, key: publicKey(decision.key), row: imageOf(decision.row), rowid: literalOrNull(decision.rowid) }
    case "Update":
      return { ...decision, key: publicKey(decision.key), set: imageOf(decision.set), setRowid: literalOrNull(decision.setRowid) }
    case "Delete":
      return { ...decision, key: publicKey(decision.key) }
    default:
      return decision
  }
}

const keyFromPublic = (key: ChangeReplay.Key): Key | string => {
  const values: Array<SqlValue.SqlValue> = []
  for (const [column, literal] of key) {
    const value = SqlValue.fromLiteral(literal)
    if (value === undefined) return column
    values.push(value)
  }
  return { columns: key.map(([column]) => column), values }
}

const valuesFromPublic = (image: Readonly<Record<string, string>>): Values | string => {
  const columns = Object.keys(image)
  const values: Array<SqlValue.SqlValue> = []
  for (const column of columns) {
    const value = typeof image[column] === "string" ? SqlValue.fromLiteral(image[column]!) : undefined
    if (value === undefined) return column
    values.push(value)
  }
  return { columns, values }
}

/** A user-supplied decision on values; `Invalid` naming the column whose value is not a literal. */
export const fromPublic = (decision: ChangeReplay.Decision): Decision => {
  const invalid = (column: string): Decision => ({ _tag: "Invalid", reason: `column ${column} holds a value that is not a SQL literal` })
  const rowid = (literal: string | null) => literal === null ? null : SqlValue.fromLiteral(literal)
  switch (decision._tag) {
    case "Upsert": {
      const key = keyFromPublic(decision.key)
      if (typeof key === "string") return invalid(key)
      const row = valuesFromPublic(decision.row)
      if (typeof row === "string") return invalid(row)
      const id = rowid(decision.rowid)
      if (id === undefined) return invalid("rowid")
      return { ...decision, key, row, rowid: id }
    }
    case "Update": {
      const key = keyFromPublic(decision.key)
      if (typeof key === "string") return invalid(key)
      const set = valuesFromPublic(decision.set)
      if (typeof set === "string") return invalid(set)
      const id = rowid(decision.setRowid)
      if (id === undefined) return invalid("rowid")
      return { ...decision, key, set, setRowid: id }
    }
    case "Delete": {
      const key = keyFromPublic(decision.key)
      if (typeof key === "string") return invalid(key)
      return { ...decision, key }
    }
    default:
      return decision
  }
}

export { valuesFromPublic }
