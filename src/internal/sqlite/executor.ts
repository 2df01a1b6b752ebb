/**
 * Synchronous statement execution for the hot paths (replay, reading the change log): prepared statements
 * with bound parameters, cached per text, reads as arrays with 64-bit integers as bigints.
 *
 * On a client the engine opened itself ({@link makeClient}) it runs on the better-sqlite3 handle directly,
 * with no Effect, span or fiber work per statement. On any other SqlClient (a user's `SqliteClient` given to
 * `ChangeReplay.apply`) each statement runs through the client, synchronously, in the caller's context (so
 * inside a transaction it uses the transaction's connection).
 *
 * Errors are thrown: SQLite's own error (with its `code`) where there is one.
 *
 * @internal
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Client from "@effect/sql/SqlClient"
import type * as Connection from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import BetterSqlite3 from "better-sqlite3"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { globalValue } from "effect/GlobalValue"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"

export interface Executor {
  /** Rows as arrays (integers as bigint). */
  readonly values: (sql: string, params?: ReadonlyArray<unknown>) => Array<Array<unknown>>
  /** Runs a statement that returns no rows; the number of rows it changed. */
  readonly run: (sql: string, params?: ReadonlyArray<unknown>) => number
  /** Runs a statement once, without caching it (schema changes, savepoints with changing names). */
  readonly once: (sql: string) => void
}

const handles = globalValue(
  Symbol.for("effect-sqlite-sync/executor/handles"),
  () => new WeakMap<Client.SqlClient, BetterSqlite3.Database>()
)

/** The better-sqlite3 handle behind a client the engine opened, if it is one. */
export const handleOf = (client: Client.SqlClient): BetterSqlite3.Database | undefined => handles.get(client)

const CACHE = 256

/** An executor straight on a better-sqlite3 handle, with its own statement cache. */
export const fromHandle = (db: BetterSqlite3.Database): Executor => {
  const cache = new Map<string, BetterSqlite3.Statement>()
  const prepare = (sql: string) => {
    let statement = cache.get(sql)
    if (statement === undefined) {
      statement = db.prepare(sql)
      if (statement.reader) statement.raw(true)
      statement.safeIntegers(true)
      if (cache.size >= CACHE) cache.clear()
      cache.set(sql, statement)
    }
    return statement
  }
  return {
    values: (sql, params = []) => prepare(sql).all(...params) as Array<Array<unknown>>,
    run: (sql, params = []) => prepare(sql).run(...params).changes,
    once: (sql) => {
      db.prepare(sql).run()
    }
  }
}

const executors = globalValue(
  Symbol.for("effect-sqlite-sync/executor/executors"),
  () => new WeakMap<BetterSqlite3.Database, Executor>()
)

const unwrap = (cause: Cause.Cause<unknown>): unknown => {
  const error = Cause.squash(cause)
  return error instanceof SqlError && error.cause !== undefined ? error.cause : error
}

/** The executor straight on `db`, made once per handle. */
const executorOfHandle = (db: BetterSqlite3.Database): Executor => {
  let cached = executors.get(db)
  if (cached === undefined) {
    cached = fromHandle(db)
    executors.set(db, cached)
  }
  return cached
}

/**
 * The executor of a client the engine opened, when no transaction holds it and none is open on it (see
 * {@link Direct.free}): statements run on it in one synchronous step are autocommit statements of their own.
 * Undefined for any other client, or while a transaction does.
 */
export const freeExecutor = (client: Client.SqlClient): Executor | undefined => {
  const direct = directs.get(client)
  return direct !== undefined && direct.free() ? executorOfHandle(direct.db) : undefined
}

