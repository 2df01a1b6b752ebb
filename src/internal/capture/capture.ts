import * as SqlClient from "@effect/sql/SqlClient"
import type BetterSqlite3 from "better-sqlite3"
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Context from "effect/Context"
import * as FiberRef from "effect/FiberRef"
import type * as Fiber from "effect/Fiber"
import * as Exit from "effect/Exit"
import type { YieldWrap } from "effect/Utils"
import * as Option from "effect/Option"
import { globalValue } from "effect/GlobalValue"
import type * as ChangeCapture from "../../ChangeCapture.js"
import {
  firstKeyword,
  mayInsert,
  ident,
  mayChangeSchema,
  splitStatements,
  stringLiteral,
  stripLeadingComments
} from "../sqlite/sqlText.js"
import { CaptureError } from "./captureError.js"
import * as ChangeLog from "./changeLog.js"
import * as Executor from "../sqlite/executor.js"
import * as ForeignKeys from "../sqlite/foreignKeys.js"
import * as TableInfo from "../sqlite/tableInfo.js"

// ---------------------------------------------------------------------------------------------------------
// Schema of the log. Shared with ChangeReplay (pull mode re-records changes into Synced with the same DDL,
// so that the copy that becomes Draft holds exactly this table).
// ---------------------------------------------------------------------------------------------------------

export const CHANGES_TABLE = "_sync_changes"

export const createChangesTable = ChangeLog.createChangesTable

/**
 * Per-connection state: the open capture transaction's id, the schema version triggers match, and the id
 * floor (see changeLog.ts).
 */
const createSession = `CREATE TEMP TABLE IF NOT EXISTS _sync_session (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  tx_id INTEGER,
  schema_version INTEGER NOT NULL,
  floor INTEGER NOT NULL DEFAULT 0
)`

/**
 * Rows a BEFORE trigger found in the way of a write through a UNIQUE index other than the key. They are
 * moved into the log as deletes by the AFTER trigger, which fires only when the write really happened
 * (an `OR REPLACE` eviction); an `OR IGNORE`/failed write leaves them behind to be cleared by the next one.
 */
const createEvicted = ChangeLog.createEvicted(ChangeLog.INITIAL_WIDTH)

/**
 * Raises the log's id floor to at least `floor` (every id the remote has acknowledged, or pruned): kept in
 * main, and in this connection's session when capture is installed on it. After a pull, Draft is a copy of
 * Synced whose log holds only the still-pending changes: without this floor an empty log would hand out ids
 * the progress row already counts as applied.
 */
export const raiseSequenceFloor = (sql: SqlClient.SqlClient, floor: number) =>
  Effect.provideService(Executor.withExecutor((exec) => raiseFloor(exec, floor)), SqlClient.SqlClient, sql)

const raiseFloor = (exec: Executor.Executor, floor: number) => {
  const session = exec.values(`SELECT 1 FROM temp.sqlite_schema WHERE type = 'table' AND name = '_sync_session'`).length > 0
  const version = Number(exec.values(`PRAGMA main.schema_version`)[0]![0])
  const made = ChangeLog.persistFloor(exec, floor)
  if (!session) return
  exec.run(`UPDATE temp._sync_session SET floor = max(floor, ?)`, [Math.trunc(floor)])
  // The floor's own table is no schema change the triggers must follow.
  if (made) {
    exec.run(
      `UPDATE temp._sync_session SET schema_version = (SELECT schema_version FROM pragma_schema_version) WHERE schema_version = ?`,
      [version]
    )
  }
}

// ---------------------------------------------------------------------------------------------------------
// Trigger text (pure)
// ---------------------------------------------------------------------------------------------------------

export const TRIGGER_PREFIX = "_sync_"

/**
 * A logged row's transaction: the capture transaction's, or the statement's that `execute` runs (set in the
 * session around it, or, on a connection this module has the handle of, kept by {@link STATEMENT_TX} while
 * the direct path runs it); else, for a write that bypasses both, the row's own id.
 */
const txIdOf = (candidate: string, statementTx: boolean) =>
  `coalesce((SELECT tx_id FROM temp._sync_session), ${statementTx ? `${STATEMENT_TX}(${candidate})` : candidate})`

/**
 * A function the direct path's connection has: while a statement runs armed, the first id offered is the
 * statement's txId, returned for every row it logs; unarmed, the id offered. Costs a call per logged row, where
 * setting the session around the statement costs two statements (each a TEMP transaction). SQL alone has no
 * marker of the statement a trigger runs for: `total_changes()` moves inside one statement (SQLite adds each
 * trigger statement's changes as it finishes, the log's own inserts included), `changes()` names the last
 * statement that finished, and a TEMP row per statement is itself a write per statement.
 */
const STATEMENT_TX = "_sync_statement_tx"

interface StatementTx {
  armed: boolean
  tx: unknown
}

const statementTxs = globalValue(
  Symbol.for("effect-sqlite-sync/ChangeCapture/statementTxs"),
  () => new WeakMap<BetterSqlite3.Database, StatementTx>()
)

/** The connection's statement-tx function, registered once; undefined for a client without a handle. */
const statementTxOf = (sql: SqlClient.SqlClient): StatementTx | undefined => {
  const db = Executor.handleOf(sql)
  if (db === undefined) return undefined
  let state = statementTxs.get(db)
  if (state === undefined) {
    const made: StatementTx = { armed: false, tx: undefined }
    db.function(STATEMENT_TX, { deterministic: false }, (candidate: unknown) => {
      if (!made.armed) return candidate
      if (made.tx === undefined) made.tx = candidate
      return made.tx
    })
    statementTxs.set(db, made)
    state = made
  }
  return state
}

