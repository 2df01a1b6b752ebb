/**
 * Replay of captured changes onto another copy (Synced), in ONE SQLite transaction, by primary key (rowid
 * for tables without one):
 *
 * - insert → upsert keyed by the key (`INSERT .. ON CONFLICT(key) DO UPDATE`); a key holding NULL never
 *   conflicts, so such rows are deleted by `IS`-equality and inserted (several rows sharing a NULL-holding
 *   key cannot be told apart and collapse into one);
 * - update → the row is located by the before image's key (key-changing updates move it) and only the
 *   columns the update changed are written when the row is as the update found it; on a conflict the policy
 *   decides (see ConflictPolicy);
 * - delete → by key;
 * - ddl → its SQL text, idempotently per statement (a CREATE of an existing object, a DROP of a missing one,
 *   an ADD COLUMN of an existing column, a RENAME whose source is gone or target exists count as already
 *   applied). Exactly-once for a whole sequence comes from the progress row, not from this.
 * Columns the target does not have (dropped elsewhere) are left out of writes.
 *
 * Every data change passes through one pure decision point, {@link decide}: given the change and the row
 * the target holds now (read by key), it returns what to do and which conflict it saw (RowChanged,
 * RowMissing, KeyExists; reported in {@link ApplyResult}). The default is "last push wins": an
 * update of a row deleted remotely re-creates it, a delete of a missing row is skipped; the `decide` option
 * replaces it (ConflictPolicy builds one per policy).
 *
 * Foreign keys are checked at the end (`PRAGMA defer_foreign_keys = ON`, then `foreign_key_check` on the
 * affected tables before COMMIT), so replay order inside the transaction cannot trip them and a violation is
 * a typed `ReplayError("Constraint")` with a clean rollback. ON DELETE CASCADE converges: the cascaded child
 * deletes were captured too and replay as deletes of rows already gone.
 *
 * User triggers: every row a user trigger wrote on Draft was captured as a change of its own, so letting the
 * target's triggers fire during replay would apply their effects twice (an audit row per replay, a counter
 * bumped twice). SQLite has no per-statement switch for triggers (better-sqlite3 does not expose
 * `SQLITE_DBCONFIG_ENABLE_TRIGGER`), so by default replay drops the target's triggers inside its transaction
 * and recreates them from their stored SQL before committing (around a replayed schema change they are
 * restored, so it sees the real schema). The cost is a schema-cookie bump per replay when triggers exist.
 * `triggers: "fire"` keeps them firing.
 *
 * Keys allocated independently on two replicas (rowids of key-less tables, INTEGER PRIMARY KEY, AUTOINCREMENT)
 * collide: the second insert meets `KeyExists`. Without a policy it overwrites the other row; the default
 * policy of `SyncDatabase` fails the push instead (see ConflictPolicy).
 *
 * @since 0.1.0
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Effect from "effect/Effect"
import type * as ChangeCapture from "./ChangeCapture.js"
import type * as ConflictPolicy from "./ConflictPolicy.js"
import { plain } from "./internal/capture/capture.js"
import * as internal from "./internal/replay/replay.js"
import { ReplayError } from "./internal/replay/replayError.js"
import * as InternalTableInfo from "./internal/sqlite/tableInfo.js"

/**
 * What replay knows of a target table (read from the database replayed onto).
 *
 * @since 0.1.0
 * @category models
 */
export type TableInfo = InternalTableInfo.TableInfo

/**
 * Reads a table's description from the database in the environment (undefined when it has no such table).
 *
 * @since 0.1.0
 * @category reading
 */
export const readTableInfo = (
  table: string
): Effect.Effect<TableInfo | undefined, SqlError, SqlClient.SqlClient> => plain(InternalTableInfo.read(table))

/**
 * The conflict kinds (the SQLite session extension's vocabulary): the row differs from the local before
 * image, the row to update/delete is gone, an inserted key exists with other values.
 *
 * @since 0.1.0
 * @category models
 */
export type ConflictKind = "RowChanged" | "RowMissing" | "KeyExists"

/**
 * A column/literal pair list identifying one row.
 *
 * @since 0.1.0
 * @category models
 */
export type Key = ReadonlyArray<readonly [string, string]>

/**
 * What replay does with one change. `conflict` records what {@link decide} saw (null: nothing).
 *
 * @since 0.1.0
 * @category models
 */
export type Decision =
  | {
    readonly _tag: "Upsert"
    readonly key: Key
    readonly row: ChangeCapture.Image
    readonly rowid: string | null
    readonly conflict: ConflictKind | null
  }
  | {
    readonly _tag: "Update"
    readonly key: Key
    readonly set: ChangeCapture.Image
    readonly setRowid: string | null
    readonly conflict: ConflictKind | null
  }
  | { readonly _tag: "Delete"; readonly key: Key; readonly conflict: ConflictKind | null }
  | { readonly _tag: "Skip"; readonly conflict: ConflictKind | null }
  | { readonly _tag: "Ddl"; readonly sql: string }
  | { readonly _tag: "Invalid"; readonly reason: string }

export {
  /**
   * @since 0.1.0
   * @category errors
   */
  ReplayError
}

/**
 * `push`: apply onto Synced and upsert `_sync_progress(clientId, last change id)` in the same transaction;
 * changes at or below the recorded progress are skipped (exactly once).
 * `pull`: apply and re-record the applied changes into `_sync_changes` with the same ids (progress is not
 * touched); with `clientId`, changes the remote already has (≤ its progress) are skipped and not re-recorded.
 *
 * @since 0.1.0
 * @category models
 */
