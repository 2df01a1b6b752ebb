/**
 * The local operations: writes go to Draft through change capture under a write permit; reads go to the
 * active copy under a read permit; stats read the metadata and the counters.
 *
 * @internal
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Fs from "node:fs"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as ChangeCapture from "../../ChangeCapture.js"
import type * as LocalCopies from "../../LocalCopies.js"
import type { ExecuteResult, Stats } from "../../SyncDatabase.js"
import * as SyncError from "../../SyncError.js"
import type * as SyncMetadata from "../../SyncMetadata.js"
import * as CaptureInternal from "../capture/capture.js"
import * as Changes from "../live/changes.js"
import * as Reactive from "../live/reactive.js"
import * as Executor from "../sqlite/executor.js"
import * as Files from "../sqlite/files.js"
import { checkpointingPragma } from "../sqlite/sqlText.js"
import * as WalIndex from "../sqlite/walIndex.js"
import { sqlStatementError } from "./errors.js"
import { foldOutgrownDraft, maybeFoldDraft, outgrownBound } from "./fold.js"
import { writingCurrent } from "./follow.js"
import * as Gates from "./gates.js"
import { on, type State, stepOn } from "./state.js"

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

/** Reactive queries and live sync hear of a committed write (Draft is its copy). */
const afterWrite = (state: State) => Changes.afterWrite(state.changes, state.draft)

/** The client each copy had when last seen open: while its handle is open it is still that copy's client. */
const lastClients = new WeakMap<LocalCopies.Copy, SqlClient.SqlClient>()

/** `copy`'s client and direct access to it, if it is known and open (synchronous). */
const openDirect = (copy: LocalCopies.Copy) => {
  const client = lastClients.get(copy)
  if (client === undefined) return undefined
  const direct = Executor.directOf(client)
  return direct !== undefined && direct.db.open ? { client, direct } : undefined
}

/** `on`, remembering the copy's client for the direct paths. */
const onCopy = <A, E, R>(copy: LocalCopies.Copy, effect: Effect.Effect<A, E, R>) =>
  Effect.zipRight(
    Effect.tap(copy.client, (client) => {
      lastClients.set(copy, client)
    }),
    on(copy, effect)
  )

/**
 * After a local write: Draft's WAL is folded when it outgrew its bound (`foldOutgrownDraft`). One read of its
 * wal-index (or, without one, a stat of the WAL) decides whether that runs at all, unless the engine was
 * built with its own file service (tests inject faults through it), which `maybeFoldDraft` then uses for
 * every check as before.
 */
const foldIfOutgrown = (state: State): Effect.Effect<void> => {
  if (Option.isSome(state.fileService)) return maybeFoldDraft(state)
  const outgrown = outgrownBound(
    state.maxWalFrames,
    WalIndex.unfoldedFrames(Fs, state.paths.draft),
    () => Fs.statSync(Files.walPath(state.paths.draft), { throwIfNoEntry: false })?.size ?? 0
  )
  return outgrown ? foldOutgrownDraft(state) : Effect.void
}

/** A direct write of one row with small values: its WAL size is looked at with every 8th such write. */
const CHECK_EVERY = 8
const SMALL_PARAMS = 16 * 1024

/**
 * After a direct write: `foldIfOutgrown`, but a write that changed at most one row with bound values of at
 * most 16 KB (a few frames) looks at the WAL's size only every 8th time (a stat costs a fifth of such a
 * write): the WAL may exceed its bound by those few writes' frames until then.
 */
const foldIfOutgrownSoon = (state: State, changes: number, params: ReadonlyArray<unknown>): Effect.Effect<void> => {
  const since = state.writesSinceWalCheck
  if (changes <= 1 && ++since.count < CHECK_EVERY) {
    let bytes = 0
    for (const param of params) {
      if (typeof param === "string") bytes += param.length * 3
      else if (param instanceof Uint8Array) bytes += param.byteLength
    }
    if (bytes <= SMALL_PARAMS) return Effect.void
  }
  since.count = 0
  return foldIfOutgrown(state)
}

/**
 * A statement that would let SQLite checkpoint a copy's WAL (or leave WAL mode) on its own, refused: each
 * copy's WAL is folded only by the engine, as a recorded step (Draft's record of changed pages, Synced's
 * frame numbers depend on it). Undefined for any other statement. A pure look at the text; no statement
 * that the direct paths run (DML, known reads) is one.
 *
 * @internal
 */
export const refusedStatement = (sql: string): SyncError.SqlStatementError | undefined => {
  const pragma = checkpointingPragma(sql)
  return pragma === undefined ? undefined : new SyncError.SqlStatementError({
    reason: "Statement",
    message: `PRAGMA ${pragma} is refused: the local database folds its WAL into its file itself, as a recorded ` +
      `step, and keeps it in WAL mode; a checkpoint or WAL setting of SQLite's own would break that record ` +
      `(nothing was changed)`,
    sql
  })
}