/** The values of a row (NEW, OLD or an alias), each as is: the log keeps them exactly (see changeLog.ts). */
const valuesExpr = (row: string, columns: ReadonlyArray<string>): ReadonlyArray<string> =>
  columns.map((column) => `${row}.${ident(column)}`)

const columnsLiteral = (info: TableInfo.TableInfo) => stringLiteral(JSON.stringify(info.columns))

const rowidExpr = (row: string, info: TableInfo.TableInfo): string =>
  info.primaryKey.length === 0 && info.rowidAlias !== null ? `${row}.${ident(info.rowidAlias)}` : "NULL"

const valueColumns = (count: number) => Array.from({ length: count }, (_, i) => ChangeLog.valueColumn(i))

const logInsert = (
  info: TableInfo.TableInfo,
  kind: "insert" | "update" | "delete",
  statementTx: boolean
): string => {
  const values: Array<string> = [
    ...(kind === "insert" ? [] : valuesExpr("OLD", info.columns)),
    ...(kind === "delete" ? [] : valuesExpr("NEW", info.columns))
  ]
  const split = kind === "update" && ChangeLog.splitUpdate(info.columns.length)
  if (split) values.splice(info.columns.length)
  const beforeRowid = kind === "insert" ? "NULL" : rowidExpr("OLD", info)
  const afterRowid = kind === "delete" ? "NULL" : rowidExpr("NEW", info)
  return `INSERT INTO main._sync_changes (id, tx_id, tbl, kind, cols, before_rowid, after_rowid${
    values.length === 0 ? "" : `, ${valueColumns(values.length).join(", ")}`
  })
  VALUES (${ChangeLog.nextId}, ${txIdOf(ChangeLog.nextId, statementTx)}, ${stringLiteral(info.name)}, '${kind}', ${columnsLiteral(info)}, ${beforeRowid}, ${afterRowid}${
    values.length === 0 ? "" : `, ${values.join(", ")}`
  });${
    split
      ? `
  INSERT INTO main.${ChangeLog.AFTER_TABLE} (id, ${valueColumns(info.columns.length).join(", ")})
  VALUES (last_insert_rowid(), ${valuesExpr("NEW", info.columns).join(", ")});`
      : ""
  }`
}

/** `a IS b AND ...` for the given column pairs. */
const allIs = (pairs: ReadonlyArray<readonly [string, string]>): string =>
  pairs.map(([left, right]) => `${left} IS ${right}`).join(" AND ")

/** The columns that identify a row: the primary key, else the reachable rowid. */
const keyColumns = (info: TableInfo.TableInfo): ReadonlyArray<string> =>
  info.primaryKey.length > 0 ? info.primaryKey : info.rowidAlias !== null ? [info.rowidAlias] : []

/**
 * Predicate over `main.T AS r`: rows other than the one being written (`self`) that the write of NEW would
 * evict with `OR REPLACE`: through a UNIQUE index, or through the key itself when an update changes it.
 * NULLs never conflict in a UNIQUE index, hence `=` rather than `IS`.
 */
const evictionPredicate = (info: TableInfo.TableInfo, self: "NEW" | "OLD"): string | undefined => {
  const key = keyColumns(info)
  // the key compares with each column's own collation, which `=` applies by default
  const keyIndex: TableInfo.UniqueIndex = {
    columns: key.map((column) => ({ column, expression: null, collation: "" })),
    where: null
  }
  const indexes = self === "OLD" && key.length > 0 ? [...info.uniqueIndexes, keyIndex] : info.uniqueIndexes
  if (indexes.length === 0) return undefined
  // A partial index only holds rows its WHERE accepts: both the written row and the other one must match.
  // The expression's bare column names resolve against a one-row projection of that row.
  const projection = (row: string) =>
    `(SELECT ${info.allColumns.map((column) => `${row}.${ident(column)} AS ${ident(column)}`).join(", ")})`
  const satisfies = (row: string, where: string) => `EXISTS (SELECT 1 FROM ${projection(row)} WHERE (${where}))`
  // An expression part is evaluated against each row the same way.
  const valueOf = (row: string, part: TableInfo.IndexColumn) =>
    part.expression !== null ? `(SELECT (${part.expression}) FROM ${projection(row)})` : `${row}.${ident(part.column!)}`
  const conflicts = indexes.map(({ columns, where }) => {
    const match = columns.map((part) =>
      `${valueOf("r", part)} = ${valueOf("NEW", part)}${part.collation === "" ? "" : ` COLLATE ${ident(part.collation)}`}`
    )
    if (where !== null) match.push(satisfies("NEW", where), satisfies("r", where))
    return "(" + match.join(" AND ") + ")"
  })
  const notSelf = key.length > 0
    ? `NOT (${allIs(key.map((column) => [`r.${ident(column)}`, `${self}.${ident(column)}`]))})`
    : "1"
  return `(${conflicts.join(" OR ")}) AND ${notSelf}`
}