export type ApplyOptions =
  & (
    | { readonly mode: "push"; readonly clientId: string }
    | { readonly mode: "pull"; readonly clientId?: string | undefined }
  )
  & {
    readonly triggers?: "suspend" | "fire" | undefined
    /**
     * Replaces {@link decide} (the policy point; for example "remote wins": keep the remote row on any
     * conflict). It is given the same arguments and must return a {@link Decision} for this change.
     */
    readonly decide?: ((change: ChangeCapture.Change, current: ChangeCapture.Image | null, table: TableInfo) => Decision) | undefined
    /**
     * The conflict policy (see ConflictPolicy). With it, each local transaction replays inside a savepoint
     * and as a unit: a `KeepRemote`/`Skip` drops all of it; constraint failures (UNIQUE, CHECK, NOT NULL,
     * and foreign keys checked at the end of each local transaction) become `Constraint` conflicts; `Fail`
     * (or a constraint nobody settles) fails a push with `ReplayError` ("Unresolved" / "Constraint"). In pull
     * mode nothing fails: an unsettled transaction is left out of the copy and stays pending.
     */
    readonly resolve?: ((conflict: ConflictPolicy.Conflict) => Effect.Effect<ConflictPolicy.Resolution>) | undefined
    /** Called for every data change before it is decided (see ConflictPolicy.Transform). */
    readonly transform?: ConflictPolicy.Transform | undefined
  }

/**
 * A change whose target row was not what the local change expected, with what replay did about it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Conflict {
  readonly change: ChangeCapture.Change
  readonly kind: ConflictKind | "Constraint"
  /** The target's row at the lookup key before the change was applied (null: absent). */
  readonly current: ChangeCapture.Image | null
  readonly decision: Decision
  /** The key the row was looked up by (present when the change has one). */
  readonly key?: Key | undefined
  /** What the policy decided (only with the `resolve` option). */
  readonly resolution?: ConflictPolicy.Resolution | undefined
  /** For constraint conflicts: the failing statement and SQLite's message. */
  readonly statement?: string | undefined
  readonly message?: string | undefined
}

/**
 * `lastChangeId`: the last change id the target now has from this client (push) or the last applied id;
 * `applied`: how many changes were replayed (the rest were already there); `conflicts`: every change whose
 * target row differed from its before image (or was missing, or existed for an insert), in order.
 *
 * @since 0.1.0
 * @category models
 */
export interface ApplyResult {
  readonly lastChangeId: number
  readonly applied: number
  readonly conflicts: ReadonlyArray<Conflict>
  /** Ids of changes left out because the policy dropped their local transaction (`resolve` only). */
  readonly dropped?: ReadonlyArray<number> | undefined
}

/**
 * Groups changes by local transaction (consecutive changes sharing a `txId`), keeping order (pure). A
 * transaction is the unit a conflict policy may keep or drop as a whole.
 *
 * @since 0.1.0
 * @category planning
 */
export const groupByTransaction: (
  changes: ReadonlyArray<ChangeCapture.Change>
) => ReadonlyArray<ReadonlyArray<ChangeCapture.Change>> = internal.groupByTransaction

/**
 * The key of a row image on `table` (primary key columns, else the rowid literal); undefined when none.
 *
 * @since 0.1.0
 * @category planning
 */
export const keyOf: (
  table: TableInfo,
  image: ChangeCapture.Image,
  rowid: string | null | undefined
) => Key | undefined = internal.keyOf

/**
 * The single decision point (pure): "last push wins". `current` is the row the target holds at the
 * change's lookup key (before key; after key for inserts), null when absent.
 *
 * @since 0.1.0
 * @category planning
 */
export const decide: (
  change: ChangeCapture.Change,
  current: ChangeCapture.Image | null,
  table: TableInfo
) => Decision = internal.decide

/**
 * The SQL statements that carry out a decision (pure; values inlined as quote() literals).
 *
 * @since 0.1.0
 * @category planning
 */
export const statements: (decision: Decision, table: TableInfo) => ReadonlyArray<string> = internal.statements

/**
 * {@link decide} then {@link statements} (pure).
 *
 * @since 0.1.0
 * @category planning
 */
export const plan: (
  change: ChangeCapture.Change,
  table: TableInfo,
  current: ChangeCapture.Image | null
) => ReadonlyArray<string> = internal.plan

/**
 * The key a change is looked up by on the target: before key (update, delete), after key (insert).
 *
 * @since 0.1.0
 * @category planning
 */
export const lookupKey: (change: ChangeCapture.Change, table: TableInfo) => Key | undefined = internal.lookupKey

/**
 * Whether a DDL statement's failure only says it was already applied (pure).
 *
 * @since 0.1.0
 * @category planning
 */
export const alreadyApplied: (statement: string, message: string) => boolean = internal.alreadyApplied

/**
 * Replays `changes` (in order) onto the database in the environment in ONE transaction. Returns the last
 * change id the target now has from this client (push) or the last applied id.
 *
 * @since 0.1.0
 * @category replay
 */
export const apply: (
  changes: ReadonlyArray<ChangeCapture.Change>,
  options: ApplyOptions
) => Effect.Effect<ApplyResult, ReplayError | SqlError, SqlClient.SqlClient> = internal.apply

/**
 * The last change id the database in the environment has from `clientId` (0 when none).
 *
 * @since 0.1.0
 * @category replay
 */
export const progress: (clientId: string) => Effect.Effect<number, SqlError, SqlClient.SqlClient> = internal.progress
