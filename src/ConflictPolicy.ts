/**
 * Conflict policies: what replay does when a local change meets a remote row that is not what the change
 * expected (see docs/conflicts.md).
 *
 * Every conflict is a {@link Conflict} (kind `RowChanged`, `RowMissing`, `KeyExists` or `Constraint`), and a
 * policy turns it into a {@link Resolution}:
 *
 * - `"lastPushWins"` (default): column-level last push wins. An update writes only the columns it changed, so
 *   edits of different columns made by different replicas all survive; on the same column the later push
 *   wins. An insert whose key another replica already holds with other values is not written over it: the
 *   push fails with a `KeyExists` conflict (`Fail`) for the application to settle, since overwriting would
 *   erase a row another replica inserted. A constraint failure cannot be settled either (`Fail`).
 * - `"lastPushWinsRow"`: row-level last push wins. An update that met a row changed remotely writes its
 *   whole local row (`Replace`), and an insert over an existing key overwrites it (`KeepLocal`).
 * - `"remoteWins"`: the local transaction holding a conflicting change is dropped (`KeepRemote`), except
 *   for a local delete of a row the remote deleted too (both agree).
 * - `"mergeColumns"`: the former name of `"lastPushWins"`, kept for existing configurations.
 * - a function `(conflict) => Effect<Resolution, never, R>` using any service of the user's environment.
 *
 * A local transaction replays as a unit: `KeepRemote` or `Skip` of any of its changes drops the whole
 * transaction (never half of it); `Fail` fails the push and leaves Draft and the remote as they were.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as ChangeCapture from "./ChangeCapture.js"

/**
 * The session extension's vocabulary: the remote row differs from the local before image; the row the local
 * update/delete targets is gone; a local insert's key exists remotely with other values; replay violates a
 * UNIQUE, CHECK, NOT NULL or FOREIGN KEY constraint.
 *
 * @since 0.1.0
 * @category models
 */
export type ConflictKind = "RowChanged" | "RowMissing" | "KeyExists" | "Constraint"

/**
 * One conflict, as a resolver sees it. Values are exact SQL literals (see `ChangeCapture.Image`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Conflict {
  readonly kind: ConflictKind
  readonly table: string
  /** Column/literal pairs identifying the row (the rowid under its alias for tables without a primary key). */
  readonly key: ReadonlyArray<readonly [string, string]>
  /** The local change (before/after images, its local transaction `txId`). */
  readonly change: ChangeCapture.Change
  /** The row the remote holds at `key` now (null: absent). */
  readonly remote: ChangeCapture.Image | null
  /** For `Constraint`: the statement that failed (or "PRAGMA foreign_key_check") and SQLite's message. */
  readonly statement?: string | undefined
  readonly message?: string | undefined
  /**
   * `push`: the decision goes to the remote. `pull`: replay of still-pending changes over the newest remote
   * state into the local copy, so that it shows what the next push will do (nothing is reported then).
   */
  readonly mode: "push" | "pull"
}

/**
 * What to do with a conflicting change.
 * - `KeepLocal`: apply the local change as captured (an update writes only its changed columns).
 * - `KeepRemote`: keep the remote row; the whole local transaction of this change is dropped.
 * - `Replace(row)`: write `row` (column → SQL literal, see {@link literal}) at the change's key instead.
 * - `Skip`: drop the change, and with it its whole local transaction (never half of one).
 * - `Fail`: fail the push with a `ConflictError`; nothing is applied, the changes stay pending.
 *
 * @since 0.1.0
 * @category models
 */
export type Resolution = Data.TaggedEnum<{
  KeepLocal: {}
  KeepRemote: {}
  Replace: { readonly row: ChangeCapture.Image }
  Skip: {}
  Fail: { readonly message?: string | undefined }
}>

/**
 * Constructors and matchers: `Resolution.KeepLocal()`, `Resolution.Replace({ row })`, `Resolution.$match`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const Resolution = Data.taggedEnum<Resolution>()

/**
 * A custom resolver.
 *
 * @since 0.1.0
 * @category models
 */
export type Resolver<R = never> = (conflict: Conflict) => Effect.Effect<Resolution, never, R>

/**
 * The `conflicts` option of `SyncDatabase.layer`.
 *
 * @since 0.1.0
 * @category models
 */
export type Policy<R = never> = Builtin | Resolver<R>

/**
 * The names of the built-in policies.
 *
 * @since 0.1.0
 * @category models
 */
export type Builtin = "lastPushWins" | "lastPushWinsRow" | "remoteWins" | "mergeColumns"

/**
 * What a transform hook does with one captured change before it is replayed.
 *
 * @since 0.1.0
 * @category models
 */
export type Transformed = Data.TaggedEnum<{
  Keep: {}
  Skip: {}
  Rewrite: { readonly change: ChangeCapture.Change }
}>

/**
 * @since 0.1.0
 * @category constructors
 */
export const Transformed = Data.taggedEnum<Transformed>()

