import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Executor from "./executor.js"
import { indexItems, isInternalTable, partialIndexWhere } from "./sqlText.js"

/**
 * What capture and replay need to know about one table of `main`.
 * `columns` are the stored, writable columns (generated and hidden columns are left out: they cannot be
 * written and are recomputed by SQLite). `primaryKey` is in key order; empty means "identified by rowid",
 * reachable under `rowidAlias` (null when the user has columns named rowid, _rowid_ and oid).
 */
export interface TableInfo {
  readonly name: string
  readonly columns: ReadonlyArray<string>
  readonly primaryKey: ReadonlyArray<string>
  readonly withoutRowid: boolean
  readonly rowidAlias: string | null
  /**
   * UNIQUE indexes other than the primary key (on plain columns, not expressions): their columns, each with
   * the collation the index compares it with, and the WHERE expression of a partial index.
   */
  readonly uniqueIndexes: ReadonlyArray<UniqueIndex>
  /** Every column name, generated ones included (what a partial index's WHERE may refer to). */
  readonly allColumns: ReadonlyArray<string>
}

/** One key part of a UNIQUE index: a column, or an expression over the row's columns. */
export interface IndexColumn {
  readonly column: string | null
  readonly expression: string | null
  readonly collation: string
}

export interface UniqueIndex {
  readonly columns: ReadonlyArray<IndexColumn>
  readonly where: string | null
}

const ROWID_NAMES = ["_rowid_", "rowid", "oid"] as const

/** Pure: picks the name under which the real rowid is still reachable. */
export const rowidAlias = (allColumnNames: ReadonlyArray<string>, withoutRowid: boolean): string | null => {
  if (withoutRowid) return null
  const taken = new Set(allColumnNames.map((name) => name.toLowerCase()))
  return ROWID_NAMES.find((name) => !taken.has(name)) ?? null
}

/**
 * Reads one table's description; None when `main` has no such ordinary table. Its statements run as one
 * synchronous step with the executor of the environment's client (replay reads each table it meets inside
 * its transaction: one effect instead of several per statement).
 */
export const read = (table: string): Effect.Effect<TableInfo | undefined, SqlError, SqlClient.SqlClient> =>
  Executor.withExecutor((exec) => readWith(exec, table))

/** {@link read} with `exec`. */
export const readWith = (exec: Executor.Executor, table: string): TableInfo | undefined => {
  const listed = exec.values(`SELECT type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?`, [table])
  if (listed.length === 0 || listed[0]![0] !== "table") return undefined
  const withoutRowid = Number(listed[0]![1]) === 1
  const rows = exec.values(`SELECT name, pk, hidden FROM pragma_table_xinfo(?, 'main') ORDER BY cid`, [table])
    .map(([name, pk, hidden]) => ({ name: name as string, pk: Number(pk), hidden: Number(hidden) }))
  const columns = rows.filter((row) => row.hidden === 0).map((row) => row.name)
  const primaryKey = rows.filter((row) => row.pk > 0).sort((a, b) => a.pk - b.pk).map((row) => row.name)
  const indexes = exec.values(`SELECT name, origin, partial FROM pragma_index_list(?, 'main') WHERE "unique" = 1`, [table])
    .map(([name, origin, partial]) => ({ name: name as string, origin: origin as string, partial: Number(partial) }))
  const indexSql = (name: string) =>
    (exec.values(`SELECT sql FROM main.sqlite_schema WHERE type = 'index' AND name = ?`, [name])[0]?.[0] ?? "") as string
  const uniqueIndexes: Array<UniqueIndex> = []
  for (const index of indexes) {
    if (index.origin === "pk") continue
    let where: string | null = null
    if (index.partial === 1) {
      where = partialIndexWhere(indexSql(index.name)) ?? null
      if (where === null) continue
    }
    const parts = exec.values(`SELECT cid, name, coll FROM pragma_index_xinfo(?, 'main') WHERE key = 1 ORDER BY seqno`, [index.name])
      .map(([cid, name, coll]) => ({ cid: Number(cid), name: name as string | null, coll: coll as string }))
    let items: ReadonlyArray<string> | undefined
    if (parts.some((part) => part.cid === -2)) {
      // expression parts: their text comes from the index's CREATE statement, in key order
      items = indexItems(indexSql(index.name))
      if (items === undefined || items.length !== parts.length) continue
    }
    if (parts.some((part) => part.cid === -1)) continue // the rowid itself: never evicts another row
    uniqueIndexes.push({
      columns: parts.map((part, i) =>
        part.cid === -2
          ? { column: null, expression: items![i]!, collation: part.coll }
          : { column: part.name!, expression: null, collation: part.coll }
      ),
      where
    })
  }
  return {
    name: table,
    columns,
    primaryKey,
    withoutRowid,
    rowidAlias: rowidAlias(rows.map((row) => row.name), withoutRowid),
    uniqueIndexes,
    allColumns: rows.filter((row) => row.hidden !== 1).map((row) => row.name)
  }
}

/** Names of the user tables of `main` (ordinary tables, never `_sync_%`/`sqlite_%`, shadow or virtual). */
export const userTables: Effect.Effect<ReadonlyArray<string>, SqlError, SqlClient.SqlClient> = Effect.gen(
  function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ readonly name: string }>`
      SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' ORDER BY name`.withoutTransform
    return rows.map((row) => row.name).filter((name) => !isInternalTable(name))
  }
)

/** Reads every user table. */
export const readAll: Effect.Effect<ReadonlyArray<TableInfo>, SqlError, SqlClient.SqlClient> = Effect.flatMap(
  userTables,
  (names) =>
    Effect.map(
      Effect.forEach(names, read),
      (infos) => infos.filter((info): info is TableInfo => info !== undefined)
    )
)
