/**
 * The engine's state: one record of the copies, the remote, the metadata, the gates and the counters,
 * built once when a database opens and passed to every step function.
 *
 * @internal
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import type * as ConflictPolicy from "../../ConflictPolicy.js"
import type * as LocalCopies from "../../LocalCopies.js"
import type * as SyncFiles from "../../SyncFiles.js"
import type * as SyncError from "../../SyncError.js"
import type * as SyncMetadata from "../../SyncMetadata.js"
import type * as SyncRemote from "../../SyncRemote.js"
import type * as Changes from "../live/changes.js"
import * as Executor from "../sqlite/executor.js"
import * as Files from "../sqlite/files.js"
import type * as ConflictLog from "./conflictLog.js"
import type * as Gates from "./gates.js"

/** @internal */
export interface EngineOptions {
  readonly path: string
  readonly clientName?: string | undefined
  /** Rounds of reset, pull, replay, push before a push gives up with ConflictError. Default 12. */
  readonly maxPushRounds?: number | undefined
  /** First backoff between conflicting push rounds; doubles each round, capped at 2 s. Default 20 ms. */
  readonly conflictBackoff?: Duration.DurationInput | undefined
  /** Called before each durable step (crash tests kill the process here; tracing may log). */
  readonly onStep?: ((step: Step) => Effect.Effect<void>) | undefined
  /** The conflict policy as a resolver (its environment already provided). Default: last push wins. */
  readonly conflicts?: ConflictPolicy.Resolver | undefined
  /** Called for every captured change before it is replayed (its environment already provided). */
  readonly transform?: ConflictPolicy.Transform | undefined
  /** Called with the conflicts of every acknowledged push (after they are in the conflict log). */
  readonly onConflicts?: ((entries: ReadonlyArray<ConflictPolicy.Entry>) => Effect.Effect<void>) | undefined
  /** Copies whose metadata file is lost are discarded and the database made anew from the remote. */
  readonly startOver?: boolean | undefined
  /** The remote's URL may differ from the recorded one (the same server database moved). */
  readonly allowUrlChange?: boolean | undefined
  /**
   * Frames a copy's WAL may hold at rest before they are folded into its database file. Default 1000
   * (about 4 MB per copy).
   */
  readonly maxWalFrames?: number | undefined
  /**
   * What a new local database starts from: `"head"` (default) the remote's current state, `"base"` only the
   * base of the remote's current generation (its frames arrive with the first pull).
   */
  readonly bootstrap?: "head" | "base" | undefined
  /** Told of frames and bases as they arrive and leave (SyncDatabase's events and status). */
  readonly observer?: Observer | undefined
  /**
   * Pulls that find nothing pending leave Draft's copy for later and serve reads from Synced (live sync:
   * a stream of remote commits costs a pull each, not a pull and a copy); see follow.ts.
   */
  readonly followOnSynced?: boolean | undefined
}

/** @internal */
export type RebootstrapReason = "GenerationGone" | "Requested" | "SyncedCopyDamaged"

/**
 * What the engine reports where frames arrive and leave, as it counts them for `stats`.
 *
 * @internal
 */
export interface Observer {
  /** A base file (`frames` 0) or a batch of frames arrived. */
  readonly received: (frames: number, bytes: number) => Effect.Effect<void>
  /** The remote answered a push of `frames` frames. */
  readonly pushed: (frames: number, result: SyncRemote.PushResult) => Effect.Effect<void>
  /** The remote acknowledged a push: `changes` local changes are no longer pending. */
  readonly acknowledged?: ((changes: number) => Effect.Effect<void>) | undefined
  /** The remote moved to a newer generation; the engine follows it one generation at a time. */
  readonly generationChanged: (from: number, to: number) => Effect.Effect<void>
  /** Synced was rebuilt from the remote's current state (generation `to`), the pending changes kept. */
  readonly rebootstrapped: (reason: RebootstrapReason, from: number, to: number) => Effect.Effect<void>
}

/**
 * The points between durable steps, in the order a sync meets them.
 *
 * @internal
 */
