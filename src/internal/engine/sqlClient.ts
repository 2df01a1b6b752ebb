/**
 * An @effect/sql `SqlClient` over a SyncDatabase. It holds no connection of its own: every statement asks
 * the engine, which resolves the copy that is current at that moment (Draft, or Synced while a pull
 * replaces Draft), so a statement prepared on a replaced file is never run. Reads go to the active copy
 * under a read permit; writes go through change capture under a write permit; `withTransaction` is one
 * capture transaction on Draft holding a write permit until it commits or rolls back.
 *
 * @internal
 */
import * as Client from "@effect/sql/SqlClient"
import type * as Connection from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import * as ChangeCapture from "../../ChangeCapture.js"
import type * as SyncError from "../../SyncError.js"
import { refusedStatement } from "./local.js"

/** What the client needs from the engine (members the SyncDatabase service carries at runtime). */
export interface EngineAccess {
  readonly execute: (
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<{ readonly changes: number; readonly lastInsertRowid: number | bigint }, SyncError.SqlStatementError>
  readonly query: <Row extends object = Record<string, unknown>>(
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<Row>, SyncError.SqlStatementError>
  readonly executeRows: (
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ChangeCapture.ExecuteResult, SyncError.SqlStatementError>
  /** SQLite's verdict: whether a statement only reads (it then runs on the active copy, uncaptured). */
  readonly classify: (sql: string) => Effect.Effect<"read" | "write">
  readonly transaction: <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ) => Effect.Effect<
    A,
    E | SqlError | ChangeCapture.CaptureError | SyncError.SqlStatementError,
    Exclude<R, Client.SqlClient>
  >
}

// withTransaction's BEGIN/COMMIT/ROLLBACK reach the transaction connection as these texts: the engine owns
// the real ones (ChangeCapture.transaction on Draft).
const BEGIN = "-- effect-sqlite-sync: begin"
const COMMIT = "-- effect-sqlite-sync: commit"
const ROLLBACK = "-- effect-sqlite-sync: rollback"

const toSqlError = (error: unknown): SqlError =>
  error instanceof SqlError ? error : new SqlError({
    cause: error,
    message: typeof error === "object" && error !== null && "message" in error ? String(error.message) : String(error)
  })

type Result = ChangeCapture.ExecuteResult & { readonly reader: boolean }

const rawOf = (result: Result): unknown =>
  result.reader || result.rows.length > 0
    ? result.rows
    : { changes: result.changes, lastInsertRowid: result.lastInsertRowid }

const makeConnection = (run: (sql: string, params: ReadonlyArray<unknown>) => Effect.Effect<Result, SqlError>) => {
  const execute: Connection.Connection["execute"] = (sql, params, transformRows) =>
    Effect.map(run(sql, params), (r) => transformRows ? transformRows(r.rows as ReadonlyArray<object>) : r.rows)
  return {
    execute,
    executeUnprepared: execute,
    executeRaw: (sql, params) => Effect.map(run(sql, params), rawOf),
    executeValues: (sql, params) => Effect.map(run(sql, params), (r) => r.rows.map((row) => Object.values(row))),
    executeStream: (sql, params, transformRows) =>
      Stream.fromIterableEffect(execute(sql, params, transformRows))
  } satisfies Connection.Connection
}

const RETURNING = /\bRETURNING\b/i

/** Outside a transaction: a read on the active copy, anything else through capture. */
const autocommit = (engine: EngineAccess) =>
  makeConnection((sql, params) =>
    Effect.flatMap(engine.classify(sql), (kind): Effect.Effect<Result, SqlError> =>
    kind === "read"
      ? Effect.map(engine.query(sql, params), (rows): Result => ({ rows, changes: 0, lastInsertRowid: 0, reader: true }))
        .pipe(Effect.mapError(toSqlError))
      : Effect.map(
        // `execute` (the service's) also reports the write to events/status and autoSync; it has no rows.
        RETURNING.test(sql)
          ? engine.executeRows(sql, params)
          : Effect.map(engine.execute(sql, params), (r) => ({ ...r, rows: [] })),
        (r): Result => ({ ...r, reader: false })
      ).pipe(Effect.mapError(toSqlError)))
  )

type Request =
  | { readonly _tag: "Run"; readonly sql: string; readonly params: ReadonlyArray<unknown>; readonly reply: Deferred.Deferred<Result, SqlError> }
  | { readonly _tag: "End"; readonly commit: boolean }

class RolledBack {
  readonly _tag = "RolledBack"
}

/**
 * One transaction: a fiber runs the engine's transaction and, inside it, the statements the caller's fiber
 * sends (the capture transaction's state lives in that fiber). It ends when withTransaction commits or rolls
 * back, or when its scope closes first (rolled back).
 */
const transactionConnection = (engine: EngineAccess) =>
  Effect.gen(function*() {
    const requests = yield* Queue.unbounded<Request>()
    const ready = yield* Deferred.make<void, SqlError>()
    const body = Effect.gen(function*() {
      yield* Deferred.succeed(ready, undefined)
      for (;;) {
        const request = yield* Queue.take(requests)
        if (request._tag === "End") {
          if (request.commit) return
          return yield* Effect.fail(new RolledBack())
        }
        const refused = refusedStatement(request.sql)
        const exit = yield* Effect.exit<ChangeCapture.ExecuteResult, SqlError | ChangeCapture.CaptureError | SyncError.SqlStatementError, Client.SqlClient>(
          refused !== undefined ? Effect.fail(refused) : ChangeCapture.execute(request.sql, request.params)
        )
        yield* Deferred.done(
          request.reply,
          Exit.mapBoth(exit, { onFailure: toSqlError, onSuccess: (r): Result => ({ ...r, reader: r.rows.length > 0 }) })
        )
      }
    })
    const fiber = yield* Effect.forkDaemon(
      engine.transaction(body).pipe(
        Effect.tapErrorCause((cause) => Deferred.fail(ready, toSqlError(Cause.squash(cause))))
      )
    )
    const ended = (commit: boolean) =>
      Effect.zipRight(
        Queue.offer(requests, { _tag: "End", commit }),
        Effect.flatMap(Fiber.await(fiber), (exit) =>
          Exit.isSuccess(exit) || (!commit && Exit.isFailure(exit)) ? Effect.void : Effect.fail(toSqlError(Cause.squash(exit.cause))))
      )
    yield* Effect.addFinalizer(() => Effect.ignore(ended(false)))
    // Wait for the write permit and BEGIN, or for the transaction to fail before it began (no race here:
    // withTransaction acquires uninterruptibly, so a losing racer could never be interrupted).
    yield* Deferred.await(ready)
    const run = (sql: string, params: ReadonlyArray<unknown>): Effect.Effect<Result, SqlError> => {
      if (sql === BEGIN) return Effect.succeed({ rows: [], changes: 0, lastInsertRowid: 0, reader: false })
      if (sql === COMMIT || sql === ROLLBACK) {
        return Effect.as(ended(sql === COMMIT), { rows: [], changes: 0, lastInsertRowid: 0, reader: false })
      }
      return Effect.flatMap(Deferred.make<Result, SqlError>(), (reply) =>
        Effect.zipRight(Queue.offer(requests, { _tag: "Run", sql, params, reply }), Deferred.await(reply)))
    }
    return makeConnection(run)
  })

/** The SqlClient (needs Reactivity, as every @effect/sql client does). */
export const make = (engine: EngineAccess) =>
  Client.make({
    acquirer: Effect.succeed(autocommit(engine)),
    transactionAcquirer: transactionConnection(engine),
    compiler: Statement.makeCompilerSqlite(),
    spanAttributes: [["db.system", "sqlite"]],
    beginTransaction: BEGIN,
    commit: COMMIT,
    rollback: ROLLBACK
  })