/** The executor for the SqlClient in the environment (see the module comment). */
export const executor: Effect.Effect<Executor, never, Client.SqlClient> = Effect.gen(function*() {
  const sql = yield* Client.SqlClient
  const db = handleOf(sql)
  if (db !== undefined) return executorOfHandle(db)
  const context = yield* Effect.context<Client.SqlClient>()
  const runSync = <A>(effect: Effect.Effect<A, SqlError, Client.SqlClient>): A => {
    const exit = Effect.runSyncExit(Effect.provide(Effect.provideService(effect, Client.SafeIntegers, true), context))
    if (Exit.isSuccess(exit)) return exit.value
    throw unwrap(exit.cause)
  }
  return {
    values: (text, params = []) =>
      runSync(sql.unsafe<Record<string, unknown>>(text, params as Array<unknown>).withoutTransform)
        .map((row) => Object.values(row)),
    run: (text, params = []) => {
      const result = runSync(sql.unsafe(text, params as Array<unknown>).raw) as { readonly changes?: number | bigint }
      return Number(result?.changes ?? 0)
    },
    once: (text) => {
      runSync(sql.unsafe(text).unprepared)
    }
  }
})

/**
 * Whether `sql` is one statement that only reads, by SQLite's own verdict on the prepared statement
 * (`sqlite3_stmt_readonly`: it writes no database file) and one that returns rows (transaction control,
 * ATTACH and setting PRAGMAs are "read-only" to SQLite, but are not reads). Prepared on the client's
 * connection; undefined for a client without a handle here. A statement that cannot be prepared throws.
 */
export const isPureRead = (client: Client.SqlClient, sql: string): boolean | undefined => {
  const db = handleOf(client)
  if (db === undefined) return undefined
  const statement = db.prepare(sql)
  return statement.readonly && statement.reader
}

/** A thrown SQLite error as an SqlError (statement failures are typed errors, not defects). */
export const toSqlError = (cause: unknown, message = "Failed to execute statement"): SqlError =>
  cause instanceof SqlError ? cause : new SqlError({ cause, message: `${message}: ${String((cause as Error)?.message ?? cause)}` })

/** Runs `f` with the executor of the environment's client; a throw becomes an SqlError. */
export const withExecutor = <A>(f: (exec: Executor) => A): Effect.Effect<A, SqlError, Client.SqlClient> =>
  Effect.flatMap(executor, (exec) => Effect.try({ try: () => f(exec), catch: (cause) => toSqlError(cause) }))

// ---------------------------------------------------------------------------------------------------------
// The engine's own SqlClient over a better-sqlite3 handle it keeps
// ---------------------------------------------------------------------------------------------------------

/**
 * Direct, synchronous access to a connection the engine opened, for the hot paths of `execute` and `query`:
 * its handle, its statement cache, and whether a transaction holds it. A statement may run here without
 * going through the client only in one synchronous step that first checks {@link Direct.free}: nothing else
 * can run on the connection in between (better-sqlite3 is synchronous and fibers take turns).
 *
 * @internal
 */
export interface Direct {
  readonly db: BetterSqlite3.Database
  /** The prepared statement for `sql` from the connection's cache (least recently used dropped); throws. */
  readonly prepare: (sql: string) => BetterSqlite3.Statement
  /** No transaction holds the connection and none is open on it: an autocommit statement may run now. */
  readonly free: () => boolean
}

const directs = globalValue(
  Symbol.for("effect-sqlite-sync/executor/directs"),
  () => new WeakMap<Client.SqlClient, Direct>()
)

/** Direct access to a client the engine opened, if it is one. */
export const directOf = (client: Client.SqlClient): Direct | undefined => directs.get(client)

/** Prepared statements kept per connection, by SQL text. */
const STATEMENTS = 500

/**
 * An @effect/sql client on a better-sqlite3 connection this module opens (WAL mode), whose handle
 * {@link handleOf} returns. One connection; statements are cached per text, least recently used dropped
 * first (a statement that fails to prepare is not cached, so it can succeed once the schema allows it).
 * Closed with the scope.
 */