export const steps = [
  "pull:framesWritten",
  "pull:settled",
  "fold:applied",
  "fold:flagged",
  "roll:materialized",
  "roll:flagged",
  "replay:done",
  "push:beforeSend",
  "push:answered",
  "copy:walWritten",
  "copy:flagged",
  "copy:writesHeld",
  "copy:draftClosed",
  "copy:renamed",
  "copy:applied",
  "draftFold:flagged",
  "reset:before"
] as const

/**
 * The point between the durable steps of a bootstrap (the copies written, the metadata not yet): met
 * only by an open that bootstraps, so kept apart from the steps a sync meets.
 *
 * @internal
 */
export const bootstrapSteps = ["bootstrap:copiesWritten"] as const

/** @internal */
export type Step = typeof steps[number] | typeof bootstrapSteps[number]

/** @internal */
export type Paths = ReturnType<typeof LocalCopies.files>

/** Bytes of frames and bases that crossed the network, for `stats`. */
export interface Traffic {
  readonly sent: number
  readonly received: number
}

/** Where Synced's WAL stands at the synced frame (header, running checksum), for one generation. */
export interface SyncedPrefix {
  readonly generation: number
  readonly state: Files.WalState
}

/** What opening (bootstrap or recovery) needs, before the metadata is known. */
export interface Opening {
  readonly options: EngineOptions
  readonly paths: Paths
  readonly remote: SyncRemote.Service
  readonly metadataStore: SyncMetadata.Service
  readonly traffic: Ref.Ref<Traffic>
}

/** @internal */
export interface State extends Opening {
  readonly draft: LocalCopies.Copy
  readonly synced: LocalCopies.Copy
  /** The file service the engine was built with (tests inject faults through it), if any. */
  readonly fileService: Option.Option<SyncFiles.Service>
  readonly metadata: SynchronizedRef.SynchronizedRef<SyncMetadata.Metadata>
  /** Whether `metadata` holds staged facts the metadata file does not have yet (see `stageMetadata`). */
  readonly staged: Ref.Ref<boolean>
  readonly clientId: string
  readonly step: (step: Step) => Effect.Effect<void>
  readonly maxRounds: number
  readonly backoff: Duration.Duration
  readonly resolve: ConflictPolicy.Resolver
  readonly conflictLog: ReturnType<typeof ConflictLog.make>
  /** The conflicts of the last replay in push mode; logged once its push is acknowledged. */
  readonly pushConflicts: Ref.Ref<ReadonlyArray<ConflictPolicy.Entry>>
  /** Synced's WAL at the synced frame, so pushes and pulls read and validate only the frames after it. */
  readonly syncedPrefix: Ref.Ref<SyncedPrefix | undefined>
  readonly gates: Gates.Gates
  /** Push, pull and sync never run two at a time (invariant 5). */
  readonly syncLock: Effect.Semaphore
  readonly lastWriteBlockedMs: Ref.Ref<Option.Option<number>>
  /** Frames a copy's WAL holds at rest before it is folded. */
  readonly maxWalFrames: number
  /** SQLite's verdict per statement text: whether it only reads (`query`, layerSqlClient's routing). */
  readonly readVerdicts: Map<string, boolean>
  /** Small direct writes since Draft's WAL size was last looked at (local.ts looks every few of them). */
  readonly writesSinceWalCheck: { count: number }
  /** Told of every change to Draft: reactive queries and live sync listen. */
  readonly changes: Changes.Tracker
  /**
   * Whether the remote's last `/info` offered pushes that name their database (`SyncRemote.Info.pushIdentity`):
   * then a push may skip the pull before it (push.ts `pushAtHead`). `undefined`: not asked yet.
   */
  readonly pushIdentity: Ref.Ref<boolean | undefined>
  /**
   * Whether this replica's last push at the head found it behind (Push.pushAtHead): a large push then pulls
   * first, until a push finds the replica at the head again (one at the head lands, or the pull before one
   * brings nothing).
   */
  readonly atHeadMissed: Ref.Ref<boolean>
  /** A waiting pull's answer live sync hands to the next step (a), which takes it (pull.ts `offer`). */
  readonly offeredAnswer: { current: OfferedAnswer | undefined }
  /**
   * Files written without their fsync whose contents only staged facts count on (a pull's frames in Synced's
   * WAL): fsynced before the next durable metadata write, which may record those facts (`owesSync`).
   */
  readonly owedSyncs: Set<string>
  /** Where each page's newest copy is among Synced's synced frames (copy.ts keeps it; see `SyncedPageIndex`). */
  readonly syncedPageIndex: { current: SyncedPageIndex | undefined }
  /** Whether pulls left Draft behind Synced, reads on Synced (see follow.ts). */
  readonly following: Following
}

