/**
 * The local operations: writes go to Draft through change capture under a write permit; reads go to the
 * active copy under a read permit; stats read the metadata and the counters.
 *
 * @internal
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeCapture from "../../ChangeCapture.js"
import type { ExecuteResult, Stats } from "../../SyncDatabase.js"
import * as SyncError from "../../SyncError.js"
import * as Changes from "../live/changes.js"
import * as Reactive from "../live/reactive.js"
import * as Executor from "../sqlite/executor.js"
import * as Files from "../sqlite/files.js"
import { sqlStatementError } from "./errors.js"
import { maybeFoldDraft } from "./fold.js"
import * as Gates from "./gates.js"
import { on, type State } from "./state.js"

/**
 * A keyword look at whether a statement only reads, for a client whose statements cannot be prepared here
 * (the engine's own copies use SQLite's verdict, see `query`). Comments and string literals are skipped.
 *
 * @internal
 */
export const isReadStatement = (sql: string): boolean => {
  const text = sql
    .replace(/--[^\n]*/g, " ")
    .replace(/\/\*[\s\S]*?\*\//g, " ")
    .replace(/'(?:[^']|'')*'/g, "''")
    .trim()
    .toUpperCase()
  const first = /^[A-Z]+/.exec(text)?.[0]
  if (first === "SELECT" || first === "VALUES" || first === "EXPLAIN") return true
  if (first === "PRAGMA") return !text.includes("=")
  if (first === "WITH") return !/\b(INSERT|UPDATE|DELETE|REPLACE)\b/.test(text)
  return false
}

/** Reactive queries and live sync hear of a committed write while its permit is held (Draft is its copy). */
const afterWrite = (state: State) => Changes.afterWrite(state.changes, state.draft)

/** @internal */
export const execute = (state: State) =>
(sql: string, params: ReadonlyArray<unknown> = []): Effect.Effect<ExecuteResult, SyncError.SqlStatementError> =>
  Gates.writing(state.gates, Effect.tap(on(state.draft, ChangeCapture.execute(sql, params)), afterWrite(state))).pipe(
    Effect.map((r): ExecuteResult => ({ changes: r.changes, lastInsertRowid: r.lastInsertRowid })),
    Effect.mapError(sqlStatementError("Statement", sql)),
    Effect.tap(() => maybeFoldDraft(state))
  )

/** `execute` that also returns the statement's rows (`INSERT ... RETURNING`): SyncDatabase.layerSqlClient. */
export const executeRows = (state: State) =>
(
  sql: string,
  params: ReadonlyArray<unknown> = []
): Effect.Effect<ChangeCapture.ExecuteResult, SyncError.SqlStatementError> =>
  Gates.writing(state.gates, Effect.tap(on(state.draft, ChangeCapture.execute(sql, params)), afterWrite(state))).pipe(
    Effect.mapError(sqlStatementError("Statement", sql)),
    Effect.tap(() => maybeFoldDraft(state))
  )

/**
 * Whether `sql` only reads, by SQLite's verdict on the active copy (see Executor.isPureRead); a statement
 * that does not prepare fails. Verdicts are kept per text (a text's verdict never changes once it prepares).
 */
const isRead = (state: State, client: SqlClient.SqlClient, sql: string): Effect.Effect<boolean, SqlError> => {
  const known = state.readVerdicts.get(sql)
  if (known !== undefined) return Effect.succeed(known)
  return Effect.try({
    try: () => {
      const verdict = Executor.isPureRead(client, sql) ?? isReadStatement(sql)
      if (state.readVerdicts.size >= 1000) state.readVerdicts.clear()
      state.readVerdicts.set(sql, verdict)
      return verdict
    },
    catch: (cause) => Executor.toSqlError(cause, "Failed to prepare statement")
  })
}

const onActive = <A, E>(state: State, f: (client: SqlClient.SqlClient) => Effect.Effect<A, E>) =>
  Gates.reading(
    state.gates,
    Effect.flatMap(Ref.get(state.gates.active), (which) =>
      Effect.flatMap((which === "draft" ? state.draft : state.synced).client, f))
  )

