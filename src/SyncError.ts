/**
 * The typed failures of the sync client. Every foreign error (SqlError, HttpClientError, file-system
 * errors) is mapped to one of these where the client calls out; broken invariants are defects instead.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * The remote could not be reached, or kept answering 5xx after bounded retries.
 *
 * @since 0.1.0
 * @category errors
 */
export class NetworkError extends Schema.TaggedError<NetworkError>()("NetworkError", {
  reason: Schema.Literal("Transport", "ServerUnavailable"),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The remote answered, but refused the request (4xx) or answered something the protocol does not allow.
 *
 * @since 0.1.0
 * @category errors
 */
export class RemoteError extends Schema.TaggedError<RemoteError>()("RemoteError", {
  /**
   * `InvalidData`: frames or a base that fail validation (page size, page numbers, commit sizes, SQLite's
   * own malformed-database check); nothing of them was recorded as synced.
   */
  reason: Schema.Literal("Unauthorized", "Refused", "GenerationGone", "NotFound", "Protocol", "InvalidData"),
  message: Schema.String,
  status: Schema.optional(Schema.Number),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * `RetriesExhausted`: other replicas kept pushing first: every round of reset, pull, replay and push
 * conflicted. `Constraint`: replaying a local transaction violated a constraint the conflict policy could
 * not settle; `Unresolved`: the conflict resolver answered `Fail`. Nothing is lost or half-applied: Draft
 * and the remote are untouched, the local changes stay pending.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConflictError extends Schema.TaggedError<ConflictError>()("ConflictError", {
  reason: Schema.Literal("RetriesExhausted", "Constraint", "Unresolved"),
  message: Schema.String,
  rounds: Schema.Number,
  /** Constraint / Unresolved: the statement that failed, the local transaction and change. */
  statement: Schema.optional(Schema.String),
  txId: Schema.optional(Schema.Number),
  changeId: Schema.optional(Schema.Number),
  table: Schema.optional(Schema.String),
  /**
   * Unresolved: the kind of row conflict the policy left to the application (`KeyExists` under the default
   * policy: another replica inserted a row with the same key).
   */
  kind: Schema.optional(Schema.Literal("RowChanged", "RowMissing", "KeyExists")),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A statement failed: the caller's own (`execute`, `query`) or one the engine ran while replaying local
 * changes onto the synced copy. `sql` is the statement.
 *
 * @since 0.1.0
 * @category errors
 */
export class SqlStatementError extends Schema.TaggedError<SqlStatementError>()("SqlStatementError", {
  reason: Schema.Literal("Statement", "Replay", "Capture"),
  message: Schema.String,
  sql: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The local files or the metadata file could not be read, written or trusted. `MetadataLost`: the copies
 * exist but their `<path>-info` file does not, so which changes are pending is unknown; nothing was
 * touched (open with `startOver: true` to discard the local files and start from the remote).
 *
 * @since 0.1.0
 * @category errors
 */
export class StorageError extends Schema.TaggedError<StorageError>()("StorageError", {
  reason: Schema.Literal("Metadata", "Files", "Corrupt", "MetadataLost"),
  message: Schema.String,
  path: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A brand-new local database could not be created from the remote (`/info` + `/export`).
 * Nothing is left on disk.
 *
 * @since 0.1.0
 * @category errors
 */
export class BootstrapError extends Schema.TaggedError<BootstrapError>()("BootstrapError", {
  reason: Schema.Literal("Remote", "InvalidBase", "Storage"),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * Another `SyncDatabase` (in this process or another one) has the local database open: one path has one
 * owner at a time. `pid` is the holder's process id when it could be read. Nothing was touched.
 *
 * @since 0.1.0
 * @category errors
 */
export class DatabaseLocked extends Schema.TaggedError<DatabaseLocked>()("DatabaseLocked", {
  reason: Schema.Literal("InUse"),
  message: Schema.String,
  path: Schema.String,
  pid: Schema.optional(Schema.Number),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The remote is not the server database this local database was made from, or it forgot what it had
 * acknowledged; sync stops and nothing is changed, locally or remotely.
 *
 * - `UrlChanged`: the database URL differs from the one recorded at bootstrap (open with
 *   `allowUrlChange: true` when the same server database moved to a new address).
 * - `DatabaseReplaced`: the server database's identity (`database_id` of `/info`) differs: it was wiped
 *   and created anew, or the URL names another database.
 * - `RemoteBehind`: the remote lacks frames or generations it acknowledged to this client (restored from
 *   an older backup), or its frames at the synced position differ from those this client holds.
 *
 * `rebootstrap` takes the remote's current state as the new base and keeps the pending local changes.
 *
 * @since 0.1.0
 * @category errors
 */
export class RemoteMismatch extends Schema.TaggedError<RemoteMismatch>()("RemoteMismatch", {
  reason: Schema.Literal("UrlChanged", "DatabaseReplaced", "RemoteBehind"),
  message: Schema.String,
  expected: Schema.optional(Schema.String),
  actual: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * Options that cannot go together (`live` with `autoSync`): the database was not opened.
 *
 * @since 0.1.0
 * @category errors
 */
export class OptionsError extends Schema.TaggedError<OptionsError>()("OptionsError", {
  reason: Schema.Literal("Conflicting"),
  message: Schema.String
}) {}

/**
 * Every failure of the sync client.
 *
 * @since 0.1.0
 * @category errors
 */
export type SyncError =
  | NetworkError
  | RemoteError
  | ConflictError
  | SqlStatementError
  | StorageError
  | BootstrapError
  | DatabaseLocked
  | RemoteMismatch
  | OptionsError

/**
 * Failures of talking to the remote.
 *
 * @since 0.1.0
 * @category errors
 */
export type RemoteFailure = NetworkError | RemoteError