/** The CREATE TEMP TRIGGER statements that capture one table. */
export const triggerStatements = (info: TableInfo.TableInfo, statementTx = false): ReadonlyArray<string> => {
  const table = `main.${ident(info.name)}`
  const name = (suffix: string) => ident(`${TRIGGER_PREFIX}${suffix}_${info.name}`)
  const refusal = info.primaryKey.length === 0 && info.rowidAlias === null
    // No key and the rowid hidden behind columns named rowid, _rowid_ and oid: no row identity to replay
    // by. Writes fail at once with a clear message rather than diverge (or block every later push).
    ? `effect-sqlite-sync: table ${info.name} has no PRIMARY KEY and columns named rowid, _rowid_ and oid ` +
      `hide its rowid, so its rows cannot be identified for sync; add a primary key`
    : info.columns.length > ChangeLog.MAX_TABLE_COLUMNS
    ? `effect-sqlite-sync: table ${info.name} has ${info.columns.length} columns; at most ` +
      `${ChangeLog.MAX_TABLE_COLUMNS} can be captured for sync`
    : undefined
  if (refusal !== undefined) {
    const message = stringLiteral(refusal)
    return (["INSERT", "UPDATE", "DELETE"] as const).map((event) =>
      `CREATE TEMP TRIGGER ${name(`no_${event.toLowerCase()}`)} BEFORE ${event} ON ${table} BEGIN
  SELECT RAISE(ABORT, ${message});
END`
    )
  }
  const tbl = stringLiteral(info.name)
  const statements: Array<string> = []
  const slots = valueColumns(info.columns.length).join(", ")
  // The SELECT reads the log, so SQLite runs it to the end before inserting: the ids count up from one base.
  const moveEvicted = `INSERT INTO main._sync_changes (id, tx_id, tbl, kind, cols, before_rowid, ${slots})
  SELECT n.base + row_number() OVER (ORDER BY e.seq) - 1, ${txIdOf("n.base", statementTx)},
    e.tbl, 'delete', ${columnsLiteral(info)}, e.before_rowid, ${valuesExpr("e", valueColumns(info.columns.length)).join(", ")}
  FROM temp._sync_evicted AS e, (SELECT ${ChangeLog.nextId} AS base) AS n
  WHERE e.tbl = ${tbl} ORDER BY e.seq;
  DELETE FROM temp._sync_evicted WHERE tbl = ${tbl};`
  const stage = (self: "NEW" | "OLD") => {
    const predicate = evictionPredicate(info, self)
    if (predicate === undefined) return undefined
    return `DELETE FROM temp._sync_evicted WHERE tbl = ${tbl};
  INSERT INTO temp._sync_evicted (tbl, before_rowid, ${slots})
  SELECT ${tbl}, ${rowidExpr("r", info)}, ${valuesExpr("r", info.columns).join(", ")} FROM ${table} AS r WHERE ${predicate};`
  }
  const stageInsert = stage("NEW")
  const stageUpdate = stage("OLD")
  if (stageInsert !== undefined) {
    statements.push(`CREATE TEMP TRIGGER ${name("bi")} BEFORE INSERT ON ${table} BEGIN
  ${stageInsert}
END`)
  }
  if (stageUpdate !== undefined) {
    statements.push(`CREATE TEMP TRIGGER ${name("bu")} BEFORE UPDATE ON ${table} BEGIN
  ${stageUpdate}
END`)
  }
  statements.push(`CREATE TEMP TRIGGER ${name("ai")} AFTER INSERT ON ${table} BEGIN
  ${stageInsert !== undefined ? moveEvicted : ""}
  ${logInsert(info, "insert", statementTx)}
END`)
  statements.push(`CREATE TEMP TRIGGER ${name("au")} AFTER UPDATE ON ${table} BEGIN
  ${stageUpdate !== undefined ? moveEvicted : ""}
  ${logInsert(info, "update", statementTx)}
END`)
  statements.push(`CREATE TEMP TRIGGER ${name("ad")} AFTER DELETE ON ${table} BEGIN
  ${logInsert(info, "delete", statementTx)}
END`)
  return statements
}

// ---------------------------------------------------------------------------------------------------------
// Effects
// ---------------------------------------------------------------------------------------------------------

/**
 * Bookkeeping reads numbers as numbers even when the caller asked for BigInts (`SqlClient.SafeIntegers`)
 * for its own rows: ids and versions here stay far below 2^53.
 */
export const plain = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.provideService(effect, SqlClient.SafeIntegers, false)

const plainGen = <Eff extends YieldWrap<Effect.Effect<any, any, any>>, A>(
  f: () => Generator<Eff, A, never>
) => plain(Effect.gen(f))

const schemaVersion = (sql: SqlClient.SqlClient) =>
  plain(Effect.map(
    sql<{ readonly schema_version: number }>`PRAGMA main.schema_version`.withoutTransform,
    (rows) => rows[0]!.schema_version
  ))

/**
 * The triggers last made for a schema, by the text of main's `sqlite_schema` once the log was widened for
 * it: a connection opened on a schema seen before (Draft, reopened after every pull's copy) creates the same
 * triggers from their text, without reading every table's columns and indexes again. A few schemas kept.
 */
interface MadeTriggers {
  readonly statements: ReadonlyArray<string>
  /** The width the eviction table (TEMP, new on each connection) needs. */
  readonly widest: number
}

const madeForSchema = globalValue(
  Symbol.for("effect-sqlite-sync/ChangeCapture/madeForSchema"),
  () => new Map<string, MadeTriggers>()
)

const SCHEMAS_KEPT = 8

/** Main's schema as text: every object's type, name and SQL, in order (what the triggers are made from). */
const schemaText = (exec: Executor.Executor): string =>
  exec.values("SELECT type, name, sql FROM main.sqlite_schema ORDER BY rowid")
    .map((row) => `${row[0]}\u001f${row[1]}\u001f${row[2] ?? ""}`).join("\u001e")

const rememberTriggers = (schema: string, made: MadeTriggers) => {
  madeForSchema.delete(schema)
  madeForSchema.set(schema, made)
  if (madeForSchema.size > SCHEMAS_KEPT) madeForSchema.delete(madeForSchema.keys().next().value!)
}

/**
 * The value columns the log (and the eviction table) need for the triggers of `tables`: one for every value
 * a trigger writes.
 */
const widths = (tables: ReadonlyArray<TableInfo.TableInfo>) => {
  const captured = tables.map((info) => info.columns.length).filter((n) => n <= ChangeLog.MAX_TABLE_COLUMNS)
  return {
    log: Math.max(0, ...captured.map((n) => ChangeLog.splitUpdate(n) ? n : 2 * n)),
    widest: Math.max(0, ...captured),
    split: captured.filter(ChangeLog.splitUpdate)
  }
}