const executeError = (sql: string) => (cause: unknown) =>
  sqlStatementError("Statement", sql)(new SqlError({ cause, message: "Failed to execute statement" }))

/**
 * A write through change capture: one DML statement in autocommit mode runs synchronously on Draft's
 * connection, in the step that checks the write gate (no permit, span or fiber work); anything else, or
 * when the gate or the connection is held, waits for a write permit and runs through `ChangeCapture.execute`.
 */
const write = (state: State) =>
(sql: string, params: ReadonlyArray<unknown>): Effect.Effect<ChangeCapture.ExecuteResult, SyncError.SqlStatementError> =>
  Effect.withFiberRuntime((fiber) => {
    // (not while pulls left Draft behind: the write waits for its copy, see follow.ts)
    const open = !state.following.behind && Gates.writesPass(state.gates) ? openDirect(state.draft) : undefined
    if (open !== undefined) {
      let result: ChangeCapture.ExecuteResult | undefined
      try {
        result = CaptureInternal.executeDirect(fiber, open.client, sql, params)
      } catch (cause) {
        return Effect.fail(executeError(sql)(cause))
      }
      if (result !== undefined) {
        return Effect.as(Effect.zipRight(afterWrite(state), foldIfOutgrownSoon(state, result.changes, params)), result)
      }
    }
    const refused = refusedStatement(sql)
    if (refused !== undefined) return Effect.fail(refused)
    return writingCurrent(
      state,
      Effect.tap(onCopy(state.draft, ChangeCapture.execute(sql, params)), afterWrite(state)).pipe(
        Effect.mapError(sqlStatementError("Statement", sql))
      )
    ).pipe(
      Effect.tap(() => foldIfOutgrown(state))
    )
  })

/** @internal */
export const execute = (state: State) => {
  const run = write(state)
  return (sql: string, params: ReadonlyArray<unknown> = []): Effect.Effect<ExecuteResult, SyncError.SqlStatementError> =>
    Effect.map(run(sql, params), (r): ExecuteResult => ({ changes: r.changes, lastInsertRowid: r.lastInsertRowid }))
}

/** `execute` that also returns the statement's rows (`INSERT ... RETURNING`): SyncDatabase.layerSqlClient. */
export const executeRows = (state: State) => {
  const run = write(state)
  return (
    sql: string,
    params: ReadonlyArray<unknown> = []
  ): Effect.Effect<ChangeCapture.ExecuteResult, SyncError.SqlStatementError> => run(sql, params)
}

/**
 * Whether `sql` only reads, by SQLite's verdict on the active copy (see Executor.isPureRead); a statement
 * that does not prepare fails. Verdicts are kept per text (a text's verdict never changes once it prepares).
 */
const isRead = (
  state: State,
  client: SqlClient.SqlClient,
  sql: string
): Effect.Effect<boolean, SqlError | SyncError.SqlStatementError> => {
  const known = state.readVerdicts.get(sql)
  if (known !== undefined) return Effect.succeed(known)
  // SQLite applies these as it prepares them: refused before the verdict, which prepares the statement
  const pragma = checkpointingPragma(sql)
  if (pragma === "wal_autocheckpoint" || pragma === "locking_mode") return Effect.fail(refusedStatement(sql)!)
  return Effect.flatMap(
    Effect.try({
      try: () => Executor.isPureRead(client, sql) ?? isReadStatement(sql),
      catch: (cause) => Executor.toSqlError(cause, "Failed to prepare statement")
    }),
    (verdict) => {
      // one SQLite calls a read is refused all the same, and never cached as one: the direct path never runs it
      const refused = verdict && pragma !== undefined ? refusedStatement(sql) : undefined
      if (refused !== undefined) return Effect.fail(refused)
      if (state.readVerdicts.size >= 1000) state.readVerdicts.clear()
      state.readVerdicts.set(sql, verdict)
      return Effect.succeed(verdict)
    }
  )
}

const activeCopy = (state: State) => state.gates.active.current === "draft" ? state.draft : state.synced

const onActive = <A, E>(state: State, f: (client: SqlClient.SqlClient) => Effect.Effect<A, E>) =>
  Gates.reading(
    state.gates,
    Effect.suspend(() => {
      const copy = activeCopy(state)
      return Effect.flatMap(copy.client, (client) => {
        lastClients.set(copy, client)
        return f(client)
      })
    })
  )

const notARead = (sql: string) =>
  new SyncError.SqlStatementError({
    reason: "Statement",
    message: "query runs reads only (SQLite reports that this statement writes, or it returns no rows; " +
      "a write here would bypass change capture); use execute",
    sql
  })

/**
 * A read on the active copy. A statement already known to be a read runs synchronously on the copy's
 * connection, in the step that checks the read gate; otherwise (or while the gate or the connection is
 * held) it waits for a read permit and runs through the copy's SqlClient.
 *
 * @internal
 */
