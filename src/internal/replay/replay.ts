import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as ChangeCapture from "../../ChangeCapture.js"
import type * as ChangeReplay from "../../ChangeReplay.js"
import * as ConflictPolicy from "../../ConflictPolicy.js"
import { createChangesTable, plain, raiseSequenceFloor } from "../capture/capture.js"
import { ident, isLiteral, splitStatements } from "../sqlite/sqlText.js"
import * as ForeignKeys from "../sqlite/foreignKeys.js"
import * as TableInfo from "../sqlite/tableInfo.js"
import { ReplayError } from "./replayError.js"

type Image = ChangeCapture.Image
type Key = ReadonlyArray<readonly [string, string]>

// ---------------------------------------------------------------------------------------------------------
// Pure part: identity, decision, statements
// ---------------------------------------------------------------------------------------------------------

/** The key of a row image on `table`: its primary key columns, else its rowid. Undefined: no identity. */
export const keyOf = (table: TableInfo.TableInfo, image: Image, rowid: string | null | undefined): Key | undefined => {
  if (table.primaryKey.length > 0) {
    const key: Array<readonly [string, string]> = []
    for (const column of table.primaryKey) {
      const value = Object.hasOwn(image, column) ? image[column] : undefined
      if (value === undefined) return undefined
      key.push([column, value])
    }
    return key
  }
  if (table.rowidAlias !== null && rowid !== null && rowid !== undefined) return [[table.rowidAlias, rowid]]
  return undefined
}

const where = (key: Key): string => key.map(([column, value]) => `${ident(column)} IS ${value}`).join(" AND ")

/** Columns whose literal differs between two images (columns of `after` only). */
export const changedColumns = (before: Image, after: Image): ReadonlyArray<string> =>
  Object.keys(after).filter((column) => !Object.hasOwn(before, column) || before[column] !== after[column])

/** Equal on the columns both images have (a column dropped or added on one side is not a difference). */
const sameImage = (a: Image, b: Image): boolean =>
  Object.keys(a).every((column) => !Object.hasOwn(b, column) || a[column] === b[column])

/**
 * Only columns the target has are written: a column that the target no longer has (dropped by another
 * replica) cannot hold the value any more; key columns are always kept, so a missing key still fails.
 */
const onTarget = (table: TableInfo.TableInfo, entries: ReadonlyArray<readonly [string, string]>) => {
  const columns = new Set(table.columns)
  return entries.filter(([column]) => columns.has(column))
}

const decisionFor = (
  change: ChangeCapture.Change,
  table: TableInfo.TableInfo
): { readonly beforeKey: Key | undefined; readonly afterKey: Key | undefined } => ({
  beforeKey: change.before === null ? undefined : keyOf(table, change.before, change.rowid?.before),
  afterKey: change.after === null ? undefined : keyOf(table, change.after, change.rowid?.after)
})

/** The key at which replay looks up the row Synced holds now: the before key, or for an insert the after key. */
export const lookupKey = (change: ChangeCapture.Change, table: TableInfo.TableInfo): Key | undefined => {
  const { afterKey, beforeKey } = decisionFor(change, table)
  return change.kind === "insert" ? afterKey : beforeKey
}

/**
 * Last push wins (the seed's behaviour): the local change is applied over whatever Synced holds. Without a
 * conflict an update writes only the columns it changed; on RowChanged the whole local row wins (the
 * `mergeColumns` policy keeps writing only the changed columns; see ConflictPolicy).
 * The conflict kind is recorded on the decision for reporting; it never changes this policy's outcome.
 */