/**
 * Every table's triggers made from its columns and indexes (`known`: the tables as read already in this
 * transaction); remembered for the schema as it stands after.
 */
const makeTriggers = (sql: SqlClient.SqlClient, known?: ReadonlyArray<TableInfo.TableInfo>) =>
  Effect.gen(function*() {
    const tables = known ?? (yield* TableInfo.readAll)
    const { log, split, widest } = widths(tables)
    yield* Executor.withExecutor((exec) => {
      ChangeLog.widen(exec, "main", "_sync_changes", log)
      ChangeLog.widen(exec, "temp", "_sync_evicted", widest)
      if (split.length > 0) ChangeLog.widen(exec, "main", ChangeLog.AFTER_TABLE, Math.max(...split))
    })
    const made: Array<string> = []
    const statementTx = statementTxOf(sql) !== undefined
    const create = (info: TableInfo.TableInfo) => {
      const statements = triggerStatements(info, statementTx)
      return sql.withTransaction(Effect.forEach(statements, (statement) => runUncached(sql, statement), {
        discard: true
      })).pipe(Effect.tap(() => made.push(...statements)))
    }
    for (const info of tables) {
      // A partial index's WHERE that cannot be evaluated from a trigger must not stop capture of the table:
      // without those indexes only their evictions go unseen.
      yield* create(info).pipe(
        Effect.catchAll((error) =>
          info.uniqueIndexes.some((index) => index.where !== null)
            ? create({ ...info, uniqueIndexes: info.uniqueIndexes.filter((index) => index.where === null) })
            : Effect.fail(error)
        )
      )
    }
    rememberTriggers(yield* triggersKey(sql), { statements: made, widest })
  })

/** What the triggers are made from: main's schema, and whether the connection has the statement-tx function. */
const triggersKey = (sql: SqlClient.SqlClient) => Executor.withExecutor((exec) => triggersKeyOf(sql, exec))

const triggersKeyOf = (sql: SqlClient.SqlClient, exec: Executor.Executor) =>
  `${statementTxOf(sql) === undefined ? "session" : STATEMENT_TX}\u001d${schemaText(exec)}`

/** The triggers remembered for `made`'s schema, created again (a failure leaves none of them). */
const remakeTriggers = (sql: SqlClient.SqlClient, made: MadeTriggers) =>
  sql.withTransaction(Executor.withExecutor((exec) => {
    ChangeLog.widen(exec, "temp", "_sync_evicted", made.widest)
    for (const statement of made.statements) exec.once(statement)
  }))

const reinstallTriggers = (sql: SqlClient.SqlClient, tables?: ReadonlyArray<TableInfo.TableInfo>) =>
  plainGen(function*() {
    // Synchronous steps run on the connection directly: one effect each instead of one per statement.
    const key = yield* Executor.withExecutor((exec) => {
      const ours = exec.values(
        `SELECT name FROM temp.sqlite_schema WHERE type = 'trigger' AND substr(name, 1, 6) = '_sync_'`
      )
      for (const [name] of ours) exec.once(`DROP TRIGGER IF EXISTS temp.${ident(String(name))}`)
      return triggersKeyOf(sql, exec)
    })
    const known = madeForSchema.get(key)
    yield* known === undefined
      ? makeTriggers(sql, tables)
      : remakeTriggers(sql, known).pipe(Effect.catchAll(() => makeTriggers(sql, tables)))
    return yield* Executor.withExecutor((exec) => {
      exec.run(`DELETE FROM temp._sync_evicted`)
      // Read as SQLite's own number into the session (the version's text differs from an application's
      // `PRAGMA main.schema_version`: a client's cached statement keeps the integer mode it last ran with).
      const version = Number(
        exec.values(`UPDATE temp._sync_session SET schema_version = (SELECT schema_version FROM pragma_schema_version)
          RETURNING schema_version`)[0]![0]
      )
      return version
    })
  })

const knownInstalled = globalValue(
  Symbol.for("effect-sqlite-sync/ChangeCapture/knownInstalled"),
  () => new WeakSet<SqlClient.SqlClient>()
)

/**
 * Installs capture on the connection (the log, the session, the triggers) in one transaction; with `floor`,
 * also raises the log's id floor to it (what {@link ensureChangeIdsAbove} does, without its second look at
 * the log's format).
 */
const installWith = (floor: number | undefined): Effect.Effect<void, SqlError | CaptureError, SqlClient.SqlClient> =>
  plainGen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.withTransaction(Effect.gen(function*() {
      // A database without the log (a new replica's first open) gets it as wide as its tables' triggers need
      // at once: widening it afterwards rewrites the table (a rename, a copy and a drop, each a schema change).
      // The tables read for it are the ones the triggers are made for (the log is no user table).
      let tables: ReadonlyArray<TableInfo.TableInfo> | undefined
      if (!(yield* Executor.withExecutor(logExists))) {
        tables = yield* TableInfo.readAll
        yield* sql.unsafe(ChangeLog.createChangesTableOfWidth(widths(tables).log)).raw
      }
      yield* ensureLog(sql)
      yield* Executor.withExecutor((exec) => {
        exec.once(createSession)
        exec.once(createEvicted)
        exec.run(`INSERT OR IGNORE INTO temp._sync_session (id, tx_id, schema_version) VALUES (1, NULL, -1)`)
        exec.run(`UPDATE temp._sync_session SET floor = max(floor, ?)`, [ChangeLog.storedFloor(exec)])
      })
      yield* reinstallTriggers(sql, tables)
      if (floor !== undefined) yield* raiseSequenceFloor(sql, floor)
    }))
    knownInstalled.add(sql)
  })

export const install: Effect.Effect<void, SqlError | CaptureError, SqlClient.SqlClient> = installWith(undefined)