/** @internal */
export const query = (state: State) =>
<Row extends object = Record<string, unknown>>(
  sql: string,
  params: ReadonlyArray<unknown> = []
): Effect.Effect<ReadonlyArray<Row>, SyncError.SqlStatementError> =>
  onActive(state, (client) =>
    Effect.flatMap(isRead(state, client, sql), (read): Effect.Effect<ReadonlyArray<Row>, SqlError | SyncError.SqlStatementError> =>
      read
        ? client.unsafe<Row>(sql, params as Array<any>)
        : Effect.fail(
          new SyncError.SqlStatementError({
            reason: "Statement",
            message: "query runs reads only (SQLite reports that this statement writes, or it returns no rows; " +
              "a write here would bypass change capture); use execute",
            sql
          })
        ))
  ).pipe(Effect.mapError((error) => error._tag === "SqlStatementError" ? error : sqlStatementError("Statement", sql)(error)))

/** The tables `sql` reads, as reactive queries key them (Reactive.tablesRead), on the active copy. */
export const tablesRead = (state: State) =>
(sql: string, params: ReadonlyArray<unknown> = []): Effect.Effect<ReadonlyArray<string>, SyncError.SqlStatementError> =>
  onActive(
    state,
    (client) => Effect.provideService(Executor.withExecutor((exec) => Reactive.tablesRead(exec, sql, params)), SqlClient.SqlClient, client)
  ).pipe(Effect.mapError(sqlStatementError("Statement", sql)))

/** Whether `sql` is a pure read by SQLite's verdict (layerSqlClient routes by it); one that fails to prepare is not. */
export const classify = (state: State) => (sql: string): Effect.Effect<"read" | "write"> =>
  onActive(state, (client) => isRead(state, client, sql)).pipe(
    Effect.map((read) => read ? "read" as const : "write" as const),
    Effect.orElseSucceed(() => "write" as const)
  )

/**
 * Runs `effect` with Draft's SqlClient as ONE capture transaction (one unit of replay), holding one write
 * permit throughout, so a pull's copy step waits for it and it never spans a replaced Draft.
 */
export const transaction = (state: State) =>
<A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SqlError | ChangeCapture.CaptureError, Exclude<R, SqlClient.SqlClient>> =>
  Gates.writing(state.gates, Effect.tap(on(state.draft, ChangeCapture.transaction(effect)), afterWrite(state))).pipe(
    Effect.tap(() => maybeFoldDraft(state))
  )

/** @internal */
export const stats = (state: State): Effect.Effect<Stats, SyncError.SyncError> =>
  Effect.gen(function*() {
    const m = yield* SynchronizedRef.get(state.metadata)
    const pendingChanges = yield* Gates.reading(
      state.gates,
      Effect.flatMap(Ref.get(state.gates.active), (which) =>
        on(which === "draft" ? state.draft : state.synced, ChangeCapture.countPending(m.lastPushedChangeId)))
    ).pipe(Effect.mapError(sqlStatementError("Capture")))
    const t = yield* Ref.get(state.traffic)
    return {
      clientId: state.clientId,
      pendingChanges,
      generation: m.generation,
      syncedFrame: m.syncedFrame,
      lastPushAt: Option.map(Option.fromNullable(m.lastPushAt), (ms) => new Date(ms)),
      lastPullAt: Option.map(Option.fromNullable(m.lastPullAt), (ms) => new Date(ms)),
      bytesSent: t.sent,
      bytesReceived: t.received,
      draftWalBytes: yield* Files.fileSize(Files.walPath(state.paths.draft)),
      syncedWalBytes: yield* Files.fileSize(Files.walPath(state.paths.synced)),
      activeCopy: yield* Ref.get(state.gates.active),
      lastWriteBlockedMs: yield* Ref.get(state.lastWriteBlockedMs)
    }
  })