export const decide = (
  change: ChangeCapture.Change,
  current: Image | null,
  table: TableInfo.TableInfo
): ChangeReplay.Decision => {
  if (change.kind === "ddl") return { _tag: "Ddl", sql: change.sql ?? "" }
  const { afterKey, beforeKey } = decisionFor(change, table)
  switch (change.kind) {
    case "insert": {
      if (change.after === null || afterKey === undefined) return { _tag: "Invalid", reason: "insert without a key" }
      if (current === null) {
        return { _tag: "Upsert", key: afterKey, row: change.after, rowid: change.rowid?.after ?? null, conflict: null }
      }
      if (sameImage(change.after, current)) return { _tag: "Skip", conflict: null }
      return {
        _tag: "Upsert",
        key: afterKey,
        row: change.after,
        rowid: change.rowid?.after ?? null,
        conflict: "KeyExists"
      }
    }
    case "update": {
      if (change.before === null || change.after === null || beforeKey === undefined || afterKey === undefined) {
        return { _tag: "Invalid", reason: "update without a key" }
      }
      if (current === null) {
        return { _tag: "Upsert", key: afterKey, row: change.after, rowid: change.rowid?.after ?? null, conflict: "RowMissing" }
      }
      // fromEntries defines own properties: a column named __proto__ stays a column
      const after = change.after
      const set: Image = Object.fromEntries(changedColumns(change.before, after).map((column) => [column, after[column]!]))
      const rowidBefore = change.rowid?.before ?? null
      const rowidAfter = change.rowid?.after ?? null
      const setRowid = table.primaryKey.length === 0 && rowidAfter !== null && rowidAfter !== rowidBefore
        ? rowidAfter
        : null
      const conflict = sameImage(change.before, current) ? null : "RowChanged" as const
      if (Object.keys(set).length === 0 && setRowid === null) return { _tag: "Skip", conflict }
      return { _tag: "Update", key: beforeKey, set, setRowid, conflict }
    }
    case "delete": {
      if (change.before === null || beforeKey === undefined) return { _tag: "Invalid", reason: "delete without a key" }
      if (current === null) return { _tag: "Skip", conflict: "RowMissing" }
      return { _tag: "Delete", key: beforeKey, conflict: sameImage(change.before, current) ? null : "RowChanged" }
    }
  }
}

/**
 * The decision that writes `row` (a resolver's `Replace`) for `change`: an update moves/overwrites the row at
 * its before key, anything else upserts at the lookup key.
 */
export const replaceDecision = (
  change: ChangeCapture.Change,
  table: TableInfo.TableInfo,
  key: Key,
  current: Image | null,
  row: Image,
  conflict: ChangeReplay.ConflictKind | null
): ChangeReplay.Decision => {
  const rowid = change.rowid?.after ?? change.rowid?.before ?? null
  if (change.kind === "update" && current !== null) {
    const rowidBefore = change.rowid?.before ?? null
    const setRowid = table.primaryKey.length === 0 && rowid !== null && rowid !== rowidBefore ? rowid : null
    return { _tag: "Update", key, set: row, setRowid, conflict }
  }
  const upsertKey = keyOf(table, row, rowid) ?? key
  return { _tag: "Upsert", key: upsertKey, row, rowid, conflict }
}

/** SQL statements carrying out a decision on `table` (values are inlined literals). */
export const statements = (decision: ChangeReplay.Decision, table: TableInfo.TableInfo): ReadonlyArray<string> => {
  const name = ident(table.name)
  switch (decision._tag) {
    case "Skip":
    case "Invalid":
      return []
    case "Ddl":
      return [decision.sql]
    case "Delete":
      return [`DELETE FROM ${name} WHERE ${where(decision.key)}`]
    case "Update": {
      const assignments = onTarget(table, Object.entries(decision.set)).map(([column, value]) => `${ident(column)} = ${value}`)
      if (decision.setRowid !== null && table.rowidAlias !== null) {
        assignments.push(`${ident(table.rowidAlias)} = ${decision.setRowid}`)
      }
      if (assignments.length === 0) return []
      return [`UPDATE ${name} SET ${assignments.join(", ")} WHERE ${where(decision.key)}`]
    }
    case "Upsert": {
      const row = onTarget(table, Object.entries(decision.row))
      const usesRowid = table.primaryKey.length === 0
      const columns = row.map(([column]) => ident(column))
      const values = row.map(([, value]) => value)
      if (usesRowid && table.rowidAlias !== null && decision.rowid !== null) {
        columns.unshift(ident(table.rowidAlias))
        values.unshift(decision.rowid)
      }
      const insert = `INSERT INTO ${name} (${columns.join(", ")}) VALUES (${values.join(", ")})`
      // An upsert keyed on a NULL never conflicts (NULLs are distinct), so it would add a duplicate.
      if (decision.key.some(([, value]) => value === "NULL")) {
        return [`DELETE FROM ${name} WHERE ${where(decision.key)}`, insert]
      }
      const keyColumns = new Set(decision.key.map(([column]) => column))
      const updates = row.filter(([column]) => !keyColumns.has(column))
        .map(([column]) => `${ident(column)} = excluded.${ident(column)}`)
      const target = decision.key.map(([column]) => ident(column)).join(", ")
      return [
        `${insert} ON CONFLICT (${target}) DO ${updates.length === 0 ? "NOTHING" : `UPDATE SET ${updates.join(", ")}`}`
      ]
    }
  }
}