/** Draft left behind by pulls that found nothing pending (`EngineOptions.followOnSynced`; follow.ts). */
export interface Following {
  /** Reads are on Synced and Draft's copy is left for later; a write makes the copy first. */
  behind: boolean
  /** Writes waiting for that copy or running after it: a pull leaves Draft behind only while none do. */
  wanting: number
  /** Makes the copy under the sync lock (set by the engine once it can take that lock). */
  catchUp: Effect.Effect<void, SyncError.SyncError>
}

/**
 * Where each page's newest copy is among the synced frames of Synced's WAL (frame index from 0), for the
 * WAL `key` names; extended by the frames a pull appends, so that a copy reads the headers of the new frames
 * and the pages it copies, not every frame of the WAL.
 */
export interface SyncedPageIndex {
  readonly key: string
  frames: number
  lastCommitSize: number
  readonly newest: Map<number, number>
}

/** The answer to a pull of `generation` from `start` to `end` (exclusive), as the remote gave it. */
export interface OfferedAnswer {
  readonly generation: number
  readonly start: number
  readonly end: number
  readonly result: SyncRemote.PullResult
}

/** Counts bytes that arrived (for `stats`) and tells the observer. */
export const received = (opening: Opening, frames: number, bytes: number) =>
  Effect.zipRight(
    opening.options.observer?.received(frames, bytes) ?? Effect.void,
    Ref.update(opening.traffic, (t) => ({ ...t, received: t.received + bytes }))
  )

/** `path` was written without its fsync; only staged facts count on it until the next metadata write. */
export const owesSync = (state: State, path: string): Effect.Effect<void> =>
  Effect.sync(() => {
    state.owedSyncs.add(path)
  })

/**
 * The fsyncs `owesSync` recorded, done (all at once, off the event loop where the file service can): before
 * a metadata write that may record what they hold.
 */
export const payOwedSyncs = (state: State) =>
  Effect.suspend(() => {
    const owed = [...state.owedSyncs]
    if (owed.length === 0) return Effect.void
    return Effect.zipRight(
      Files.syncAll(owed),
      Effect.sync(() => owed.forEach((path) => state.owedSyncs.delete(path)))
    )
  })

/**
 * The metadata record `next` made durable and put in place, after the files it counts on (`owesSync`)
 * were fsynced: the record's own fsync and theirs in flight together (neither is in place before both
 * are done), waited for off the event loop where the file service can, so that the replica's other
 * fibers (live sync's waiting pull, reactive queries) run meanwhile.
 */
const writeMetadata = (state: State, next: SyncMetadata.Metadata, options?: SyncMetadata.WriteOptions) =>
  Effect.suspend(() =>
    state.owedSyncs.size === 0
      // (nothing owed, as after most pushes: the record alone, without two fibers to run it beside nothing)
      ? Effect.flatMap(state.metadataStore.prepare(next, options), (prepared) => prepared.commit)
      : writeWithOwed(state, next, options)
  )

const writeWithOwed = (state: State, next: SyncMetadata.Metadata, options?: SyncMetadata.WriteOptions) =>
  Effect.zipWith(
    Effect.either(payOwedSyncs(state)),
    Effect.either(state.metadataStore.prepare(next, options)),
    (owed, prepared) =>
      Either.isLeft(prepared)
        ? Effect.fail(prepared.left)
        : Either.isLeft(owed)
        ? Effect.zipRight(prepared.right.discard, Effect.fail(owed.left))
        : prepared.right.commit,
    { concurrent: true }
  ).pipe(Effect.flatten)

/**
 * Replaces the metadata, durably, then in memory; returns the new metadata. What was staged before is
 * written with it, after the files it counts on were fsynced.
 */