/** {@link install}, then {@link ensureChangeIdsAbove} `floor`, in one transaction. */
export const installAbove = (floor: number): Effect.Effect<void, SqlError | CaptureError, SqlClient.SqlClient> =>
  installWith(floor)

const isInstalled = (sql: SqlClient.SqlClient) =>
  plain(Effect.map(
    sql<{ readonly n: number }>`
      SELECT count(*) AS n FROM temp.sqlite_schema WHERE type = 'table' AND name = '_sync_session'`.withoutTransform,
    (rows) => rows[0]!.n > 0
  ))

interface CaptureState {
  readonly txId: number
}

const currentState = globalValue(
  Symbol.for("effect-sqlite-sync/ChangeCapture/currentState"),
  () => FiberRef.unsafeMake<CaptureState | undefined>(undefined)
)

/** The capture transaction's id, if the current fiber is inside one. */
export const currentTransactionId: Effect.Effect<number | undefined> = Effect.map(
  FiberRef.get(currentState),
  (state) => state?.txId
)

export const transaction = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  statement?: string
): Effect.Effect<A, E | SqlError | CaptureError, R | SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const outer = yield* FiberRef.get(currentState)
    // A rolled-back transaction may have taken this connection's capture state with it (install, trigger
    // reinstalls): forget that it is known to be installed, so the next write checks again.
    const forgetOnFailure = <X, Y, Z>(self: Effect.Effect<X, Y, Z>) =>
      Effect.onExit(self, (exit) => Exit.isFailure(exit) ? Effect.sync(() => knownInstalled.delete(sql)) : Effect.void)
    // Nested: the same local transaction (a savepoint, so a failing inner part can be caught and rolled back).
    if (outer !== undefined) return yield* forgetOnFailure(sql.withTransaction(effect))
    const recordStatement = (txId: number) =>
      Effect.gen(function*() {
        yield* logDdl(sql, txId, statement!)
        yield* reinstallTriggers(sql)
      })
    return yield* forgetOnFailure(sql.withTransaction(Effect.gen(function*() {
      // One statement opens the capture transaction: allocate the id, read the versions to compare.
      const begin = sql<SessionRow>`UPDATE temp._sync_session
        SET tx_id = ${sql.literal(ChangeLog.nextId)}
        RETURNING tx_id, schema_version AS installed, (SELECT schema_version FROM pragma_schema_version) AS current`
        .withoutTransform
      // @effect/sql-sqlite-node caches a statement that failed to prepare (as a failure, for minutes): `begin`
      // must never be prepared before the session table exists on this connection.
      if (!knownInstalled.has(sql)) {
        if (!(yield* isInstalled(sql))) yield* install
        knownInstalled.add(sql)
      }
      const opened = yield* plain(begin).pipe(
        Effect.catchAll((error) =>
          // installed state rolled back with an outer transaction: the cached statement is valid, rerun it
          Effect.flatMap(isInstalled(sql), (installed) => installed ? Effect.fail(error) : Effect.zipRight(install, begin))
        )
      )
      let session = opened[0]!
      if (session.installed !== session.current) {
        // The schema changed without going through capture (outside any capture transaction): there is no
        // statement text to record. Capture what exists from now on and say so.
        yield* Effect.logWarning("effect-sqlite-sync: schema changed outside ChangeCapture; triggers reinstalled")
        yield* reinstallTriggers(sql)
        session = (yield* plain(begin))[0]!
      }
      const txId = session.tx_id!
      const result = yield* Effect.locally(effect, currentState, { txId })
      // One statement closes it: versions to compare, and whether deferred foreign keys need a look.
      const [closed] = yield* plain(sql<SessionRow & { readonly deferred: number }>`
        UPDATE temp._sync_session SET tx_id = NULL
        RETURNING tx_id, schema_version AS installed, (SELECT schema_version FROM pragma_schema_version) AS current,
          ${sql.literal(ForeignKeys.mayBeDeferredExpr)} AS deferred`.withoutTransform)
      if (closed!.deferred === 1) {
        const found = yield* plain(ForeignKeys.violations(sql, undefined))
        if (found.length > 0) {
          // COMMIT would fail and leave the connection inside the transaction (see foreignKeys.ts).
          return yield* Effect.fail(
            new SqlError({ message: `FOREIGN KEY constraint failed: ${ForeignKeys.describe(found)}` })
          )
        }
      }
      if (closed!.installed !== closed!.current) {
        if (statement === undefined) return yield* Effect.fail(unrecordedSchemaChange())
        yield* recordStatement(txId)
      }
      return result
    })))
  })

/** A schema change's text, logged under transaction `txId`. */
const logDdl = (sql: SqlClient.SqlClient, txId: number, statement: string) =>
  sql.unsafe(
    `INSERT INTO main._sync_changes (id, tx_id, tbl, kind, sql) VALUES (${ChangeLog.nextId}, ?, '', 'ddl', ?)`,
    [txId, statement]
  ).raw

interface SessionRow {
  readonly tx_id: number | null
  readonly installed: number
  readonly current: number
}

const unrecordedSchemaChange = () =>
  new CaptureError({
    reason: "UnrecordedSchemaChange",
    message: "the schema changed inside ChangeCapture.transaction through a statement not run with " +
      "ChangeCapture.execute, so its SQL text is unknown and it cannot be replicated; the transaction was rolled back"
  })

export interface ExecuteResult {
  readonly rows: ReadonlyArray<Record<string, unknown>>
  readonly changes: number
  readonly lastInsertRowid: number | bigint
}