export const query = (state: State) =>
<Row extends object = Record<string, unknown>>(
  sql: string,
  params: ReadonlyArray<unknown> = []
): Effect.Effect<ReadonlyArray<Row>, SyncError.SqlStatementError> =>
  Effect.withFiberRuntime((fiber) => {
    const open = Gates.readsPass(state.gates) && state.readVerdicts.get(sql) === true
      ? openDirect(activeCopy(state))
      : undefined
    if (open !== undefined && open.direct.free()) {
      let statement: ReturnType<typeof open.direct.prepare> | undefined
      try {
        statement = open.direct.prepare(sql)
      } catch {
        // the slow path reports it as before
      }
      if (statement !== undefined) {
        try {
          statement.safeIntegers(Context.get(fiber.currentContext, SqlClient.SafeIntegers))
          statement.raw(false)
          return Effect.succeed(statement.all(...params) as ReadonlyArray<Row>)
        } catch (cause) {
          return Effect.fail(executeError(sql)(cause))
        }
      }
    }
    return onActive(state, (client) =>
      Effect.flatMap(isRead(state, client, sql), (read): Effect.Effect<ReadonlyArray<Row>, SqlError | SyncError.SqlStatementError> =>
        read ? client.unsafe<Row>(sql, params as Array<any>) : Effect.fail(notARead(sql)))).pipe(
        Effect.mapError((error) => error._tag === "SqlStatementError" ? error : sqlStatementError("Statement", sql)(error))
      )
  })

/** The tables `sql` reads, as reactive queries key them (Reactive.tablesRead), on the active copy. */
export const tablesRead = (state: State) =>
(sql: string, params: ReadonlyArray<unknown> = []): Effect.Effect<ReadonlyArray<string>, SyncError.SqlStatementError> => {
  // its EXPLAIN prepares the statement, which applies some of these already
  const refused = refusedStatement(sql)
  if (refused !== undefined) return Effect.fail(refused)
  return onActive(
    state,
    (client) => Effect.provideService(Executor.withExecutor((exec) => Reactive.tablesRead(exec, sql, params)), SqlClient.SqlClient, client)
  ).pipe(Effect.mapError(sqlStatementError("Statement", sql)))
}

/** Whether `sql` is a pure read by SQLite's verdict (layerSqlClient routes by it); one that fails to prepare is not. */
export const classify = (state: State) => (sql: string): Effect.Effect<"read" | "write"> => {
  const known = state.readVerdicts.get(sql)
  if (known !== undefined) return Effect.succeed(known ? "read" : "write")
  return onActive(state, (client) => isRead(state, client, sql)).pipe(
    Effect.map((read) => read ? "read" as const : "write" as const),
    Effect.orElseSucceed(() => "write" as const)
  )
}

/**
 * Runs `effect` with Draft's SqlClient as ONE capture transaction (one unit of replay), holding one write
 * permit throughout, so a pull's copy step waits for it and it never spans a replaced Draft.
 */
export const transaction = (state: State) =>
<A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<
  A,
  E | SqlError | ChangeCapture.CaptureError | SyncError.SqlStatementError,
  Exclude<R, SqlClient.SqlClient>
> =>
  writingCurrent(state, Effect.tap(onCopy(state.draft, ChangeCapture.transaction(effect)), afterWrite(state))).pipe(
    Effect.tap(() => foldIfOutgrown(state))
  )

/** Local changes after those the metadata `m` records as pushed. */
const pendingAfter = (state: State, m: SyncMetadata.Metadata): Effect.Effect<number, SyncError.SyncError> =>
  // Draft is left behind only with nothing pending, and a write makes its copy first (follow.ts).
  state.following.behind ? Effect.succeed(0) : Gates.reading(
    state.gates,
    Effect.suspend(() =>
      stepOn(
        activeCopy(state),
        (exec) => CaptureInternal.countPendingIn(exec, m.lastPushedChangeId),
        ChangeCapture.countPending(m.lastPushedChangeId)
      )
    )
  ).pipe(Effect.mapError(sqlStatementError("Capture")))

/** @internal `stats`' `pendingChanges` alone (what every push, pull and sync reports when it ends). */
export const pendingChanges = (state: State): Effect.Effect<number, SyncError.SyncError> =>
  Effect.flatMap(SynchronizedRef.get(state.metadata), (m) => pendingAfter(state, m))

/** @internal */
export const stats = (state: State): Effect.Effect<Stats, SyncError.SyncError> =>
  Effect.gen(function*() {
    const m = yield* SynchronizedRef.get(state.metadata)
    const pendingChanges = yield* pendingAfter(state, m)
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
      activeCopy: yield* Gates.active(state.gates),
      lastWriteBlockedMs: yield* Ref.get(state.lastWriteBlockedMs)
    }
  })