export const updateMetadata = (
  state: State,
  f: (m: SyncMetadata.Metadata) => SyncMetadata.Metadata,
  options?: SyncMetadata.WriteOptions
) =>
  SynchronizedRef.updateAndGetEffect(state.metadata, (m) => {
    const next = f(m)
    return Effect.as(Effect.zipRight(writeMetadata(state, next, options), Ref.set(state.staged, false)), next)
  })

/**
 * Replaces the metadata in memory only: the next durable write (`updateMetadata`, `persistStaged`) takes
 * it to the file. Only for facts whose loss in a crash the metadata file as it stands still describes
 * correctly: a synced position whose frames are in Synced's WAL, fsynced or owed (`owesSync`: fsynced before
 * the next metadata write; recovery cuts the WAL back to
 * the recorded position and the next pull brings them again), the progress row read from such frames
 * (read again by that pull), a push in flight, a finished copy (recovery finds it done), a remote identity
 * first seen (verified and recorded again). A step that makes something irreversible on the strength of a
 * staged fact (a fold of Synced's WAL into its file, a copy that replaces Draft's WAL) persists first.
 */
export const stageMetadata = (state: State, f: (m: SyncMetadata.Metadata) => SyncMetadata.Metadata) =>
  SynchronizedRef.modify(state.metadata, (m) => {
    const next = f(m)
    return [sameFields(m, next), next] as const
  }).pipe(Effect.flatMap((same) => same ? Effect.void : Ref.set(state.staged, true)))

/** Whether two metadata records have the same fields (nested records are replaced, never changed in place). */
const sameFields = (a: SyncMetadata.Metadata, b: SyncMetadata.Metadata): boolean => {
  const keys = Object.keys(a) as Array<keyof SyncMetadata.Metadata>
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k])
}

/** Writes the staged metadata, if anything is staged. */
export const persistStaged = (state: State) =>
  Effect.flatMap(Ref.get(state.staged), (staged) => staged ? updateMetadata(state, (m) => m) : Effect.void)

/** Frames of Synced's WAL at rest: the synced frames not folded into its database file. */
export const walFrames = (m: SyncMetadata.Metadata): number => m.syncedFrame - (m.foldedFrame ?? 0)

/** Where Synced's database file stands on the remote's history. */
export const syncedFileAt = (m: SyncMetadata.Metadata): SyncMetadata.Position => ({
  generation: m.generation,
  frame: m.foldedFrame ?? 0
})

/** The metadata without the push whose outcome was unknown (it is settled now). */
export const withoutTransfer = (m: SyncMetadata.Metadata): SyncMetadata.Metadata => {
  const { transferredChangeId: _, ...rest } = m
  return rest
}

/** Runs `effect` with `copy`'s SqlClient. */
export const on = <A, E, R>(copy: LocalCopies.Copy, effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(copy.client, (client) => Effect.provideService(effect, SqlClient.SqlClient, client)).pipe(
    // A caller inside another client's transaction (SyncDatabase.layerSqlClient's withTransaction) must
    // not make this copy's client join that connection: @effect/sql's transaction tag is shared.
    Effect.mapInputContext((context: Context.Context<Exclude<R, SqlClient.SqlClient>>) =>
      Context.omit(SqlClient.TransactionConnection)(context) as Context.Context<Exclude<R, SqlClient.SqlClient>>)
  )

/**
 * `step` on `copy`'s connection as one synchronous step when no transaction holds it (no effect per
 * statement, no context to provide: see `Executor.freeExecutor`); otherwise `otherwise` through the copy's
 * client (`on`). For the small reads and writes of Draft's log on every push.
 */
export const stepOn = <A, E>(
  copy: LocalCopies.Copy,
  step: (exec: Executor.Executor) => A,
  otherwise: Effect.Effect<A, E, SqlClient.SqlClient>
): Effect.Effect<A, E | SqlError> =>
  Effect.flatMap(copy.client, (client): Effect.Effect<A, E | SqlError> => {
    const exec = Executor.freeExecutor(client)
    return exec === undefined
      ? on(copy, otherwise)
      : Effect.try({ try: () => step(exec), catch: (cause) => Executor.toSqlError(cause) })
  })