/** Pure: decide (last push wins) and the statements that carry it out. */
export const plan = (
  change: ChangeCapture.Change,
  table: TableInfo.TableInfo,
  current: Image | null
): ReadonlyArray<string> => statements(decide(change, current, table), table)

/** Every value of a change is one quote() literal (they are spliced into SQL text). */
export const validLiterals = (change: ChangeCapture.Change): boolean => {
  const images = [change.before, change.after].filter((image): image is Image => image !== null)
  if (images.some((image) => Object.values(image).some((value) => typeof value !== "string" || !isLiteral(value)))) {
    return false
  }
  const rowids = [change.rowid?.before, change.rowid?.after].filter((v): v is string => typeof v === "string")
  return rowids.every(isLiteral)
}

/** Whether a failed DDL statement failed only because it was already applied. */
export const alreadyApplied = (statement: string, message: string): boolean => {
  const text = statement.replace(/^\s+/, "").toUpperCase()
  const m = message.toLowerCase()
  if (text.startsWith("CREATE")) return m.includes("already exists")
  if (text.startsWith("DROP")) return /no such (table|index|view|trigger)/.test(m)
  if (text.startsWith("ALTER")) {
    return m.includes("duplicate column name") || /no such (table|column)/.test(m) || m.includes("already exists") ||
      m.includes("already another table or index with this name")
  }
  return false
}

// ---------------------------------------------------------------------------------------------------------
// Effects
// ---------------------------------------------------------------------------------------------------------

const PROGRESS_DDL = `CREATE TABLE IF NOT EXISTS main._sync_progress (
  client_id TEXT PRIMARY KEY,
  change_id INTEGER NOT NULL
)`

const tableExists = (sql: SqlClient.SqlClient, name: string) =>
  Effect.map(
    sql<{ readonly n: number }>`
      SELECT count(*) AS n FROM main.sqlite_schema WHERE type = 'table' AND name = ${name}`.withoutTransform,
    (rows) => rows[0]!.n > 0
  )

const readProgress = (sql: SqlClient.SqlClient, clientId: string) =>
  Effect.gen(function*() {
    if (!(yield* tableExists(sql, "_sync_progress"))) return 0
    const rows = yield* sql<{ readonly change_id: number }>`
      SELECT change_id FROM main._sync_progress WHERE client_id = ${clientId}`.withoutTransform
    return rows.length === 0 ? 0 : rows[0]!.change_id
  })

export const progress = (clientId: string): Effect.Effect<number, SqlError, SqlClient.SqlClient> =>
  plain(Effect.flatMap(SqlClient.SqlClient, (sql) => readProgress(sql, clientId)))

const messageOf = (error: SqlError): string => {
  const cause = error.cause
  return cause instanceof Error ? cause.message : String(error.message ?? cause)
}

const isConstraint = (error: SqlError): boolean => {
  const cause = error.cause as { readonly code?: unknown } | undefined
  return typeof cause?.code === "string" && cause.code.startsWith("SQLITE_CONSTRAINT")
}