export const execute = (
  statement: string,
  params: ReadonlyArray<unknown> = []
): Effect.Effect<ExecuteResult, SqlError | CaptureError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const state = yield* FiberRef.get(currentState)
    const parts = statement.includes(";") ? splitStatements(statement) : [statement]
    if (state === undefined) {
      const sql = yield* SqlClient.SqlClient
      const single = parts.length <= 1 ? parts[0] ?? statement : undefined
      if (
        single !== undefined && !mayChangeSchema(single) && knownInstalled.has(sql) &&
        Option.isNone(yield* Effect.serviceOption(SqlClient.TransactionConnection))
      ) {
        // One DML statement in autocommit mode is already one transaction with the log rows its triggers
        // write, all of them sharing the txId set around it; a deferred foreign-key violation fails just the
        // statement. No capture transaction needed.
        return yield* Effect.acquireUseRelease(
          sql.unsafe(SET_STATEMENT_TX).raw,
          () => runStatement(sql, single, params),
          () => Effect.orDie(sql.unsafe(CLEAR_STATEMENT_TX).raw)
        )
      }
      if (single !== undefined && firstKeyword(single) === "VACUUM" && knownInstalled.has(sql)) {
        // VACUUM cannot run inside a transaction and rewrites the file without changing its content; it bumps
        // the schema cookie, which is not a schema change to replicate.
        const result = yield* runStatement(sql, single, params)
        yield* plain(Effect.flatMap(
          schemaVersion(sql),
          (version) => sql`UPDATE temp._sync_session SET schema_version = ${version}`.raw
        ))
        return result
      }
      return yield* transaction(execute(statement, params))
    }
    if (parts.length <= 1) return yield* executeOne(state, parts[0] ?? statement, params)
    if (params.length > 0) {
      return yield* Effect.fail(
        new CaptureError({
          reason: "InvalidStatement",
          message: "bound parameters are only supported with a single statement"
        })
      )
    }
    let changes = 0
    let last: ExecuteResult = { rows: [], changes: 0, lastInsertRowid: 0 }
    for (const part of parts) {
      last = yield* executeOne(state, part, [])
      changes += last.changes
    }
    return { ...last, changes }
  })

/**
 * Set around a statement `execute` runs outside a capture transaction (off the direct path): the id its first
 * logged row gets becomes the txId of every row it logs (the log's ids are plain rowids, so nothing else
 * marks where a statement's rows begin). Both write only the connection's TEMP session: no WAL frame.
 */
const SET_STATEMENT_TX = `UPDATE temp._sync_session SET tx_id = ${ChangeLog.nextId}`
const CLEAR_STATEMENT_TX = `UPDATE temp._sync_session SET tx_id = NULL`

/** What the direct path needs to know of a statement text, decided once per text. */
interface DirectText {
  /** The one DML statement the text holds (without a trailing `;`), or undefined when it is not that. */
  readonly statement: string | undefined
  /** Whether it may insert rows (see {@link insertedRowid}). */
  readonly inserts: boolean
}

const directTexts = globalValue(
  Symbol.for("effect-sqlite-sync/ChangeCapture/directTexts"),
  () => new Map<string, DirectText>()
)

const directText = (text: string): DirectText => {
  let known = directTexts.get(text)
  if (known === undefined) {
    const parts = text.includes(";") ? splitStatements(text) : [text]
    const single = parts.length <= 1 ? parts[0] ?? text : undefined
    const statement = single !== undefined && !mayChangeSchema(single) ? single : undefined
    known = { statement, inserts: statement !== undefined && mayInsert(statement) }
    if (directTexts.size >= 1000) directTexts.clear()
    directTexts.set(text, known)
  }
  return known
}

/**
 * `execute` of one DML statement in autocommit mode, synchronously on the connection (the path `execute`
 * takes for it, without its Effect work): the statement and the log rows its triggers write are one SQLite
 * transaction. Undefined when `execute` must run it: several statements or one that may change the schema,
 * inside a capture transaction, capture not known to be installed on this connection, the connection held
 * by a transaction, a statement that does not prepare (execute retries those without the cache). A failing
 * statement throws SQLite's error. Runs only in one synchronous step with the caller's checks.
 */
export const executeDirect = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  sql: SqlClient.SqlClient,
  text: string,
  params: ReadonlyArray<unknown>
): ExecuteResult | undefined => {
  const { inserts, statement } = directText(text)
  if (statement === undefined || !knownInstalled.has(sql) || fiber.getFiberRef(currentState) !== undefined) return
  const direct = Executor.directOf(sql)
  if (direct === undefined || !direct.free()) return
  const statementTx = statementTxs.get(direct.db)
  if (statementTx === undefined) return
  let prepared: ReturnType<typeof direct.prepare>
  try {
    prepared = direct.prepare(statement)
  } catch {
    return
  }
  // the statement's rows share the txId of the first (see STATEMENT_TX): the statement runs armed
  statementTx.armed = true
  statementTx.tx = undefined
  try {
    return runDirect(fiber, direct, prepared, params, inserts)
  } finally {
    statementTx.armed = false
    statementTx.tx = undefined
  }
}

const runDirect = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  direct: Executor.Direct,
  prepared: ReturnType<Executor.Direct["prepare"]>,
  params: ReadonlyArray<unknown>,
  inserts: boolean
): ExecuteResult => {
  const safeIntegers = Context.get(fiber.currentContext, SqlClient.SafeIntegers)
  prepared.safeIntegers(safeIntegers)
  if (!prepared.reader) {
    const run = prepared.run(...params)
    return {
      rows: [],
      changes: run.changes,
      lastInsertRowid: run.changes > 0 && inserts ? run.lastInsertRowid : 0
    }
  }
  prepared.raw(false)
  const rows = prepared.all(...params) as ReadonlyArray<Record<string, unknown>>
  const info = direct.prepare("SELECT changes(), last_insert_rowid()")
  info.safeIntegers(safeIntegers)
  const [changes, rowid] = info.raw(true).get() as [number | bigint, number | bigint]
  return { rows, changes: Number(changes), lastInsertRowid: Number(changes) > 0 && inserts ? rowid : 0 }
}

