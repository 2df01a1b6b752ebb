/**
 * Test harness for ChangeCapture/ChangeReplay: real SQLite databases through @effect/sql-sqlite-node,
 * dumps of user tables as quote() literals, and a push from A (captured Draft) to B (Synced).
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as ChangeCapture from "../../src/ChangeCapture.js"
import * as ChangeReplay from "../../src/ChangeReplay.js"
import { ident, isInternalTable } from "../../src/internal/sqlite/sqlText.js"

export const open = (filename = ":memory:"): Effect.Effect<SqliteClient.SqliteClient, never, Scope.Scope> =>
  SqliteClient.make({ filename }).pipe(Effect.provide(Reactivity.layer))

export const on = <A, E>(
  client: SqlClient.SqlClient,
  effect: Effect.Effect<A, E, SqlClient.SqlClient>
): Effect.Effect<A, E> => Effect.provideService(effect, SqlClient.SqlClient, client)

export const run = (client: SqlClient.SqlClient, statement: string) =>
  on(client, ChangeCapture.execute(statement))

/** Plain statement, not captured (for setting up B, or schema both sides share). */
export const exec = (client: SqlClient.SqlClient, statement: string) => client.unsafe(statement).unprepared

/**
 * A canonical text of every user table: schema (as SQLite stores it) and rows as quote() literals, sorted.
 * Tables without a primary key include their rowid (it is their identity).
 */
export const dump = (client: SqlClient.SqlClient): Effect.Effect<string, unknown> =>
  Effect.gen(function*() {
    const objects = yield* client<{ type: string; name: string; sql: string | null }>`
      SELECT type, name, sql FROM sqlite_schema ORDER BY type, name`.withoutTransform
    const out: Array<string> = []
    for (const object of objects) {
      if (isInternalTable(object.name) || object.name.startsWith("sqlite_autoindex")) continue
      out.push(`${object.type} ${object.name}: ${object.sql}`)
      if (object.type !== "table") continue
      const info = yield* on(client, ChangeReplay.readTableInfo(object.name))
      if (info === undefined) continue
      const exprs = info.columns.map((column) => `quote(${ident(column)})`)
      if (info.primaryKey.length === 0 && info.rowidAlias !== null) exprs.unshift(`quote(${ident(info.rowidAlias)})`)
      const rows = yield* client.unsafe(`SELECT ${exprs.join(", ")} FROM ${ident(object.name)}`).values
      const lines = rows.map((row) => row.join(" | ")).sort()
      out.push(...lines.map((line) => `  ${line}`))
    }
    return out.join("\n")
  })

/** Push A's pending changes onto B (push mode), as the engine's step 1b does. */
export const push = (a: SqlClient.SqlClient, b: SqlClient.SqlClient, clientId = "A") =>
  Effect.gen(function*() {
    const done = yield* on(b, ChangeReplay.progress(clientId))
    const changes = yield* on(a, ChangeCapture.pending(done))
    return yield* on(b, ChangeReplay.apply(changes, { mode: "push", clientId }))
  })