/**
 * Runs one statement without the prepared-statement cache (replay statements embed literals, so caching them
 * would only hold memory). A statement that fails to prepare surfaces as an SqlError, not a defect.
 */
const runOnce = (sql: SqlClient.SqlClient, statement: string): Effect.Effect<ReadonlyArray<any>, SqlError> =>
  Effect.flatMap(
    Effect.serviceOption(SqlClient.TransactionConnection),
    (conn) =>
      // Inside the replay transaction, straight to the connection: a span and a Statement per replayed
      // row cost more than the row's SQL itself.
      // (executeUnprepared prepares before it returns an Effect: suspend it so a prepare error is caught)
      Effect.suspend(() =>
        conn._tag === "Some"
          ? conn.value[0].executeUnprepared(statement, [], undefined)
          : sql.unsafe(statement).unprepared
      ).pipe(
          Effect.catchAllDefect((defect) =>
            Effect.fail(new SqlError({ cause: defect, message: "Failed to prepare statement" }))
          )
        )
  )

/** @internal */
export const groupByTransaction = (
  changes: ReadonlyArray<ChangeCapture.Change>
): ReadonlyArray<ReadonlyArray<ChangeCapture.Change>> => {
  const groups: Array<Array<ChangeCapture.Change>> = []
  for (const change of changes) {
    const last = groups[groups.length - 1]
    if (last !== undefined && last[0]!.txId === change.txId) last.push(change)
    else groups.push([change])
  }
  return groups
}

/**
 * User triggers of the target are dropped for the replay and recreated from their stored SQL at the end (in
 * the same transaction): every row they wrote on Draft was captured as a change of its own, so letting them
 * fire again would apply their effects twice (an audit row per replay, a counter bumped twice).
 */
const suspendTriggers = (sql: SqlClient.SqlClient) =>
  Effect.gen(function*() {
    const triggers = yield* sql<{ readonly name: string; readonly sql: string }>`
      SELECT name, sql FROM main.sqlite_schema WHERE type = 'trigger' ORDER BY rowid`.withoutTransform
    for (const trigger of triggers) yield* runOnce(sql, `DROP TRIGGER main.${ident(trigger.name)}`)
    return triggers
  })

const restoreTriggers = (sql: SqlClient.SqlClient, triggers: ReadonlyArray<{ readonly sql: string }>) =>
  Effect.forEach(triggers, (trigger) => runOnce(sql, trigger.sql), { discard: true })

const readCurrent = (sql: SqlClient.SqlClient, table: TableInfo.TableInfo, key: Key) =>
  Effect.gen(function*() {
    if (table.columns.length === 0) return null
    const rows = yield* runOnce(
      sql,
      `SELECT ${table.columns.map((column, i) => `quote(${ident(column)}) AS c${i}`).join(", ")} ` +
        `FROM ${ident(table.name)} WHERE ${where(key)} LIMIT 1`
    )
    if (rows.length === 0) return null
    const row = rows[0] as Record<string, string>
    return Object.fromEntries(table.columns.map((column, i) => [column, row[`c${i}`]!])) as Image
  })