export const makeClient = (options: {
  readonly filename: string
  readonly readonly?: boolean | undefined
}): Effect.Effect<Client.SqlClient, never, Scope.Scope> =>
  Effect.gen(function*() {
    const db = new BetterSqlite3(options.filename, { readonly: options.readonly ?? false })
    yield* Effect.addFinalizer(() => Effect.sync(() => db.close()))
    if (options.readonly !== true) db.pragma("journal_mode = WAL")
    const cache = new Map<string, BetterSqlite3.Statement>()
    const prepare = (sql: string): BetterSqlite3.Statement => {
      let statement = cache.get(sql)
      if (statement === undefined) {
        statement = db.prepare(sql)
        if (cache.size >= STATEMENTS) cache.delete(cache.keys().next().value!)
      } else {
        // a Map iterates in insertion order: moved to the end, the first key is the least recently used
        cache.delete(sql)
      }
      cache.set(sql, statement)
      return statement
    }
    const runStatement = (
      prepared: () => BetterSqlite3.Statement,
      params: ReadonlyArray<unknown>,
      mode: "rows" | "raw" | "values"
    ) =>
      Effect.withFiberRuntime<unknown, SqlError>((fiber) => {
        let statement: BetterSqlite3.Statement
        try {
          statement = prepared()
        } catch (cause) {
          return Effect.fail(new SqlError({ cause, message: "Failed to prepare statement " }))
        }
        try {
          statement.safeIntegers(Context.get(fiber.currentContext, Client.SafeIntegers))
          if (statement.reader) {
            statement.raw(mode === "values")
            return Effect.succeed(statement.all(...params))
          }
          const result = statement.run(...params)
          return Effect.succeed(mode === "raw" ? result : [])
        } catch (cause) {
          return Effect.fail(new SqlError({ cause, message: "Failed to execute statement" }))
        }
      })
    const connection: Connection.Connection = {
      execute: (sql, params, transformRows) =>
        Effect.map(runStatement(() => prepare(sql), params, "rows"), (rows) =>
          transformRows ? transformRows(rows as ReadonlyArray<any>) : rows as ReadonlyArray<any>),
      executeRaw: (sql, params) => runStatement(() => prepare(sql), params, "raw"),
      executeValues: (sql, params) => runStatement(() => prepare(sql), params, "values") as any,
      executeUnprepared: (sql, params, transformRows) =>
        Effect.map(runStatement(() => db.prepare(sql), params ?? [], "rows"), (rows) =>
          transformRows ? transformRows(rows as ReadonlyArray<any>) : rows as ReadonlyArray<any>),
      executeStream: (sql, params, transformRows) =>
        Stream.fromIterableEffect(
          Effect.map(runStatement(() => prepare(sql), params, "rows"), (rows) =>
            transformRows ? transformRows(rows as ReadonlyArray<any>) : rows as ReadonlyArray<any>)
        )
    }
    const semaphore = yield* Effect.makeSemaphore(1)
    // Whether a transaction holds the connection (from its acquisition to its release), for `Direct.free`.
    let held = false
    const client = yield* Client.make({
      acquirer: semaphore.withPermits(1)(Effect.succeed(connection)),
      transactionAcquirer: Effect.uninterruptibleMask((restore) =>
        Effect.as(
          Effect.zipRight(
            Effect.zipRight(restore(semaphore.take(1)), Effect.sync(() => {
              held = true
            })),
            Effect.tap(Effect.scope, (scope) =>
              Scope.addFinalizer(
                scope,
                Effect.zipRight(
                  Effect.sync(() => {
                    held = false
                  }),
                  semaphore.release(1)
                )
              ))
          ),
          connection
        )
      ),
      compiler: Statement.makeCompilerSqlite(),
      spanAttributes: [["db.system.name", "sqlite"]]
    }).pipe(Effect.provide(Reactivity.layer))
    handles.set(client, db)
    directs.set(client, { db, prepare, free: () => !held && db.open && !db.inTransaction })
    return client
  })
