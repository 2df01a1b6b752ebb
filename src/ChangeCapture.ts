/**
 * Change capture on the Draft copy: a log table `_sync_changes` in Draft's main database, filled by TEMP
 * triggers (they live in the connection, never in the file, so they never replicate) in the same SQLite
 * transaction as the write they describe.
 *
 * - Every ordinary table of `main` except `_sync_*` and `sqlite_*` (a prefix test, not LIKE) is captured.
 *   Rows are identified by primary key (composite, WITHOUT ROWID and INTEGER PRIMARY KEY included); tables
 *   without one by rowid, under whichever of `_rowid_`, `rowid`, `oid` no user column shadows. A table with
 *   no key whose three rowid names are all columns refuses writes (RAISE with a clear message).
 * - Before and after images hold every stored column (generated columns are left out). The log stores each
 *   value in a column of its own, exactly (storage class, 64-bit integers, REAL bits including -0.0, TEXT
 *   bytes including NULs and invalid UTF-8, BLOBs) at its own size; a `Change` shows them as exact SQL
 *   literals (see {@link Image}). A log written by an earlier version is rewritten on {@link install}.
 * - Changes are ordered by the log's id, never by a clock; an id is never handed out twice (pruned ones
 *   included). All changes of one {@link transaction} share a `txId` (the id its first change gets), as do
 *   those of one statement {@link execute} runs outside a transaction. Writes that bypass both on this
 *   connection are still captured, each row its own unit. Writes through another connection to
 *   the same file are not captured (its triggers are its own).
 * - `INSERT OR REPLACE` / `UPDATE OR REPLACE` (or `ON CONFLICT REPLACE` in the schema) evicting another row:
 *   SQLite fires no DELETE trigger for it while `recursive_triggers` is off. It is kept off (turning it on
 *   would make common self-updating user triggers recurse); instead BEFORE triggers note the rows a write
 *   would evict through a UNIQUE index (for an update also through the key) and the AFTER trigger logs them
 *   as deletes, only if the write happened (index collations, indexes on expressions and partial-index WHERE
 *   clauses are honoured).
 *
 * Schema changes: run statements through {@link execute} (inside {@link transaction} or not). `execute`
 * compares `PRAGMA schema_version` before and after each statement that is not plain DML; when it moved,
 * the statement's text is logged as a `"ddl"` change, in order with the data changes around it, and the
 * triggers are reinstalled at once, inside the transaction, so rows written right after a `CREATE TABLE` in
 * the same transaction are captured (a TEMP trigger can only be created once its table exists; statements
 * run one at a time, so the reinstall happens between them). Text holding several statements is split and
 * run the same way. A schema change inside `transaction` that did not come through `execute` (nor the
 * `statement` argument) has no text to log: the transaction fails with `CaptureError("UnrecordedSchemaChange")`
 * and is rolled back. Refused with `CaptureError("UnsupportedDdl")`: schema changes with bound parameters
 * (only the text is replayed) and `CREATE VIRTUAL TABLE` (SQLite allows no triggers on virtual tables or
 * their shadow tables, so their rows could not sync).
 *
 * Deferred foreign keys are checked before COMMIT: a violation fails the transaction with an SqlError and a
 * clean rollback (a COMMIT failing on them would leave the connection inside the transaction).
 *
 * @since 0.1.0
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Effect from "effect/Effect"
import { CaptureError } from "./internal/capture/captureError.js"
import * as internal from "./internal/capture/capture.js"
import * as internalSql from "./internal/sqlite/sqlText.js"

/**
 * Column name → exact SQL literal: as `quote()` writes it, except `-0.0` for a negative zero and
 * `CAST(X'..' AS TEXT)` for TEXT holding a NUL or bytes that are not valid UTF-8.
 *
 * @since 0.1.0
 * @category models
 */
export type Image = Readonly<Record<string, string>>

/**
 * One captured change. `before`/`after` are null where they do not apply (insert has no before, delete no
 * after, ddl neither). `rowid` is present for tables identified by rowid (no primary key): the rowid
 * literals of the before and after rows. `sql` is the statement text of a `"ddl"` change.
 *
 * @since 0.1.0
 * @category models
 */
export interface Change {
  readonly id: number
  readonly txId: number
  readonly table: string
  readonly kind: "insert" | "update" | "delete" | "ddl"
  readonly before: Image | null
  readonly after: Image | null
  readonly rowid?: { readonly before: string | null; readonly after: string | null }
  readonly sql?: string
}

export {
  /**
   * @since 0.1.0
   * @category errors
   */
  CaptureError
}