const executeOne = (
  state: CaptureState,
  statement: string,
  params: ReadonlyArray<unknown>
): Effect.Effect<ExecuteResult, SqlError | CaptureError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const check = mayChangeSchema(statement)
    const before = check ? yield* schemaVersion(sql) : 0
    const result = yield* runStatement(sql, statement, params)
    const after = check ? yield* schemaVersion(sql) : 0
    if (after !== before) {
      if (/^\s*CREATE\s+VIRTUAL\s/i.test(stripLeadingComments(statement))) {
        return yield* Effect.fail(
          new CaptureError({
            reason: "UnsupportedDdl",
            message: "virtual tables cannot be captured (SQLite allows no triggers on them or their shadow " +
              `tables), so their rows would not sync: ${statement}`
          })
        )
      }
      if (params.length > 0) {
        return yield* Effect.fail(
          new CaptureError({
            reason: "UnsupportedDdl",
            message: `a schema change with bound parameters cannot be replicated: ${statement}`
          })
        )
      }
      yield* logDdl(sql, state.txId, statement)
      yield* reinstallTriggers(sql)
    }
    return result
  })

/**
 * Runs a user statement, through @effect/sql-sqlite-node's prepared-statement cache when possible. That cache
 * keeps a statement that failed to PREPARE as a failure for minutes, so `SELECT * FROM t` tried before
 * `CREATE TABLE t` would keep failing after it: a prepare failure is retried without the cache, and the text
 * is remembered for this client so it never goes through the cache again.
 */
/**
 * The rowid of the last row the statement inserted, as SQLite reports it, or 0 when it inserted none
 * (`CREATE`, `UPDATE`, `DELETE`, an ignored `INSERT`): SQLite would report an earlier insert's rowid there.
 */
const insertedRowid = (statement: string, changes: number | bigint, rowid: number | bigint): number | bigint =>
  Number(changes) > 0 && mayInsert(statement) ? rowid : 0

const runStatement = (
  sql: SqlClient.SqlClient,
  statement: string,
  params: ReadonlyArray<unknown>
): Effect.Effect<ExecuteResult, SqlError> => {
  const uncached = Effect.zipWith(
    runUncached(sql, statement, params),
    sql<{ readonly changes: number; readonly id: number | bigint }>`
      SELECT changes() AS changes, last_insert_rowid() AS id`.withoutTransform,
    (rows, [info]) => ({ rows, changes: Number(info!.changes), lastInsertRowid: insertedRowid(statement, info!.changes, info!.id) })
  )
  const poisoned = poisonedTexts(sql)
  if (poisoned.has(statement)) return uncached
  return sql.unsafe(statement, params as Array<unknown>).raw.pipe(
    Effect.flatMap((raw): Effect.Effect<ExecuteResult, SqlError> => {
      if (!Array.isArray(raw)) {
        const run = raw as { readonly changes: number | bigint; readonly lastInsertRowid: number | bigint }
        return Effect.succeed({
          rows: [],
          changes: Number(run.changes),
          lastInsertRowid: insertedRowid(statement, run.changes, run.lastInsertRowid)
        })
      }
      return Effect.map(
        sql<{ readonly changes: number; readonly id: number | bigint }>`
          SELECT changes() AS changes, last_insert_rowid() AS id`.withoutTransform,
        ([info]) => ({
          rows: raw as ReadonlyArray<Record<string, unknown>>,
          changes: Number(info!.changes),
          lastInsertRowid: insertedRowid(statement, info!.changes, info!.id)
        })
      )
    }),
    Effect.catchAll((error) => {
      if (!(error.message ?? "").startsWith("Failed to prepare")) return Effect.fail(error)
      if (poisoned.size >= 10_000) poisoned.clear()
      poisoned.add(statement)
      return uncached
    })
  )
}

const poisonedByClient = globalValue(
  Symbol.for("effect-sqlite-sync/ChangeCapture/poisoned"),
  () => new WeakMap<SqlClient.SqlClient, Set<string>>()
)

const poisonedTexts = (sql: SqlClient.SqlClient): Set<string> => {
  let set = poisonedByClient.get(sql)
  if (set === undefined) {
    set = new Set()
    poisonedByClient.set(sql, set)
  }
  return set
}

/** Runs a statement without the prepared-statement cache; a prepare error becomes an SqlError, not a defect. */
export const runUncached = (
  sql: SqlClient.SqlClient,
  statement: string,
  params: ReadonlyArray<unknown> = []
): Effect.Effect<ReadonlyArray<Record<string, unknown>>, SqlError> =>
  sql.withoutTransforms().unsafe<Record<string, unknown>>(statement, params as Array<unknown>).unprepared.pipe(
    Effect.catchAllDefect((defect) => Effect.fail(new SqlError({ cause: defect, message: "Failed to prepare statement" })))
  )

/** Whether main holds the change log. */
const logExists = (exec: Executor.Executor) =>
  exec.values(`SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = '${CHANGES_TABLE}'`).length > 0

/**
 * Runs the synchronous `f` with the executor of the environment's client, as one step: on a connection the
 * engine opened and no transaction holds, directly (nothing else can run on it in between, see
 * `Executor.Direct`); otherwise inside a transaction of the client (one of its own, or a savepoint in the
 * caller's), so that its statements see one state of the database either way. The small reads and writes of
 * the log on every push cost one effect this way instead of several per statement.
 */
const inOneStep = <A>(f: (exec: Executor.Executor) => A): Effect.Effect<A, SqlError, SqlClient.SqlClient> =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => {
    const step = Executor.withExecutor(f)
    return Executor.freeExecutor(sql) !== undefined ? step : sql.withTransaction(step)
  })

