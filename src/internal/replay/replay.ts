import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as ChangeCapture from "../../ChangeCapture.js"
import type * as ChangeReplay from "../../ChangeReplay.js"
import * as ConflictPolicy from "../../ConflictPolicy.js"
import { ensureLog, plain, raiseSequenceFloor } from "../capture/capture.js"
import * as ChangeLog from "../capture/changeLog.js"
import * as Executor from "../sqlite/executor.js"
import * as ForeignKeys from "../sqlite/foreignKeys.js"
import { ident, isLiteral, splitStatements } from "../sqlite/sqlText.js"
import * as SqlValue from "../sqlite/sqlValue.js"
import * as TableInfo from "../sqlite/tableInfo.js"
import * as Bulk from "./bulk.js"
import { ReplayError } from "./replayError.js"
import * as Prefetch from "./prefetch.js"
import * as Values from "./replayValues.js"

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
 * The decision without a policy: the local change is applied over whatever Synced holds; an update writes
 * only the columns it changed. The conflict kind is recorded on the decision for the policy, which may
 * settle it otherwise (see ConflictPolicy).
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

const tableExists = (exec: Executor.Executor, name: string) =>
  exec.values(`SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?`, [name]).length > 0

const readProgress = (exec: Executor.Executor, clientId: string) => {
  if (!tableExists(exec, "_sync_progress")) return 0
  const rows = exec.values(`SELECT change_id FROM main._sync_progress WHERE client_id = ?`, [clientId])
  return rows.length === 0 ? 0 : Number(rows[0]![0])
}

export const progress = (clientId: string): Effect.Effect<number, SqlError, SqlClient.SqlClient> =>
  Executor.withExecutor((exec) => readProgress(exec, clientId))

const messageOf = (error: unknown): string => {
  const cause = error instanceof SqlError ? error.cause : error
  return cause instanceof Error ? cause.message : String((error as SqlError)?.message ?? cause)
}

const isConstraint = (error: unknown): boolean => {
  const cause = (error instanceof SqlError ? error.cause : error) as { readonly code?: unknown } | undefined
  return typeof cause?.code === "string" && cause.code.startsWith("SQLITE_CONSTRAINT")
}

/**
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
const suspendTriggers = (exec: Executor.Executor) => {
  const triggers = exec.values(`SELECT name, sql FROM main.sqlite_schema WHERE type = 'trigger' ORDER BY rowid`)
    .map((row) => ({ name: row[0] as string, sql: row[1] as string }))
  for (const trigger of triggers) exec.once(`DROP TRIGGER main.${ident(trigger.name)}`)
  return triggers
}

const restoreTriggers = (exec: Executor.Executor, triggers: ReadonlyArray<{ readonly sql: string }>) => {
  for (const trigger of triggers) exec.once(trigger.sql)
}

/**
 * The row the target holds at `key` (null: none). better-sqlite3 decodes TEXT that is not valid UTF-8
 * lossily, so a row holding U+FFFD is read again with its TEXT as bytes.
 */
const readCurrent = (exec: Executor.Executor, table: TableInfo.TableInfo, key: Values.Key): ChangeLog.Values | null => {
  if (table.columns.length === 0) return null
  const fast = Values.selectCurrent(table, key, false)
  const rows = exec.values(fast.sql, fast.params)
  if (rows.length === 0) return null
  const row = rows[0]!
  if (!row.some(SqlValue.mayBeLossy)) return { columns: table.columns, values: row.map(SqlValue.fromDriver) }
  const exact = Values.selectCurrent(table, key, true)
  const typed = exec.values(exact.sql, exact.params)[0]!
  return {
    columns: table.columns,
    values: table.columns.map((_, i) =>
      typed[2 * i] === "text" ? SqlValue.textFromBytes(typed[2 * i + 1] as Uint8Array) : SqlValue.fromDriver(typed[2 * i + 1])
    )
  }
}

const describeKey = (key: Values.Key): string =>
  Values.publicKey(key).map(([column, literal]) => `${column} = ${literal}`).join(", ")

