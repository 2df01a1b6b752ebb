import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"

/**
 * Deferred foreign-key violations are only reported by COMMIT, and a COMMIT that fails that way leaves
 * SQLite's transaction open while @effect/sql turns the failure into a defect: the connection would then
 * refuse every later BEGIN. So callers that may hold deferred violations look for them before committing
 * and fail (rolling back cleanly) instead.
 */
export interface Violation {
  readonly table: string
  readonly rowid: number | null
  readonly parent: string
}

const enabled = (sql: SqlClient.SqlClient) =>
  Effect.map(
    sql<{ readonly f: number }>`SELECT foreign_keys AS f FROM pragma_foreign_keys`.withoutTransform,
    (rows) => rows[0]?.f === 1
  )

/**
 * Violations in child tables that reference (or are) one of `tables`; every table when `tables` is
 * undefined. At most `limit` of them.
 */
export const violations = (
  sql: SqlClient.SqlClient,
  tables: ReadonlySet<string> | undefined,
  limit = 10
): Effect.Effect<ReadonlyArray<Violation>, SqlError> =>
  Effect.gen(function*() {
    if (!(yield* enabled(sql))) return []
    if (tables === undefined) {
      return yield* sql<Violation>`
        SELECT "table", rowid, parent FROM pragma_foreign_key_check LIMIT ${limit}`.withoutTransform
    }
    if (tables.size === 0) return []
    const names = JSON.stringify([...tables].map((name) => name.toLowerCase()))
    const children = yield* sql<{ readonly name: string }>`
      SELECT DISTINCT m.name AS name FROM main.sqlite_schema AS m JOIN pragma_foreign_key_list(m.name) AS f
      WHERE m.type = 'table'
        AND (lower(m.name) IN (SELECT value FROM json_each(${names}))
          OR lower(f."table") IN (SELECT value FROM json_each(${names})))`.withoutTransform
    const found: Array<Violation> = []
    for (const { name } of children) {
      if (found.length >= limit) break
      const rows = yield* sql<Violation>`
        SELECT "table", rowid, parent FROM pragma_foreign_key_check(${name}) LIMIT ${limit - found.length}`
        .withoutTransform
      found.push(...rows)
    }
    return found
  })

/** SQL expression: 1 when a transaction on this connection can hold deferred violations right now. */
export const mayBeDeferredExpr = `((SELECT foreign_keys FROM pragma_foreign_keys) = 1 AND (
  (SELECT defer_foreign_keys FROM pragma_defer_foreign_keys) = 1 OR
  EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND sql LIKE '%DEFERRED%')))`

export const describe = (found: ReadonlyArray<Violation>): string =>
  found.map((v) => `${v.table} row ${v.rowid ?? "?"} references a missing row of ${v.parent}`).join("; ")