export const ensureChangeIdsAbove = (
  floor: number
): Effect.Effect<void, SqlError | CaptureError, SqlClient.SqlClient> =>
  plainGen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.withTransaction(Effect.gen(function*() {
      yield* ensureLog(sql)
      yield* raiseSequenceFloor(sql, floor)
    }))
  })

/** Changes with id > `afterId` in the log's own form (values exact), at most `limit`. */
export const pendingValues = (
  afterId: number,
  limit?: number
): Effect.Effect<ReadonlyArray<ChangeLog.LogChange>, SqlError, SqlClient.SqlClient> =>
  plain(inOneStep((exec) => pendingValuesIn(exec, afterId, limit)))

/** {@link pendingValues} with `exec`, in one synchronous step. */
export const pendingValuesIn = (exec: Executor.Executor, afterId: number, limit?: number): ReadonlyArray<ChangeLog.LogChange> =>
  logExists(exec) ? ChangeLog.readPage(exec, afterId, limit ?? -1) : []

export const pending = (
  afterId: number,
  limit?: number
): Effect.Effect<ReadonlyArray<ChangeCapture.Change>, SqlError, SqlClient.SqlClient> =>
  Effect.map(pendingValues(afterId, limit), (changes) => changes.map(ChangeLog.toPublic))

/**
 * Deletes the rows of log table `table` with ids up to `upToId`. When nothing is logged after it (the usual
 * case after a push), a DELETE without a WHERE clause, which SQLite carries out by freeing the table's pages
 * whole instead of rewriting each as its rows go. `later`: whether rows after `upToId` are known to exist.
 */
const pruneTable = (exec: Executor.Executor, table: string, upToId: number, later?: boolean) => {
  const anyLater = later ??
    Number(exec.values(`SELECT EXISTS (SELECT 1 FROM main.${table} WHERE id > ?)`, [upToId])[0]![0]) !== 0
  if (anyLater) exec.run(`DELETE FROM main.${table} WHERE id <= ?`, [upToId])
  else exec.run(`DELETE FROM main.${table}`)
}

/**
 * Creates the log and its id floor if absent; a log in the first format (JSON images of literals) is
 * rewritten in place, and one with AUTOINCREMENT ids is rebuilt with plain ids, within the caller's
 * transaction.
 */
export const ensureLog = (sql: SqlClient.SqlClient): Effect.Effect<void, SqlError | CaptureError> =>
  Effect.gen(function*() {
    yield* sql.unsafe(createChangesTable).raw
    const migrated = yield* Effect.provideService(
      Executor.withExecutor((exec) => ChangeLog.isFirstFormat(exec) ? ChangeLog.migrate(exec) : undefined),
      SqlClient.SqlClient,
      sql
    )
    if (migrated !== undefined && migrated.unreadable.length > 0) {
      return yield* new CaptureError({
        reason: "LogMigration",
        message: `cannot upgrade the change log: pending change${migrated.unreadable.length === 1 ? "" : "s"} ` +
          `${migrated.unreadable.slice(0, 5).join(", ")} of the earlier format cannot be read (migration step: ` +
          `rewriting _sync_changes from JSON literals to typed values); nothing was changed`
      })
    }
    yield* Effect.provideService(
      Executor.withExecutor((exec) => {
        if (ChangeLog.isAutoincrement(exec)) ChangeLog.dropAutoincrement(exec)
      }),
      SqlClient.SqlClient,
      sql
    ).pipe(Effect.mapError((cause) =>
      new CaptureError({
        reason: "LogMigration",
        message: `cannot upgrade the change log (migration step: rebuilding _sync_changes with plain ids in place ` +
          `of AUTOINCREMENT): ${cause.message}; nothing was changed`,
        cause
      })
    ))
  })

export const lastChangeId: Effect.Effect<number, SqlError, SqlClient.SqlClient> = plain(
  inOneStep((exec) => logExists(exec) ? ChangeLog.lastId(exec) : 0)
)

export const countPending = (afterId: number, atMost?: number): Effect.Effect<number, SqlError, SqlClient.SqlClient> =>
  plain(inOneStep((exec) => countPendingIn(exec, afterId, atMost)))

/** {@link countPending} with `exec`, in one synchronous step. */
export const countPendingIn = (exec: Executor.Executor, afterId: number, atMost?: number): number => {
  if (!logExists(exec)) return 0
  const rows = atMost === undefined
    ? exec.values(`SELECT count(*) FROM main._sync_changes WHERE id > ?`, [afterId])
    : exec.values(`SELECT count(*) FROM (SELECT 1 FROM main._sync_changes WHERE id > ? LIMIT ?)`, [afterId, atMost])
  return Number(rows[0]![0])
}

export const prune = (upToId: number): Effect.Effect<void, SqlError, SqlClient.SqlClient> =>
  plain(inOneStep((exec) => pruneIn(exec, upToId)))

/** {@link prune} with `exec`, in one synchronous step. */
export const pruneIn = (exec: Executor.Executor, upToId: number): void => {
  if (!logExists(exec)) return
  // The next id is above the log's highest or the floor: with no higher id left in the log to keep the
  // pruned ones from being handed out again, the floor rises to them first.
  const [pruned, later] = exec.values(
    `SELECT (SELECT max(id) FROM main._sync_changes WHERE id <= ?), EXISTS (SELECT 1 FROM main._sync_changes WHERE id > ?)`,
    [upToId, upToId]
  )[0]!
  if (pruned !== null && Number(later) === 0) raiseFloor(exec, Number(pruned))
  pruneTable(exec, CHANGES_TABLE, upToId, Number(later) !== 0)
  if (exec.values(`SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?`, [ChangeLog.AFTER_TABLE]).length > 0) {
    pruneTable(exec, ChangeLog.AFTER_TABLE, upToId)
  }
}