const FK_PROBE = `SELECT (SELECT foreign_keys FROM pragma_foreign_keys) = 1 AND EXISTS (
  SELECT 1 FROM main.sqlite_schema AS m JOIN pragma_foreign_key_list(m.name) AS f WHERE m.type = 'table')`

/** Changes are read and replayed this many at a time (the log is paged, never held whole). */
const PAGE = 2048

/**
 * Where replay reads its changes: pages of changes with id above the given one, in id order, each id once;
 * an empty page ends. Replay may read them twice (pull mode re-records them after replaying).
 */
export type Source = (afterId: number, limit: number) => Effect.Effect<ReadonlyArray<ChangeLog.LogChange>, SqlError>

/** A source over changes held in memory (sorted by id, the last of equal ids kept). */
export const fromArray = (changes: ReadonlyArray<ChangeLog.LogChange>): Source => {
  const byId = new Map<number, ChangeLog.LogChange>()
  for (const change of changes) byId.set(change.id, change)
  const sorted = [...byId.values()].sort((x, y) => x.id - y.id)
  return (afterId, limit) => {
    let from = 0
    while (from < sorted.length && sorted[from]!.id <= afterId) from++
    return Effect.succeed(sorted.slice(from, from + limit))
  }
}

export const apply = (
  changes: ReadonlyArray<ChangeCapture.Change>,
  options: ChangeReplay.ApplyOptions
): Effect.Effect<ChangeReplay.ApplyResult, ReplayError | SqlError, SqlClient.SqlClient> =>
  Effect.suspend(() => {
    const converted: Array<ChangeLog.LogChange> = []
    for (const change of changes) {
      const log = ChangeLog.fromPublic(change)
      if (typeof log === "string") {
        return Effect.fail(
          new ReplayError({
            reason: "InvalidChange",
            message: `change ${change.id} holds a value that is not a SQL literal (${log})`,
            changeId: change.id
          })
        )
      }
      converted.push(log)
    }
    return applySource(fromArray(converted), options)
  })

