/**
 * What a `SyncDatabase` tells its app while it works: `SyncEvent`s (a push or pull started, frames and
 * bytes moved, a conflict met and settled, the remote's generation changed, an operation finished or
 * failed, a local write) and a `Status` (idle, pushing or pulling; pending local changes; last error;
 * whether the remote answered last time).
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import type * as Option from "effect/Option"
import type * as ConflictPolicy from "./ConflictPolicy.js"
import type * as SyncError from "./SyncError.js"

/**
 * @since 0.1.0
 * @category models
 */
export type Operation = "push" | "pull" | "sync" | "rebootstrap"

/**
 * Where live sync stands (`live: true`): `connected` (a waiting pull is open at the remote's head, or the
 * remote answered last), `syncing` (pushing or pulling now), `offline` (the remote cannot be reached; it
 * is tried again with backoff).
 *
 * @since 0.1.0
 * @category models
 */
export type LiveState = "connected" | "offline" | "syncing"

/**
 * One thing that happened. `operation` names the public call the event belongs to (a `sync` is a push
 * and then a pull: its events carry `"sync"`).
 *
 * @since 0.1.0
 * @category models
 */
export type SyncEvent = Data.TaggedEnum<{
  /** `push`, `pull` or `sync` was called and got its turn (they never run two at a time). */
  Started: { readonly operation: Operation }
  /**
   * Frames moved so far in this operation (a bootstrap's base file counts as received bytes with
   * 0 frames). Emitted after every request.
   */
  Progress: {
    readonly operation: Operation | "bootstrap"
    readonly framesReceived: number
    readonly bytesReceived: number
    readonly framesSent: number
    readonly bytesSent: number
  }
  /**
   * The remote refused a push because another replica pushed first; the engine resets, pulls, replays
   * the local changes on top and pushes again (`round` counts from 1).
   */
  ConflictRetry: { readonly operation: Operation; readonly round: number }
  /** A push that met conflicts went through after `rounds` retries (the local changes win on top). */
  ConflictResolved: { readonly operation: Operation; readonly rounds: number }
  /**
   * The synced copy was rebuilt from the remote's current state (generation `to`), keeping the local
   * changes not pushed yet: they replay onto it and are pushed once. `GenerationGone`: the remote no
   * longer keeps the generation this copy was on, and the engine did it by itself; `Requested`: the
   * app called `rebootstrap`; `SyncedCopyDamaged`: the synced copy was missing or damaged on open.
   */
  Rebootstrapped: {
    readonly operation: Operation
    readonly reason: "GenerationGone" | "Requested" | "SyncedCopyDamaged"
    readonly from: number
    readonly to: number
  }
  /** The remote started a new generation and the local copy followed it. */
  GenerationChanged: { readonly operation: Operation; readonly from: number; readonly to: number }
  /** The operation succeeded. */
  Finished: {
    readonly operation: Operation
    /** Whether the local copy changed (pull, sync) or anything was pushed (push). */
    readonly changed: boolean
    /** Local changes the remote acknowledged during the operation (0 for a pull). */
    readonly pushedChanges: number
    readonly pendingChanges: number
    readonly framesReceived: number
    readonly bytesReceived: number
    readonly framesSent: number
    readonly bytesSent: number
    readonly durationMs: number
  }
  /** The operation failed; nothing acknowledged is lost, pending changes stay pending. */
  Failed: { readonly operation: Operation; readonly error: SyncError.SyncError }
  /**
   * A conflict met while replaying a local change onto the remote's newest state, and what the conflict
   * policy decided; emitted once its push was acknowledged (the same entry is in the conflict log).
   */
  Conflict: { readonly operation: Operation; readonly entry: ConflictPolicy.Entry }
  /** `execute` committed a local transaction (`changes` rows). */
  LocalWrite: { readonly changes: number }
  /** Live sync's state changed (only with `live`); `status.live` holds it too. */
  Live: { readonly state: LiveState }
}>

/**
 * Constructors and matchers of `SyncEvent` (`SyncEvent.Started({ operation: "push" })`,
 * `SyncEvent.$is("Finished")(event)`, `SyncEvent.$match(...)`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const SyncEvent = Data.taggedEnum<SyncEvent>()

/**
 * The current state, as a `SubscriptionRef` on the service (`status.changes` is a Stream of it).
 *
 * @since 0.1.0
 * @category models
 */
export interface Status {
  readonly state: "idle" | "pushing" | "pulling"
  /** Local changes the remote does not have yet (updated after every write and operation). */
  readonly pendingChanges: number
  /** The failure of the last operation, `None` once one succeeds. */
  readonly lastError: Option.Option<SyncError.SyncError>
  /** Whether the remote answered the last request (true until one fails to reach it). */
  readonly online: boolean
  readonly lastSyncAt: Option.Option<Date>
  /** Live sync's state; undefined when the database is not live. */
  readonly live?: LiveState | undefined
}