/**
 * Called for every captured change before it is replayed (push and pull), with the row the remote holds at
 * the change's key: keep it, skip it (that change alone), or rewrite it — for example turn a counter's
 * absolute value into an increment of the remote value.
 *
 * @since 0.1.0
 * @category models
 */
export type Transform<R = never> = (
  change: ChangeCapture.Change,
  remote: ChangeCapture.Image | null
) => Effect.Effect<Transformed, never, R>

/**
 * The built-in policies (pure).
 *
 * @since 0.1.0
 * @category policies
 */
export const builtin = (policy: Builtin, conflict: Conflict): Resolution => {
  // A local delete of a row the remote deleted too: both sides agree, nothing to drop a transaction for.
  if (conflict.kind === "RowMissing" && conflict.change.kind === "delete") return Resolution.KeepLocal()
  if (policy === "remoteWins") return Resolution.KeepRemote()
  if (conflict.kind === "Constraint") {
    return Resolution.Fail({ message: `${policy} cannot settle a constraint conflict: ${conflict.message ?? ""}` })
  }
  if (policy === "lastPushWinsRow") {
    if (
      conflict.kind === "RowChanged" && conflict.change.kind === "update" && conflict.change.after !== null &&
      conflict.remote !== null
    ) {
      // The local row wins as a whole; columns the remote has and the change does not (added elsewhere) stay.
      return Resolution.Replace({ row: { ...conflict.remote, ...conflict.change.after } })
    }
    return Resolution.KeepLocal()
  }
  // Column-level: the change as captured writes only its changed columns. An insert meeting another row at
  // its key would erase a row another replica inserted: that is the application's call, not ours.
  if (conflict.kind === "KeyExists") {
    return Resolution.Fail({
      message: `another replica inserted a row with this key; ${policy} does not overwrite it. Use keys that ` +
        `cannot collide (random text ids), or settle it with a resolver`
    })
  }
  return Resolution.KeepLocal()
}

/**
 * A policy as a resolver.
 *
 * @since 0.1.0
 * @category policies
 */
export const resolver = <R>(policy: Policy<R>): Resolver<R> =>
  typeof policy === "function" ? policy : (conflict) => Effect.succeed(builtin(policy, conflict))

/**
 * Whether a resolution drops the whole local transaction of the change.
 *
 * @since 0.1.0
 * @category policies
 */
export const dropsTransaction = (resolution: Resolution): boolean =>
  resolution._tag === "KeepRemote" || resolution._tag === "Skip"

/**
 * A JavaScript value as the SQL literal replay writes (for `Replace` rows and rewritten changes):
 * null/undefined → NULL, numbers and bigints exact (non-integral numbers as REAL), strings quoted,
 * bytes as a blob literal, booleans as 1/0.
 *
 * @since 0.1.0
 * @category constructors
 */
export const literal = (value: null | undefined | number | bigint | string | boolean | Uint8Array): string => {
  if (value === null || value === undefined) return "NULL"
  if (typeof value === "boolean") return value ? "1" : "0"
  if (typeof value === "bigint") return value.toString()
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new RangeError(`no SQL literal for ${value}`)
    if (Number.isInteger(value)) return Number.isSafeInteger(value) ? String(value) : `${value.toExponential()}`
    return String(value).includes("e") || String(value).includes(".") ? String(value) : `${value}.0`
  }
  if (typeof value === "string") return `'${value.replace(/'/g, "''")}'`
  return `X'${Buffer.from(value).toString("hex").toUpperCase()}'`
}

/**
 * A literal as a JavaScript value (for resolvers and transforms): integers as bigint when beyond 2^53.
 * Blobs come back as Uint8Array.
 *
 * @since 0.1.0
 * @category constructors
 */
export const value = (literal: string): null | number | bigint | string | Uint8Array => {
  if (literal === "NULL") return null
  if (literal.startsWith("'")) return literal.slice(1, -1).replace(/''/g, "'")
  if (/^[xX]'/.test(literal)) return Uint8Array.from(Buffer.from(literal.slice(2, -1), "hex"))
  if (/^-?\d+$/.test(literal)) {
    const big = BigInt(literal)
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big
  }
  return Number(literal)
}

/**
 * An entry of the local conflict log (and of `Conflict` events): what happened and what was decided.
 *
 * @since 0.1.0
 * @category models
 */
export interface Entry {
  /** Milliseconds since the epoch when the push that carried the decision was acknowledged. */
  readonly at: number
  readonly kind: ConflictKind
  readonly table: string
  readonly key: ReadonlyArray<readonly [string, string]>
  readonly changeId: number
  readonly txId: number
  readonly localBefore: ChangeCapture.Image | null
  readonly localAfter: ChangeCapture.Image | null
  readonly remote: ChangeCapture.Image | null
  /** The resolution's tag; `"TransactionDropped"` for changes dropped with another change of their transaction. */
  readonly decision: Resolution["_tag"] | "TransactionDropped"
  readonly statement?: string | undefined
  readonly message?: string | undefined
}