export const apply = (
  changes: ReadonlyArray<ChangeCapture.Change>,
  options: ChangeReplay.ApplyOptions
): Effect.Effect<ChangeReplay.ApplyResult, ReplayError | SqlError, SqlClient.SqlClient> =>
  plain(Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    for (const change of changes) {
      if (!validLiterals(change)) {
        return yield* Effect.fail(
          new ReplayError({
            reason: "InvalidChange",
            message: `change ${change.id} holds a value that is not a SQL literal`,
            changeId: change.id
          })
        )
      }
    }
    return yield* sql.withTransaction(Effect.gen(function*() {
      yield* sql.unsafe(`PRAGMA defer_foreign_keys = ON`).raw
      const clientId = options.mode === "push" ? options.clientId : options.clientId
      const done = clientId === undefined ? 0 : yield* readProgress(sql, clientId)
      // in id order, each id once (the log's order is the only order that means anything)
      const byId = new Map<number, ChangeCapture.Change>()
      for (const change of changes) if (change.id > done) byId.set(change.id, change)
      const todo = [...byId.values()].sort((x, y) => x.id - y.id)
      const suspend = options.triggers !== "fire" && todo.length > 0
      let suspended = suspend ? yield* suspendTriggers(sql) : []
      const conflicts: Array<ChangeReplay.Conflict> = []
      const touched = new Set<string>()
      let ddlRan = false
      const tables = new Map<string, TableInfo.TableInfo | undefined>()
      const tableInfo = (name: string) =>
        tables.has(name) ? Effect.succeed(tables.get(name)) : Effect.tap(TableInfo.read(name), (info) => {
          tables.set(name, info)
        })
      const resolve = options.resolve
      const transform = options.transform
      const mode = options.mode
      const dropped: Array<number> = []
      // Whether replay may meet deferred foreign-key violations a policy must see per transaction.
      const fkProbe = resolve === undefined ? Effect.succeed(false) : Effect.map(
        sql<{ readonly n: number }>`
          SELECT (SELECT foreign_keys FROM pragma_foreign_keys) = 1 AND EXISTS (
            SELECT 1 FROM main.sqlite_schema AS m JOIN pragma_foreign_key_list(m.name) AS f
            WHERE m.type = 'table') AS n`.withoutTransform,
        (rows) => rows[0]?.n === 1
      )
      let fkActive = yield* fkProbe
      /**
       * A constraint failure (UNIQUE, CHECK, NOT NULL) put to the policy: "drop" the transaction, "fail"
       * (nothing can settle it), or "replaced" (the resolver's row was written instead).
       */
      const settleConstraint = (
        change: ChangeCapture.Change,
        table: TableInfo.TableInfo,
        key: Key,
        current: Image | null,
        statement: string,
        message: string
      ) =>
        Effect.gen(function*() {
          const resolution = yield* resolve!({
            kind: "Constraint", table: change.table, key, change, remote: current, mode, statement, message
          })
          const record = (decision: ChangeReplay.Decision) =>
            conflicts.push({ change, key, kind: "Constraint", current, decision, resolution, statement, message })
          if (ConflictPolicy.dropsTransaction(resolution)) {
            record({ _tag: "Skip", conflict: null })
            return "drop" as const
          }
          if (resolution._tag === "Replace") {
            const decision = replaceDecision(change, table, key, current, resolution.row, null)
            for (const replacement of statements(decision, table)) {
              const ok = yield* Effect.either(runOnce(sql, replacement))
              if (ok._tag === "Left") return mode === "push" ? "fail" as const : "drop" as const
            }
            record(decision)
            return "replaced" as const
          }
          // KeepLocal or Fail: the local change cannot be applied. A pull only previews the push: the
          // transaction stays pending (re-recorded) and the push reports the failure.
          if (mode === "pull") {
            record({ _tag: "Skip", conflict: null })
            return "drop" as const
          }
          return "fail" as const
        })
      let savepoints = 0
      for (const group of groupByTransaction(todo)) {
        // A local transaction replays as a unit: a policy that drops one of its changes drops all of them.
        const savepoint = resolve === undefined ? undefined : `_sync_tx_${++savepoints}`
        if (savepoint !== undefined) yield* runOnce(sql, `SAVEPOINT ${savepoint}`)
        const suspendedAtStart = suspended
        const touchedTx = new Set<string>()
        let drop: { readonly change: ChangeCapture.Change } | undefined
        let ddlInTx = false
        for (const original of group) {
          let change = original
          const fail = (reason: ReplayError["reason"], message: string, statement?: string, cause?: unknown) =>
            Effect.fail(
              new ReplayError({
                reason,
                message,
                changeId: change.id,
                txId: change.txId,
                table: change.table,
                ...(statement !== undefined ? { statement } : {}),
                ...(cause !== undefined ? { cause } : {})
              })
            )
          if (change.kind === "ddl") {
            const text = change.sql ?? ""
            // The schema change sees the real schema (it may create or drop triggers itself).
            yield* restoreTriggers(sql, suspended)
            for (const part of splitStatements(text)) {
              yield* runOnce(sql, part).pipe(
                Effect.catchAll((error) =>
                  alreadyApplied(part, messageOf(error))
                    ? Effect.void
                    : fail("Statement", `schema change ${change.id} failed: ${messageOf(error)}`, part, error)
                )
              )
            }
            tables.clear()
            ddlRan = true
            ddlInTx = true
            suspended = suspend ? yield* suspendTriggers(sql) : []
            fkActive = yield* fkProbe
            continue
          }
          touched.add(change.table)
          touchedTx.add(change.table)
          let table = yield* tableInfo(change.table)
          if (table === undefined) {
            return yield* fail("MissingTable", `change ${change.id}: table ${change.table} does not exist here`)
          }
          let key = lookupKey(change, table)
          if (key === undefined) {
            return yield* fail("NoRowIdentity", `change ${change.id}: no key for a row of ${change.table}`)
          }
          let current = yield* readCurrent(sql, table, key)
          if (transform !== undefined) {
            const outcome = yield* transform(change, current)
            if (outcome._tag === "Skip") continue
            if (outcome._tag === "Rewrite") {
              change = { ...outcome.change, id: original.id, txId: original.txId }
              if (!validLiterals(change)) {
                return yield* fail("InvalidChange", `change ${change.id} was rewritten with a value that is not a SQL literal`)
              }
              table = yield* tableInfo(change.table)
              if (table === undefined) {
                return yield* fail("MissingTable", `change ${change.id}: table ${change.table} does not exist here`)
              }
              key = lookupKey(change, table)
              if (key === undefined) {
                return yield* fail("NoRowIdentity", `change ${change.id}: no key for a row of ${change.table}`)
              }
              current = yield* readCurrent(sql, table, key)
            }
          }
          const base = (options.decide ?? decide)(change, current, table)
          const seen = "conflict" in base ? base.conflict : null
          let decision = base
          let resolution: ConflictPolicy.Resolution | undefined
          if (seen !== null && resolve !== undefined) {
            resolution = yield* resolve({ kind: seen, table: change.table, key, change, remote: current, mode })
            if (resolution._tag === "Fail" && mode === "push") {
              return yield* fail(
                "Unresolved",
                `change ${change.id} (local transaction ${change.txId}) on ${change.table}: ${seen} conflict: ` +
                  (resolution.message ?? "the resolver decided to fail")
              )
            }
            if (ConflictPolicy.dropsTransaction(resolution) || resolution._tag === "Fail") {
              conflicts.push({ change, key, kind: seen, current, decision: { _tag: "Skip", conflict: seen }, resolution })
              drop = { change }
              break
            }
            if (resolution._tag === "Replace") decision = replaceDecision(change, table, key, current, resolution.row, seen)
          }
          if (seen !== null) {
            conflicts.push({ change, key, kind: seen, current, decision, ...(resolution ? { resolution } : {}) })
          }
          if (decision._tag === "Invalid") {
            return yield* fail("InvalidChange", `change ${change.id}: ${decision.reason}`)
          }
          const run = (statement: string) =>
            Effect.either(runOnce(sql, statement).pipe(
              Effect.catchAll((error) =>
                fail(
                  isConstraint(error) ? "Constraint" : "Statement",
                  `change ${change.id} (local transaction ${change.txId}) on ${change.table}: ${messageOf(error)}`,
                  statement,
                  error
                )
              )
            ))
          for (const statement of statements(decision, table)) {
            const result = yield* run(statement)
            if (result._tag === "Right") continue
            const error = result.left
            if (error.reason !== "Constraint" || resolve === undefined) return yield* Effect.fail(error)
            const settled = yield* settleConstraint(change, table, key, current, statement, messageOf(error.cause as SqlError))
            if (settled === "fail") return yield* Effect.fail(error)
            if (settled === "drop") {
              drop = { change }
              break
            }
            // Replaced: the failed statement was undone by SQLite (ABORT); the replacement row was written.
            break
          }
          if (drop !== undefined) break
        }
        if (drop === undefined && fkActive && touchedTx.size > 0 && savepoint !== undefined) {
          const found = yield* ForeignKeys.violations(sql, ddlInTx ? undefined : touchedTx)
          if (found.length > 0) {
            const last = group[group.length - 1]!
            const message = `FOREIGN KEY constraint failed: ${ForeignKeys.describe(found)}`
            const statement = "PRAGMA foreign_key_check"
            const info = yield* tableInfo(last.table)
            const key = info === undefined ? undefined : lookupKey(last, info)
            const current = info === undefined || key === undefined ? null : yield* readCurrent(sql, info, key)
            const resolution = yield* resolve!({
              kind: "Constraint", table: last.table, key: key ?? [], change: last, remote: current, mode, statement, message
            })
            if (!ConflictPolicy.dropsTransaction(resolution) && mode === "push") {
              return yield* Effect.fail(
                new ReplayError({
                  reason: "Constraint",
                  message: `local transaction ${last.txId}: ${message}`,
                  changeId: last.id,
                  txId: last.txId,
                  table: last.table,
                  statement
                })
              )
            }
            conflicts.push({
              change: last, key: key ?? [], kind: "Constraint", current, decision: { _tag: "Skip", conflict: null }, resolution, statement, message
            })
            drop = { change: last }
          }
        }
        if (savepoint !== undefined) {
          if (drop !== undefined) {
            yield* runOnce(sql, `ROLLBACK TO ${savepoint}`)
            for (const change of group) dropped.push(change.id)
            suspended = suspendedAtStart
            tables.clear()
            if (ddlInTx) fkActive = yield* fkProbe
          }
          yield* runOnce(sql, `RELEASE ${savepoint}`)
        }
      }
      yield* restoreTriggers(sql, suspended)
      // Deferred foreign keys are checked by COMMIT; find violations first so the failure is a typed error
      // and a clean rollback (see foreignKeys.ts).
      const found = yield* ForeignKeys.violations(sql, ddlRan ? undefined : touched)
      if (found.length > 0) {
        return yield* Effect.fail(
          new ReplayError({
            reason: "Constraint",
            message: `FOREIGN KEY constraint failed after replay: ${ForeignKeys.describe(found)}`
          })
        )
      }
      const last = todo.length === 0 ? done : Math.max(done, todo[todo.length - 1]!.id)
      if (options.mode === "push") {
        if (todo.length > 0) {
          yield* sql.unsafe(PROGRESS_DDL).raw
          yield* sql`INSERT INTO main._sync_progress (client_id, change_id) VALUES (${options.clientId}, ${last})
            ON CONFLICT (client_id) DO UPDATE SET change_id = max(change_id, excluded.change_id)`.raw
        }
      } else {
        yield* sql.unsafe(createChangesTable).raw
        for (const change of todo) {
          yield* sql`INSERT OR REPLACE INTO main._sync_changes
            (id, tx_id, tbl, kind, before, after, before_rowid, after_rowid, sql) VALUES (
              ${change.id}, ${change.txId}, ${change.table}, ${change.kind},
              ${change.before === null ? null : JSON.stringify(change.before)},
              ${change.after === null ? null : JSON.stringify(change.after)},
              ${change.rowid?.before ?? null}, ${change.rowid?.after ?? null}, ${change.sql ?? null})`.raw
        }
        const floor = (yield* tableExists(sql, "_sync_progress"))
          ? (yield* sql<{ readonly m: number }>`
              SELECT coalesce(max(change_id), 0) AS m FROM main._sync_progress`.withoutTransform)[0]!.m
          : 0
        yield* raiseSequenceFloor(sql, Math.max(floor, last))
      }
      return { lastChangeId: last, applied: todo.length, conflicts, dropped }
    }))
  }))