/**
 * Creates `_sync_changes` in main if absent and (re)installs the TEMP capture triggers for every user table
 * on the connection in the environment. Idempotent; drops triggers of vanished tables. Call it after
 * opening (or reopening) Draft. It also raises the log's id sequence above every id in `_sync_progress`.
 *
 * @since 0.1.0
 * @category capture
 */
export const install: Effect.Effect<void, SqlError | CaptureError, SqlClient.SqlClient> = internal.install

/**
 * Runs `effect` as ONE local transaction whose change rows share a fresh transaction id. Nested calls join
 * the outer transaction (as a savepoint). Installs the triggers first if this connection has none.
 *
 * `statement`: the SQL text of a single-statement transaction that did not run through {@link execute}.
 * If the schema changed, it is logged as the `"ddl"` change (after the data changes of the transaction, so
 * use it only when `effect` runs that one statement) and the triggers are reinstalled. Without it, a schema
 * change not made through `execute` fails the transaction with `CaptureError("UnrecordedSchemaChange")`.
 *
 * @since 0.1.0
 * @category capture
 */
export const transaction: <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  statement?: string
) => Effect.Effect<A, E | SqlError | CaptureError, R | SqlClient.SqlClient> = internal.transaction

/**
 * @since 0.1.0
 * @category models
 */
export interface ExecuteResult {
  /** Rows of a statement that returns rows (SELECT, RETURNING), else empty. */
  readonly rows: ReadonlyArray<Record<string, unknown>>
  /** Rows inserted, updated or deleted by the statement (SQLite's `changes()`). */
  readonly changes: number
  /**
   * The rowid of the last row this statement inserted, as SQLite reports it; 0 when it inserted none
   * (`CREATE`, `UPDATE`, `DELETE`, an `INSERT OR IGNORE` that ignored its row).
   */
  readonly lastInsertRowid: number | bigint
}

/**
 * Runs SQL with capture: data changes are logged by the triggers; a schema change is logged as a `"ddl"`
 * change holding the statement's text and the triggers are reinstalled before the next statement. Outside a
 * {@link transaction} it runs in one of its own. Text holding several statements (`a; b; c`) runs them in
 * order as one unit (see {@link splitStatements}); bound parameters need a single statement
 * (`CaptureError("InvalidStatement")`). Schema changes with bound parameters are refused
 * (`CaptureError("UnsupportedDdl")`), since only the text is replayed. The result is the last statement's
 * rows and last insert rowid, with the changes of all of them.
 *
 * @since 0.1.0
 * @category capture
 */
export const execute: (
  sql: string,
  params?: ReadonlyArray<unknown>
) => Effect.Effect<ExecuteResult, SqlError | CaptureError, SqlClient.SqlClient> = internal.execute

/**
 * Makes every change id handed out from now on greater than `floor` (creating the log if absent). For a
 * Draft freshly copied from Synced, with `floor` = the last change id the remote acknowledged.
 *
 * @since 0.1.0
 * @category capture
 */
export const ensureChangeIdsAbove: (floor: number) => Effect.Effect<void, SqlError | CaptureError, SqlClient.SqlClient> =
  internal.ensureChangeIdsAbove

/**
 * Splits SQL text into statements at top-level semicolons (not inside literals, quoted names, comments, or
 * a CREATE TRIGGER body). Pure.
 *
 * @since 0.1.0
 * @category capture
 */
export const splitStatements: (sql: string) => ReadonlyArray<string> = internalSql.splitStatements

/**
 * Changes with id > `afterId`, in order (at most `limit` of them when given).
 *
 * @since 0.1.0
 * @category reading
 */
export const pending: (
  afterId: number,
  limit?: number
) => Effect.Effect<ReadonlyArray<Change>, SqlError, SqlClient.SqlClient> = internal.pending

/**
 * The highest change id handed out so far (0 when none).
 *
 * @since 0.1.0
 * @category reading
 */
export const lastChangeId: Effect.Effect<number, SqlError, SqlClient.SqlClient> = internal.lastChangeId

/**
 * How many changes have id > `afterId`; with `atMost`, counted up to that many (the answer is then
 * `min(count, atMost)`, without reading the rest of a long log).
 *
 * @since 0.1.0
 * @category reading
 */
export const countPending: (afterId: number, atMost?: number) => Effect.Effect<number, SqlError, SqlClient.SqlClient> =
  internal.countPending

/**
 * Deletes logged changes with id <= `upToId` (those the remote has acknowledged). Ids are never reused.
 *
 * @since 0.1.0
 * @category capture
 */
export const prune: (upToId: number) => Effect.Effect<void, SqlError, SqlClient.SqlClient> = internal.prune

/**
 * The capture transaction id of the current fiber, if it runs inside {@link transaction}.
 *
 * @since 0.1.0
 * @category capture
 */
export const currentTransactionId: Effect.Effect<number | undefined> = internal.currentTransactionId