/** Replays the changes of `source` (see ChangeReplay.apply) in ONE transaction on the environment's client. */
export const applySource = (
  source: Source,
  options: ChangeReplay.ApplyOptions,
  /**
   * The schema under which the source's change log is attached to this connection (Draft's file during a
   * push): runs of changes are then tried in bulk (see bulk.ts).
   */
  log?: string | undefined
): Effect.Effect<ChangeReplay.ApplyResult, ReplayError | SqlError, SqlClient.SqlClient> =>
  plain(Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(Effect.gen(function*() {
      const exec = yield* Executor.executor
      const attempt = <A>(f: () => A) => Effect.try({ try: f, catch: (cause) => Executor.toSqlError(cause) })
      yield* attempt(() => exec.once(`PRAGMA defer_foreign_keys = ON`))
      const clientId = options.clientId
      const done = clientId === undefined ? 0 : yield* attempt(() => readProgress(exec, clientId))
      // (with the log attached only whether anything is pending matters: runs are read from the log)
      const first = yield* source(done, log === undefined ? PAGE : 1)
      const suspend = options.triggers !== "fire" && first.length > 0
      let suspended = suspend ? yield* attempt(() => suspendTriggers(exec)) : []
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
      const fkProbe = resolve === undefined
        ? Effect.succeed(false)
        : attempt(() => exec.values(FK_PROBE)[0]?.[0] === 1n)
      let fkActive = yield* fkProbe
      // Rows compared by updates and deletes are read a page at a time where no write can reach other rows
      // (see prefetch.ts); `createSql` says which tables declare a REPLACE conflict clause.
      const readAheadProbe = options.triggers === "fire"
        ? Effect.succeed(false)
        : attempt(() => exec.values(Prefetch.PROBE)[0]?.[0] === 1n)
      let readAhead = yield* readAheadProbe
      const prefetch = new Prefetch.Prefetch()
      const createSql = new Map<string, string | null>()
      const readAheadOn = (name: string): TableInfo.TableInfo | undefined => {
        const table = tables.get(name)
        if (table === undefined) return undefined
        let text = createSql.get(name)
        if (text === undefined) {
          const rows = exec.values(`SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?`, [name])
          text = rows.length === 0 ? null : rows[0]![0] as string | null
          createSql.set(name, text)
        }
        return Prefetch.replaces(text) ? undefined : table
      }
      /** The rows a page's updates and deletes compare, read a few statements per table. */
      const readPage = (page: ReadonlyArray<Change>) =>
        Effect.gen(function*() {
          const into = prefetch.reset()
          if (!readAhead) return
          for (const change of page) {
            if (change.kind === "ddl") break
            if (change.kind !== "insert" && !tables.has(change.table)) yield* tableInfo(change.table)
          }
          yield* attempt(() => {
            for (const [name, wanted] of Prefetch.plan(page, readAheadOn)) {
              if (wanted.length > 1) Prefetch.read(exec, tables.get(name)!, wanted, into)
            }
          })
        })
      /** What a decision's statements write: the row at its key; a write that moves a key, anything. */
      const wrote = (table: string, decision: Values.Decision) => {
        if (decision._tag === "Delete" || decision._tag === "Upsert") prefetch.wrote(table, decision.key)
        else if (decision._tag === "Update") {
          const info = tables.get(table)
          const movesKey = decision.setRowid !== null || info === undefined ||
            decision.set.columns.some((column) => info.primaryKey.includes(column))
          if (movesKey) prefetch.clear()
          else prefetch.wrote(table, decision.key)
        }
      }

      type Change = ChangeLog.LogChange
      const publicChange = (change: Change) => ChangeLog.toPublic(change)
      const recordConflict = (
        change: Change,
        key: Values.Key | undefined,
        kind: ChangeReplay.Conflict["kind"],
        current: ChangeLog.Values | null,
        decision: Values.Decision,
        extra: Partial<Pick<ChangeReplay.Conflict, "resolution" | "statement" | "message">> = {}
      ) =>
        conflicts.push({
          change: publicChange(change),
          key: key === undefined ? [] : Values.publicKey(key),
          kind,
          current: Values.publicImage(current),
          decision: Values.toPublic(decision),
          ...extra
        })
      const failWith = (
        change: Change,
        reason: ReplayError["reason"],
        message: string,
        statement?: string,
        cause?: unknown
      ) =>
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
      /** Runs the statements of a decision; the first failure is returned (SQLite undid that statement). */
      const execute = (statements: ReadonlyArray<Values.Statement>) => {
        for (const statement of statements) {
          try {
            exec.run(statement.sql, statement.params)
          } catch (cause) {
            return { statement: statement.sql, cause }
          }
        }
        return undefined
      }
      /**
       * A constraint failure (UNIQUE, CHECK, NOT NULL) put to the policy: "drop" the transaction, "fail"
       * (nothing can settle it), or "replaced" (the resolver's row was written instead).
       */
      const settleConstraint = (
        change: Change,
        table: TableInfo.TableInfo,
        key: Values.Key,
        current: ChangeLog.Values | null,
        statement: string,
        message: string
      ) =>
        Effect.gen(function*() {
          const resolution = yield* resolve!({
            kind: "Constraint",
            table: change.table,
            key: Values.publicKey(key),
            change: publicChange(change),
            remote: Values.publicImage(current),
            mode,
            statement,
            message
          })
          if (ConflictPolicy.dropsTransaction(resolution)) {
            recordConflict(change, key, "Constraint", current, { _tag: "Skip", conflict: null }, { resolution, statement, message })
            return "drop" as const
          }
          if (resolution._tag === "Replace") {
            const row = Values.valuesFromPublic(resolution.row)
            if (typeof row === "string") {
              return yield* failWith(change, "InvalidChange", `change ${change.id}: the resolver's row holds a value that is not a SQL literal in column ${row}`)
            }
            const decision = Values.replaceDecision(change, table, key, current, row, null)
            prefetch.clear()
            if (execute(Values.statements(decision, table)) !== undefined) {
              return mode === "push" ? "fail" as const : "drop" as const
            }
            recordConflict(change, key, "Constraint", current, decision, { resolution, statement, message })
            return "replaced" as const
          }
          // KeepLocal or Fail: the local change cannot be applied. A pull only previews the push: the
          // transaction stays pending (re-recorded) and the push reports the failure.
          if (mode === "pull") {
            recordConflict(change, key, "Constraint", current, { _tag: "Skip", conflict: null }, { resolution, statement, message })
            return "drop" as const
          }
          return "fail" as const
        })

      // The local transaction being replayed: a unit, inside a savepoint when a policy may drop it.
      let group: {
        readonly txId: number
        readonly ids: Array<number>
        /** Runs of changes written in bulk (first and last id), in the attached log. */
        readonly runs: Array<readonly [number, number]>
        readonly touched: Set<string>
        readonly suspendedAtStart: typeof suspended
        /** The last change replayed one by one (undefined: only bulk runs so far). */
        last: Change | undefined
        ddl: boolean
        drop: boolean
      } | undefined
      const useSavepoints = resolve !== undefined
      const closeGroup = Effect.gen(function*() {
        const g = group
        if (g === undefined) return
        group = undefined
        // (bulk runs are written only where no foreign key can act: a group of them alone has no last change)
        if (!g.drop && fkActive && g.touched.size > 0 && useSavepoints && g.last !== undefined) {
          const found = yield* ForeignKeys.violations(sql, g.ddl ? undefined : g.touched)
          if (found.length > 0) {
            const last = g.last
            const message = `FOREIGN KEY constraint failed: ${ForeignKeys.describe(found)}`
            const statement = "PRAGMA foreign_key_check"
            const info = yield* tableInfo(last.table)
            const key = info === undefined ? undefined : Values.lookupKey(last, info)
            const current = info === undefined || key === undefined ? null : yield* attempt(() => readCurrent(exec, info, key))
            const resolution = yield* resolve!({
              kind: "Constraint",
              table: last.table,
              key: key === undefined ? [] : Values.publicKey(key),
              change: publicChange(last),
              remote: Values.publicImage(current),
              mode,
              statement,
              message
            })
            if (!ConflictPolicy.dropsTransaction(resolution) && mode === "push") {
              return yield* new ReplayError({
                reason: "Constraint",
                message: `local transaction ${last.txId}: ${message}`,
                changeId: last.id,
                txId: last.txId,
                table: last.table,
                statement
              })
            }
            recordConflict(last, key, "Constraint", current, { _tag: "Skip", conflict: null }, { resolution, statement, message })
            g.drop = true
          }
        }
        if (useSavepoints) {
          if (g.drop) {
            yield* attempt(() => exec.run(`ROLLBACK TO _sync_tx`))
            prefetch.clear()
            if (g.runs.length === 0) {
              for (const id of g.ids) dropped.push(id)
            } else {
              const ids = [...g.ids]
              for (const [from, to] of g.runs) {
                for (const id of yield* attempt(() => Bulk.idsOf(exec, log!, from, to))) ids.push(id)
              }
              for (const id of ids.sort((x, y) => x - y)) dropped.push(id)
            }
            suspended = g.suspendedAtStart
            tables.clear()
            if (g.ddl) fkActive = yield* fkProbe
          }
          yield* attempt(() => exec.run(`RELEASE _sync_tx`))
        }
      })

      /** The group of local transaction `txId`, the one before closed. */
      const enter = (txId: number) =>
        Effect.gen(function*() {
          if (group !== undefined && group.txId !== txId) yield* closeGroup
          if (group === undefined) {
            if (useSavepoints) yield* attempt(() => exec.run(`SAVEPOINT _sync_tx`))
            group = {
              txId,
              ids: [],
              runs: [],
              touched: new Set(),
              suspendedAtStart: suspended,
              last: undefined,
              ddl: false,
              drop: false
            }
          }
          return group
        })

      let last = done
      let applied = 0
      /** Replays a page of changes one by one. */
      const replayPage = (page: ReadonlyArray<Change>) =>
        Effect.gen(function*() {
        yield* readPage(page)
        for (let index = 0; index < page.length; index++) {
          const original = page[index]!
          if (index % 256 === 255) yield* Effect.yieldNow()
          last = Math.max(last, original.id)
          applied++
          const g = yield* enter(original.txId)
          g.ids.push(original.id)
          g.last = original
          if (g.drop) continue
          let change = original
          if (change.kind === "ddl") {
            const text = change.sql ?? ""
            // The schema change sees the real schema (it may create or drop triggers itself).
            yield* attempt(() => restoreTriggers(exec, suspended))
            for (const part of splitStatements(text)) {
              try {
                exec.once(part)
              } catch (cause) {
                if (!alreadyApplied(part, messageOf(cause))) {
                  return yield* failWith(change, "Statement", `schema change ${change.id} failed: ${messageOf(cause)}`, part, Executor.toSqlError(cause))
                }
              }
            }
            tables.clear()
            createSql.clear()
            prefetch.clear()
            ddlRan = true
            g.ddl = true
            suspended = suspend ? yield* attempt(() => suspendTriggers(exec)) : []
            fkActive = yield* fkProbe
            readAhead = yield* readAheadProbe
            continue
          }
          touched.add(change.table)
          g.touched.add(change.table)
          let table = tables.get(change.table)
          if (table === undefined && !tables.has(change.table)) table = yield* tableInfo(change.table)
          if (table === undefined) {
            return yield* failWith(change, "MissingTable", `change ${change.id}: table ${change.table} does not exist here`)
          }
          let key = Values.lookupKey(change, table)
          if (key === undefined) {
            return yield* failWith(change, "NoRowIdentity", `change ${change.id}: no key for a row of ${change.table}`)
          }
          // An insert whose key is free needs no read: it is written at once (the decision is what `decide`
          // answers for an absent row); an insert meeting any existing row goes the long way below.
          if (transform === undefined && options.decide === undefined && change.kind === "insert") {
            const quick = Values.insertIfAbsent(change, table)
            if (quick !== undefined) {
              let written = 0
              try {
                written = exec.run(quick.sql, quick.params)
              } catch {
                // (a CHECK or NOT NULL failure: the long way meets it again and puts it to the policy)
              }
              if (written === 1) {
                prefetch.wrote(change.table, key)
                continue
              }
            }
          }
          let current: ChangeLog.Values | null
          try {
            const ahead = prefetch.take(index, change.table, key)
            current = ahead !== undefined ? ahead : readCurrent(exec, table, key)
          } catch (cause) {
            return yield* Effect.fail(Executor.toSqlError(cause))
          }
          if (transform !== undefined) {
            const outcome = yield* transform(publicChange(change), Values.publicImage(current))
            if (outcome._tag === "Skip") continue
            if (outcome._tag === "Rewrite") {
              const rewritten = ChangeLog.fromPublic({ ...outcome.change, id: original.id, txId: original.txId })
              if (typeof rewritten === "string") {
                return yield* failWith(change, "InvalidChange", `change ${change.id} was rewritten with a value that is not a SQL literal (${rewritten})`)
              }
              change = rewritten
              table = yield* tableInfo(change.table)
              if (table === undefined) {
                return yield* failWith(change, "MissingTable", `change ${change.id}: table ${change.table} does not exist here`)
              }
              key = Values.lookupKey(change, table)
              if (key === undefined) {
                return yield* failWith(change, "NoRowIdentity", `change ${change.id}: no key for a row of ${change.table}`)
              }
              current = yield* attempt(() => readCurrent(exec, table!, key!))
            }
          }
          const base = options.decide === undefined
            ? Values.decide(change, current, table)
            : Values.fromPublic(options.decide(publicChange(change), Values.publicImage(current), table))
          const seen = "conflict" in base ? base.conflict : null
          let decision = base
          let resolution: ConflictPolicy.Resolution | undefined
          if (seen !== null && resolve !== undefined) {
            resolution = yield* resolve({
              kind: seen,
              table: change.table,
              key: Values.publicKey(key),
              change: publicChange(change),
              remote: Values.publicImage(current),
              mode
            })
            if (resolution._tag === "Fail" && mode === "push") {
              return yield* Effect.fail(
                new ReplayError({
                  reason: "Unresolved",
                  message: `change ${change.id} (local transaction ${change.txId}) on ${change.table}: ${seen} ` +
                    `conflict at ${describeKey(key)}: ${resolution.message ?? "the resolver decided to fail"}`,
                  changeId: change.id,
                  txId: change.txId,
                  table: change.table,
                  kind: seen
                })
              )
            }
            if (ConflictPolicy.dropsTransaction(resolution) || resolution._tag === "Fail") {
              recordConflict(change, key, seen, current, { _tag: "Skip", conflict: seen }, { resolution })
              g.drop = true
              continue
            }
            if (resolution._tag === "Replace") {
              const row = Values.valuesFromPublic(resolution.row)
              if (typeof row === "string") {
                return yield* failWith(change, "InvalidChange", `change ${change.id}: the resolver's row holds a value that is not a SQL literal in column ${row}`)
              }
              decision = Values.replaceDecision(change, table, key, current, row, seen)
            }
          }
          if (seen !== null) recordConflict(change, key, seen, current, decision, resolution ? { resolution } : {})
          if (decision._tag === "Invalid") {
            return yield* failWith(change, "InvalidChange", `change ${change.id}: ${decision.reason}`)
          }
          wrote(change.table, decision)
          const failed = execute(Values.statements(decision, table))
          if (failed === undefined) continue
          const error = new ReplayError({
            reason: isConstraint(failed.cause) ? "Constraint" : "Statement",
            message: `change ${change.id} (local transaction ${change.txId}) on ${change.table}: ${messageOf(failed.cause)}`,
            changeId: change.id,
            txId: change.txId,
            table: change.table,
            statement: failed.statement,
            cause: Executor.toSqlError(failed.cause)
          })
          if (error.reason !== "Constraint" || resolve === undefined) return yield* error
          const settled = yield* settleConstraint(change, table, key, current, failed.statement, messageOf(failed.cause))
          if (settled === "fail") return yield* error
          if (settled === "drop") g.drop = true
          // Replaced: the failed statement was undone by SQLite (ABORT); the replacement row was written.
        }
        })

      /** Replays changes `after+1..to` one by one, a page at a time. */
      const replayRange = (after: number, to: number) =>
        Effect.gen(function*() {
          let cursor = after
          while (cursor < to) {
            const page = (yield* source(cursor, Math.min(PAGE, to - cursor))).filter((change) => change.id <= to)
            if (page.length === 0) return
            yield* replayPage(page)
            cursor = page[page.length - 1]!.id
          }
        })

      if (log === undefined) {
        let page = first
        while (page.length > 0) {
          yield* replayPage(page)
          // (a short page was the end of the log when it was read: changes logged since wait for the next replay)
          if (page.length < PAGE) break
          page = yield* source(page[page.length - 1]!.id, PAGE)
        }
      } else if (first.length > 0) {
        // Runs of changes (one transaction, table, kind and column list) are tried in bulk (see bulk.ts);
        // whatever cannot go in bulk goes one by one, in id order all the same.
        let after = done
        let pendingFrom = done
        // the end of a run of deletes written as one table-wide delete: its remaining pieces are done
        let cleared = done
        /** Changes `first..end` of `table`, `count` of them, written in bulk in the group `g`. */
        const wroteBulk = (g: NonNullable<typeof group>, table: string, first: number, end: number, count: number) => {
          g.runs.push([first, end])
          applied += count
          last = Math.max(last, end)
          touched.add(table)
          g.touched.add(table)
          prefetch.clear()
          pendingFrom = end
        }
        // A log that begins with a long run (the changes of one large statement: the common large push) is
        // taken a piece at a time without reading first where the run ends (see Bulk.longStart), as far as
        // its pieces go in bulk; the runs after that are read as below. A run of deletes goes this way only
        // as one table-wide delete.
        const long = transform === undefined && options.decide === undefined && readAhead
          ? yield* attempt(() => Bulk.longStart(exec, log, done))
          : undefined
        if (long !== undefined) {
          const { maxId, start } = long
          if (!tables.has(start.table)) yield* tableInfo(start.table)
          const table = readAheadOn(start.table)
          const keys = Bulk.eligible({ ...start, last: maxId, runId: start.id, runLast: maxId }, table)
          const entered = table === undefined || keys === undefined ? undefined : yield* enter(start.txId)
          if (table !== undefined && keys !== undefined && entered !== undefined && !entered.drop) {
            const wrote = (first: number, end: number, count: number) => {
              wroteBulk(entered, start.table, first, end, count)
              after = end
            }
            if (start.kind === "delete") {
              const whole = yield* attempt(() => Bulk.attemptClearTo(exec, start, maxId, table, keys, log))
              if (whole !== undefined) wrote(start.id, maxId, whole)
            } else {
              for (let first = start.id; first <= maxId; first += Bulk.MAX_RUN) {
                const end = Math.min(maxId, first + Bulk.MAX_RUN - 1)
                const count = yield* attempt(() => Bulk.attemptPiece(exec, start, first, end, table, keys, log))
                yield* Effect.yieldNow()
                if (count === undefined) break
                wrote(first, end, count)
              }
            }
          }
        }
        for (;;) {
          const runs = yield* attempt(() => Bulk.readRuns(exec, log, after))
          if (runs.length === 0) break
          for (const run of runs) {
            after = run.last
            if (run.last <= cleared) continue
            if (transform !== undefined || options.decide !== undefined || !Bulk.mayTry(run)) continue
            // the changes before this run first, one by one (a schema change among them changes what follows)
            yield* replayRange(pendingFrom, run.id - 1)
            pendingFrom = run.id - 1
            if (!readAhead) continue
            if (!tables.has(run.table)) yield* tableInfo(run.table)
            const table = readAheadOn(run.table)
            const keys = Bulk.eligible(run, table)
            if (table === undefined || keys === undefined) continue
            const entered = yield* enter(run.txId)
            if (entered.drop) continue
            const whole = yield* attempt(() => Bulk.attemptClear(exec, run, table, keys, log))
            const count = whole ?? (yield* attempt(() => Bulk.attempt(exec, run, table, keys, log)))
            yield* Effect.yieldNow()
            if (count === undefined) continue
            const end = whole === undefined ? run.last : run.runLast
            if (whole !== undefined) cleared = end
            wroteBulk(entered, run.table, run.id, end, count)
          }
        }
        yield* replayRange(pendingFrom, after)
      }
      yield* closeGroup
      yield* attempt(() => restoreTriggers(exec, suspended))
      // Deferred foreign keys are checked by COMMIT; find violations first so the failure is a typed error
      // and a clean rollback (see foreignKeys.ts).
      // (asked of the connection first: with foreign keys off, as they are by default, there is nothing to find)
      const foreignKeysOn = yield* attempt(() => exec.values(`SELECT foreign_keys FROM pragma_foreign_keys`)[0]?.[0] === 1n)
      const found = foreignKeysOn ? yield* ForeignKeys.violations(sql, ddlRan ? undefined : touched) : []
      if (found.length > 0) {
        return yield* new ReplayError({
          reason: "Constraint",
          message: `FOREIGN KEY constraint failed after replay: ${ForeignKeys.describe(found)}`
        })
      }
      if (options.mode === "push") {
        if (applied > 0) {
          yield* attempt(() => {
            exec.once(PROGRESS_DDL)
            exec.run(
              `INSERT INTO main._sync_progress (client_id, change_id) VALUES (?, ?)
               ON CONFLICT (client_id) DO UPDATE SET change_id = max(change_id, excluded.change_id)`,
              [options.clientId, last]
            )
          })
        }
      } else {
        // The changes stay pending in the copy that becomes Draft: recorded again, read again page by page.
        yield* ensureLog(sql).pipe(Effect.catchTag("CaptureError", (error) =>
          new ReplayError({ reason: "Statement", message: error.message, cause: error })))
        let width = yield* attempt(() => ChangeLog.widthOf(exec, "main", "_sync_changes"))
        let after = done
        for (;;) {
          const batch = yield* source(after, PAGE)
          if (batch.length === 0) break
          yield* attempt(() => {
            for (const change of batch) width = ChangeLog.record(exec, change, width)
          })
          after = batch[batch.length - 1]!.id
          yield* Effect.yieldNow()
        }
        const floor = yield* attempt(() =>
          tableExists(exec, "_sync_progress")
            ? Number(exec.values(`SELECT coalesce(max(change_id), 0) FROM main._sync_progress`)[0]![0])
            : 0
        )
        yield* raiseSequenceFloor(sql, Math.max(floor, last))
      }
      return { lastChangeId: last, applied, conflicts, dropped }
    }))
  }))
