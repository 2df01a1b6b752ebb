/**
 * The client engine: the seed's push (1a–c) and pull (2a–d) over the Draft and Synced copies, bootstrap,
 * generation rolls and recovery on open.
 *
 * Invariants (every step below keeps them; recovery on open restores them after a crash):
 * 1. At rest, Synced = the remote's base of `generation` (its database file) + exactly the remote's frames
 *    1..`syncedFrame` (its WAL). Frames beyond `syncedFrame` exist only inside a push or a pull and are cut
 *    off by the next step (a) or on open.
 * 2. Every change in Draft's change log with an id above the remote's progress row for this client
 *    (`_sync_progress`, read from Synced after a pull) is not yet on the remote; every one at or below it is,
 *    exactly once: the progress row is written in the same remote transaction as the replayed changes.
 * 3. Draft is replaced only by a complete, fsynced copy of Synced (`<path>-draft.new`, renamed over it);
 *    metadata says when a copy is under way, and open finishes it.
 * 4. Writes never reach Draft while it is being replaced (the copy holds every write permit); reads never
 *    see a half-replaced Draft (they are served by Synced meanwhile, which holds the same rows).
 * 5. Push, pull and sync never run two at a time; Synced is only touched by them (and by reads during 2c).
 * 6. Local change ids only grow, across copies and restarts, so that (2) can compare them.
 *
 * @internal
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scheduler from "effect/Scheduler"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as Crypto from "node:crypto"
import * as ChangeCapture from "../../ChangeCapture.js"
import * as ChangeReplay from "../../ChangeReplay.js"
import * as ConflictPolicy from "../../ConflictPolicy.js"
import * as LocalCopies from "../../LocalCopies.js"
import type { ExecuteResult, Stats } from "../../SyncDatabase.js"
import * as SyncError from "../../SyncError.js"
import * as SyncFiles from "../../SyncFiles.js"
import * as SyncMetadata from "../../SyncMetadata.js"
import * as SyncProtocol from "../../SyncProtocol.js"
import * as SyncRemote from "../../SyncRemote.js"
import * as WalFrame from "../../WalFrame.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import * as ConflictLog from "./conflictLog.js"
import * as DraftPages from "./draftPages.js"
import * as Files from "../sqlite/files.js"

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
}

/**
 * The points between durable steps, in the order a sync meets them.
 *
 * @internal
 */
export const steps = [
  "pull:framesWritten",
  "pull:metadataWritten",
  "fold:applied",
  "fold:flagged",
  "roll:materialized",
  "roll:flagged",
  "replay:done",
  "push:beforeSend",
  "push:answered",
  "copy:walWritten",
  "copy:flagged",
  "copy:draftClosed",
  "copy:renamed",
  "draftFold:flagged",
  "reset:before"
] as const

/** @internal */
export type Step = typeof steps[number]

// The public shapes live in SyncDatabase, where users read them.
export type { ExecuteResult, Stats } from "../../SyncDatabase.js"

/**
 * better-sqlite3 runs every statement synchronously, and Effect's default scheduler goes back to the event
 * loop only after thousands of yields: a replay of thousands of changes would hold the whole process (reads,
 * writes, an HTTP server) for seconds. Push and pull run on this scheduler instead, which returns to the
 * event loop (setImmediate) each time the fiber yields (every 2048 operations).
 */
const breathingScheduler = Scheduler.make((task) => {
  setImmediate(task)
})

const WRITE_PERMITS = 64
const READ_PERMITS = 1024
/** Frames held in memory during a pull before they are written into Synced's WAL. */
const FLUSH_FRAMES = 2048

type Mode = "push" | "pull"

const sqlStatementError = (reason: "Statement" | "Replay" | "Capture", sql?: string) => (cause: unknown) =>
  new SyncError.SqlStatementError({
    reason,
    message: cause instanceof Error && "cause" in cause && cause.cause instanceof Error
      ? cause.cause.message
      : String(cause),
    ...(sql === undefined ? {} : { sql }),
    cause
  })

/**
 * Replay failures a policy did not settle become ConflictErrors naming the statement and the local
 * transaction; others stay SqlStatementErrors.
 */
const replayError = (error: ChangeReplay.ReplayError | import("@effect/sql/SqlError").SqlError) =>
  error._tag === "ReplayError" && (error.reason === "Constraint" || error.reason === "Unresolved")
    ? new SyncError.ConflictError({
      reason: error.reason,
      message: error.message,
      rounds: 0,
      ...(error.statement !== undefined ? { statement: error.statement } : {}),
      ...(error.txId !== undefined ? { txId: error.txId } : {}),
      ...(error.changeId !== undefined ? { changeId: error.changeId } : {}),
      ...(error.table !== undefined ? { table: error.table } : {}),
      cause: error
    })
    : sqlStatementError("Replay")(error)

/**
 * Whether a statement only reads: a write through `query` would skip change capture (and never sync) or,
 * during step 2c, land in Synced. Comments and string literals are skipped before looking at keywords.
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

/**
 * The length an SQLite file's header gives (page size × in-header page count), when that count is valid
 * (its change counter matches "version-valid-for", sqlite.org/fileformat.html); otherwise undefined.
 *
 * @internal
 */
export const baseLength = (file: Uint8Array): number | undefined => {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength)
  const raw = view.getUint16(16)
  const pageSize = raw === 1 ? 65536 : raw
  const pages = view.getUint32(28)
  return pages > 0 && view.getUint32(24) === view.getUint32(92) ? pages * pageSize : undefined
}

/** @internal */
export const make = (options: EngineOptions) =>
  Effect.gen(function*() {
    const draft = yield* LocalCopies.Draft
    const synced = yield* LocalCopies.Synced
    const remote = yield* SyncRemote.SyncRemote
    const metadataStore = yield* SyncMetadata.SyncMetadata
    const names = LocalCopies.files(options.path)
    const maxRounds = options.maxPushRounds ?? 12
    const backoff = Duration.decode(options.conflictBackoff ?? Duration.millis(20))
    const step = options.onStep ?? (() => Effect.void)
    // The file service the engine is built with (tests inject faults through it) also serves push, pull and
    // sync, whatever context they run in later; without one, the caller's context decides (node:fs).
    const files = yield* Effect.serviceOption(SyncFiles.SyncFiles)
    const withFiles = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Option.isSome(files) ? Effect.provideService(effect, SyncFiles.SyncFiles, files.value) : effect
    const resolve = options.conflicts ?? ConflictPolicy.resolver("lastPushWins")
    const conflictLog = ConflictLog.make(`${options.path}-conflicts`)
    // The conflicts of the last replay in push mode; logged once its push is acknowledged.
    const pushConflicts = yield* Ref.make<ReadonlyArray<ConflictPolicy.Entry>>([])

    const active = yield* Ref.make<"draft" | "synced">("draft")
    const readGate = yield* Effect.makeSemaphore(READ_PERMITS)
    const writeGate = yield* Effect.makeSemaphore(WRITE_PERMITS)
    // Effect's semaphores let a small taker pass a waiting large one, so a stream of reads or writes could
    // starve the step that needs every permit. The latches close the door first: new reads (writes) wait
    // at the latch while the ones in flight finish, then the step runs, then the door opens again.
    const readsOpen = yield* Effect.makeLatch(true)
    const writesOpen = yield* Effect.makeLatch(true)
    const reading = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.zipRight(readsOpen.await, readGate.withPermits(1)(effect))
    const writing = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.zipRight(writesOpen.await, writeGate.withPermits(1)(effect))
    const exclusively = <A, E, R>(latch: Effect.Latch, gate: Effect.Semaphore, permits: number, effect: Effect.Effect<A, E, R>) =>
      Effect.acquireUseRelease(latch.close, () => gate.withPermits(permits)(effect), () => latch.open)
    const syncLock = yield* Effect.makeSemaphore(1)
    const traffic = yield* Ref.make({ sent: 0, received: 0 })
    const lastWriteBlockedMs = yield* Ref.make(Option.none<number>())

    const on = <A, E, R>(copy: LocalCopies.Copy, effect: Effect.Effect<A, E, R>) =>
      Effect.flatMap(copy.client, (client) => Effect.provideService(effect, SqlClient.SqlClient, client)).pipe(
        // A caller inside another client's transaction (SyncDatabase.layerSqlClient's withTransaction) must
        // not make this copy's client join that connection: @effect/sql's transaction tag is shared.
        Effect.mapInputContext((context: Context.Context<Exclude<R, SqlClient.SqlClient>>) =>
          Context.omit(SqlClient.TransactionConnection)(context) as Context.Context<Exclude<R, SqlClient.SqlClient>>)
      )

    // -------------------------------------------------------------------------------------------------
    // open: bootstrap or recovery
    // -------------------------------------------------------------------------------------------------

    const maxWalFrames = Math.max(1, options.maxWalFrames ?? 1000)
    const draftWalNext = PageCopy.nextWalPath(names.draft)
    const syncedWalNext = PageCopy.nextWalPath(names.synced)
    const allFiles = [
      names.draft, Files.walPath(names.draft), Files.shmPath(names.draft), names.draftNew, draftWalNext,
      names.synced, Files.walPath(names.synced), Files.shmPath(names.synced), names.syncedNext, syncedWalNext
    ]
    /** Frames of Synced's WAL at rest: the synced frames not folded into its file. */
    const walFrames = (m: SyncMetadata.Metadata) => m.syncedFrame - (m.foldedFrame ?? 0)
    /** Where Synced's database file stands. */
    const syncedFileAt = (m: SyncMetadata.Metadata): SyncMetadata.Position => ({ generation: m.generation, frame: m.foldedFrame ?? 0 })

    /** Step 2c's switch: the fresh WAL replaces Draft's (Draft closed); SQLite recovers it on open. */
    const finishCopyFiles = Effect.gen(function*() {
      yield* Files.remove(Files.shmPath(names.draft))
      yield* Files.rename(draftWalNext, Files.walPath(names.draft))
    })

    const finishRollFiles = Effect.gen(function*() {
      yield* Files.remove(Files.walPath(names.synced))
      yield* Files.remove(Files.shmPath(names.synced))
      yield* Files.rename(names.syncedNext, names.synced)
    })

    /**
     * A fold's switch (Synced closed): the rest of the WAL, rewritten from frame 1, replaces it; with nothing
     * left, the WAL is cut to nothing. Idempotent (recovery redoes it).
     */
    const finishFoldFiles = (m: SyncMetadata.Metadata) =>
      Effect.gen(function*() {
        if (yield* Files.exists(syncedWalNext)) {
          yield* Files.remove(Files.shmPath(names.synced))
          yield* Files.rename(syncedWalNext, Files.walPath(names.synced))
        }
        yield* Files.truncateWal(names.synced, walFrames(m))
      })

    /** A brand-new local database: Synced = the remote's current base, Draft = a copy of it. */
    const bootstrap = Effect.gen(function*() {
      for (const file of allFiles) yield* Files.remove(file)
      const { generation } = yield* remote.info
      const base = yield* remote.export(generation)
      yield* Ref.update(traffic, (t) => ({ ...t, received: t.received + base.byteLength }))
      if (base.byteLength < 100 || new TextDecoder().decode(base.subarray(0, 15)) !== "SQLite format 3") {
        return yield* new SyncError.BootstrapError({
          reason: "InvalidBase",
          message: `the base of generation ${generation} (${base.byteLength} bytes) is not an SQLite database`
        })
      }
      // A base cut short (whole pages, so the transport did not notice) would be written and its metadata
      // with it: every later open would fail on a malformed Synced. Its header says how long it is.
      const expectedBytes = baseLength(base)
      if (expectedBytes !== undefined && expectedBytes !== base.byteLength) {
        return yield* new SyncError.BootstrapError({
          reason: "InvalidBase",
          message: `the base of generation ${generation} has ${base.byteLength} bytes, its header says ${expectedBytes}`
        })
      }
      yield* Files.writeNew(names.synced, base)
      yield* Files.writeNew(names.draft, base)
      const at = { generation, frame: 0 }
      const metadata: SyncMetadata.Metadata = {
        version: 1,
        clientId: `${options.clientName ?? "client"}-${Crypto.randomUUID()}`,
        generation,
        syncedFrame: 0,
        foldedFrame: 0,
        lastPushedChangeId: 0,
        activeCopy: "draft",
        copyInProgress: false,
        rollInProgress: false,
        draftBase: at,
        draftPages: DraftPages.fresh(at)
      }
      // Written last: the metadata file is what says a bootstrap completed.
      yield* metadataStore.write(metadata)
      return metadata
    }).pipe(
      Effect.mapError((cause) =>
        cause._tag === "BootstrapError" ? cause : new SyncError.BootstrapError({
          reason: cause._tag === "StorageError" ? "Storage" : "Remote",
          message: `cannot create a local database from the remote: ${cause.message}`,
          cause
        })
      ),
      Effect.tapError(() => Effect.forEach(allFiles, (f) => Effect.ignore(Files.remove(f))))
    )

    /** Finishes what a crash interrupted, and cuts Synced back to its synced frame (invariants 1, 3). */
    const recover = (stored: SyncMetadata.Metadata) =>
      Effect.gen(function*() {
        let metadata = stored
        if (metadata.rollInProgress) {
          if (yield* Files.exists(names.syncedNext)) yield* finishRollFiles
          metadata = { ...metadata, rollInProgress: false }
        } else {
          yield* Files.remove(names.syncedNext)
        }
        if (metadata.foldInProgress) {
          yield* finishFoldFiles(metadata)
          metadata = { ...metadata, foldInProgress: false }
        } else {
          yield* Files.remove(syncedWalNext)
        }
        if (metadata.copyInProgress) {
          if (yield* Files.exists(draftWalNext)) yield* finishCopyFiles
          metadata = { ...metadata, copyInProgress: false }
        } else {
          yield* Files.remove(draftWalNext)
        }
        // A copy file of an earlier version of the engine (it materialized whole copies).
        yield* Files.remove(names.draftNew)
        metadata = { ...metadata, activeCopy: "draft" }
        if (metadata.draftPages === undefined) {
          const pages = yield* Files.attempt(names.draft, "cannot read", (fs) => PageCopy.headerPages(fs, names.draft))
          metadata = { ...metadata, draftPages: DraftPages.unknown(syncedFileAt(metadata), pages) }
        }
        const wal = yield* Files.readWal(names.synced)
        const frames = Option.match(wal, { onNone: () => 0, onSome: (w) => w.frames.length })
        if (frames < walFrames(metadata)) {
          // Cannot happen with fsync honoured; re-pulling from what is there is still correct.
          yield* Effect.logWarning(`synced WAL holds ${frames} frames, metadata says ${walFrames(metadata)}`)
          metadata = { ...metadata, syncedFrame: (metadata.foldedFrame ?? 0) + frames }
        }
        yield* Files.truncateWal(names.synced, walFrames(metadata))
        if (metadata !== stored) yield* metadataStore.write(metadata)
        return metadata
      })

    const stored = yield* metadataStore.read
    const initial = yield* Option.match(stored, { onNone: () => bootstrap, onSome: recover })
    const metadata = yield* SynchronizedRef.make(initial)
    const clientId = initial.clientId

    const updateMetadata = (f: (m: SyncMetadata.Metadata) => SyncMetadata.Metadata) =>
      SynchronizedRef.updateAndGetEffect(metadata, (m) => {
        const next = f(m)
        return Effect.as(metadataStore.write(next), next)
      })

    /** Opens Draft with capture installed and change ids above everything the remote has (invariant 6). */
    const openDraft = Effect.gen(function*() {
      yield* draft.open
      const floor = (yield* SynchronizedRef.get(metadata)).lastPushedChangeId
      yield* on(
        draft,
        Effect.zipRight(ChangeCapture.install, ChangeCapture.ensureChangeIdsAbove(floor))
      ).pipe(Effect.mapError(sqlStatementError("Capture")))
    })

    // -------------------------------------------------------------------------------------------------
    // file steps shared by the engine and recovery
    // -------------------------------------------------------------------------------------------------

    /** Folds Draft's WAL into its file (SQLite's own checkpoint; the pages it changes are recorded first). */
    const checkpointDraft = on(draft, Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<{ busy: number }>("PRAGMA wal_checkpoint(TRUNCATE)"))).pipe(
      Effect.mapError((cause) => new SyncError.StorageError({ reason: "Files", message: `cannot fold ${names.draft}'s WAL`, path: names.draft, cause })),
      Effect.flatMap((rows) =>
        rows[0]?.busy === 0
          ? Effect.void
          : Effect.fail(new SyncError.StorageError({ reason: "Files", message: `folding ${names.draft}'s WAL was blocked`, path: names.draft }))
      )
    )

    /** A Draft fold recorded in metadata whose checkpoint did not run (or failed): run it before Draft's WAL is replaced. */
    const finishDraftFold = Effect.gen(function*() {
      if (!(yield* SynchronizedRef.get(metadata)).draftFoldInProgress) return
      yield* checkpointDraft
      yield* updateMetadata((m) => ({ ...m, draftFoldInProgress: false }))
    })

    /**
     * Folds Draft's WAL into its file when it holds more than `maxWalFrames` frames (`force`: whatever it
     * holds). The pages its frames change are recorded in metadata first (with the flag that makes open redo
     * the checkpoint), so a later copy still knows where Draft's file differs from Synced. The caller holds
     * every write permit: no transaction is under way in Draft.
     */
    const foldDraftUnlocked = (force: boolean) =>
      Effect.gen(function*() {
        yield* finishDraftFold
        const frames = yield* PageCopy.readCommittedFrames(names.draft)
        const copyFrames = (yield* SynchronizedRef.get(metadata)).draftPages?.copy?.frames ?? 0
        if (frames.length < copyFrames) {
          // Draft's WAL is not the one the metadata describes (SQLite folded it when a close could not keep
          // it): where Draft's file differs is unknown, so the next copy writes every page.
          const pages = yield* Files.attempt(names.draft, "cannot read", (fs) =>
            Math.max(PageCopy.headerPages(fs, names.draft), PageCopy.headerPages(fs, names.synced), ...frames.map((f) => f.commitSize)))
          yield* Effect.logWarning(`${names.draft}'s WAL holds ${frames.length} frames, its copy wrote ${copyFrames}`)
          yield* updateMetadata((m) => ({ ...m, draftPages: DraftPages.unknown(syncedFileAt(m), pages) }))
        }
        if (frames.length === 0 || (!force && frames.length <= maxWalFrames)) return
        yield* updateMetadata((m) => {
          const t = m.draftPages ?? DraftPages.fresh(syncedFileAt(m))
          const local = PageCopy.pageNumbers(frames.slice(t.copy?.frames ?? 0))
          return { ...m, draftPages: DraftPages.draftFolded(t, local, syncedFileAt(m)), draftFoldInProgress: true }
        })
        yield* step("draftFold:flagged")
        yield* finishDraftFold
      })

    /** After a local write: fold Draft's WAL if it outgrew its bound and no write is in flight (else later). */
    const maybeFoldDraft = Effect.gen(function*() {
      if ((yield* Files.fileSize(Files.walPath(names.draft))) <= WalFrame.walSize(maxWalFrames)) return
      yield* writeGate.withPermitsIfAvailable(WRITE_PERMITS)(foldDraftUnlocked(false))
    }).pipe(Effect.catchAll((error) => Effect.logWarning("cannot fold the draft copy's WAL", error)))

    yield* synced.open
    yield* openDraft
    yield* foldDraftUnlocked(false)

    /** Cuts Synced's WAL back to the synced frame (invariant 1); Synced is closed meanwhile. */
    const cutSyncedToSyncedFrame = Effect.gen(function*() {
      const m = yield* SynchronizedRef.get(metadata)
      const size = yield* Files.fileSize(Files.walPath(names.synced))
      if (size > WalFrame.walSize(walFrames(m))) {
        yield* synced.withClosed(Files.truncateWal(names.synced, walFrames(m)))
      }
    })

    // Where Synced's WAL stands at the synced frame (header, running checksum), so that pushes and pulls
    // read and validate only the frames after it, whatever the size of the WAL. `state.frames` counts the
    // WAL's frames (the synced frames not folded).
    const syncedPrefix = yield* Ref.make<{ readonly generation: number; readonly state: Files.WalState } | undefined>(
      undefined
    )
    const prefixAtSyncedFrame = Effect.gen(function*() {
      const m = yield* SynchronizedRef.get(metadata)
      const frames = walFrames(m)
      if (frames === 0) return undefined
      const cached = yield* Ref.get(syncedPrefix)
      if (cached !== undefined && cached.generation === m.generation && cached.state.frames === frames) {
        return cached.state
      }
      const state = yield* Files.prefixState(names.synced, frames)
      if (state !== undefined) yield* Ref.set(syncedPrefix, { generation: m.generation, state })
      return state
    })

    /** Synced's committed frames beyond the synced frame (local replays waiting to be pushed). */
    const syncedTail = Effect.flatMap(prefixAtSyncedFrame, (prefix) => Files.readWalTail(names.synced, prefix))

    /** Follows the remote to `generation + 1`: the new base = old base + all its frames (a TRUNCATE checkpoint). */
    const rollSynced = (next: number) =>
      Effect.gen(function*() {
        const m = yield* SynchronizedRef.get(metadata)
        yield* prefixAtSyncedFrame // validates the synced frames once if this process has not yet
        const frames = yield* Files.readWalFrames(names.synced, walFrames(m))
        yield* synced.close
        yield* Ref.set(syncedPrefix, undefined)
        yield* Files.materialize(names.synced, frames, names.syncedNext)
        yield* step("roll:materialized")
        const at = { generation: next, frame: 0 }
        yield* updateMetadata((m) => ({
          ...m,
          generation: next,
          syncedFrame: 0,
          foldedFrame: 0,
          rollInProgress: true,
          ...(m.draftPages ? { draftPages: DraftPages.syncedFolded(m.draftPages, at, PageCopy.pageNumbers(frames)) } : {})
        }))
        yield* step("roll:flagged")
        yield* finishRollFiles
        yield* updateMetadata((m) => ({ ...m, rollInProgress: false }))
      })

    /**
     * Folds the synced frames of Synced's WAL into its database file when there are more than
     * `maxWalFrames` of them (all but the last transaction, unless that one alone is too large). Crash-safe:
     * the pages are written into the file while the WAL still holds them (SQLite reads the WAL's copy first,
     * so the file may be ahead), the rest of the WAL is written as `-wal.next`, metadata records the new
     * `foldedFrame` with a flag, then the new WAL replaces the old one. Open finishes a flagged fold.
     */
    const foldSynced = Effect.gen(function*() {
      const m = yield* SynchronizedRef.get(metadata)
      if (walFrames(m) <= maxWalFrames) return
      yield* prefixAtSyncedFrame // validates the synced frames once if this process has not yet
      const frames = yield* Files.readWalFrames(names.synced, walFrames(m))
      const fold = PageCopy.foldLength(frames, Math.max(1, Math.floor(maxWalFrames / 2)))
      if (fold === 0) return
      yield* synced.close
      yield* Ref.set(syncedPrefix, undefined)
      yield* Files.remove(syncedWalNext)
      yield* Files.applyInPlace(names.synced, frames.slice(0, fold))
      if (fold < frames.length) yield* PageCopy.writeWalFile(syncedWalNext, frames.slice(fold))
      yield* step("fold:applied")
      const folded = PageCopy.pageNumbers(frames.slice(0, fold))
      const next = yield* updateMetadata((m) => {
        const foldedFrame = (m.foldedFrame ?? 0) + fold
        const at = { generation: m.generation, frame: foldedFrame }
        return {
          ...m,
          foldedFrame,
          foldInProgress: true,
          ...(m.draftPages ? { draftPages: DraftPages.syncedFolded(m.draftPages, at, folded) } : {})
        }
      })
      yield* step("fold:flagged")
      yield* finishFoldFiles(next)
      yield* updateMetadata((m) => ({ ...m, foldInProgress: false }))
    }).pipe(Effect.ensuring(Effect.ignore(synced.open)))

    /** A fold flagged in metadata whose file steps failed: finish it before anything reads or extends Synced. */
    const finishFlaggedFold = Effect.gen(function*() {
      const m = yield* SynchronizedRef.get(metadata)
      if (!m.foldInProgress) return
      yield* synced.close
      yield* Ref.set(syncedPrefix, undefined)
      yield* finishFoldFiles(m)
      yield* updateMetadata((m) => ({ ...m, foldInProgress: false }))
    }).pipe(Effect.ensuring(Effect.ignore(synced.open)))

    // -------------------------------------------------------------------------------------------------
    // the seed's steps
    // -------------------------------------------------------------------------------------------------

    /**
     * A roll flagged in metadata (generation + 1, frame 0) whose file steps then failed leaves Synced on the
     * old generation's files: finish it as open would, before anything reads or extends Synced. Otherwise
     * the next pull appends the new generation's frames to the old base (and a push would send pages made
     * on it).
     */
    const finishFlaggedRoll = Effect.gen(function*() {
      if (!(yield* SynchronizedRef.get(metadata)).rollInProgress) return
      yield* synced.close
      yield* Ref.set(syncedPrefix, undefined)
      if (yield* Files.exists(names.syncedNext)) yield* finishRollFiles
      yield* updateMetadata((m) => ({ ...m, rollInProgress: false }))
    }).pipe(Effect.ensuring(Effect.ignore(synced.open)))

    /**
     * Step 1a and 2a: pull every frame the remote has beyond the synced frame into Synced's WAL (written
     * while Synced is closed), following generation rolls and folding the WAL when it outgrows its bound.
     * Returns whether anything arrived.
     */
    const pullRemoteIntoSynced = Effect.gen(function*() {
      yield* finishFlaggedRoll
      yield* finishFlaggedFold
      yield* cutSyncedToSyncedFrame
      let { generation, syncedFrame: frame } = yield* SynchronizedRef.get(metadata)
      let buffer: Array<WalFrame.Frame> = []
      let changed = false

      const flush = Effect.gen(function*() {
        const committed = WalFrame.committedLength(buffer)
        if (committed === 0) return
        const m = yield* SynchronizedRef.get(metadata)
        const local = walFrames(m)
        const prefix = local === 0 ? undefined : yield* prefixAtSyncedFrame
        yield* synced.close
        const state = yield* Files.appendWal(names.synced, local, buffer.slice(0, committed), prefix)
        yield* Ref.set(syncedPrefix, { generation, state })
        yield* step("pull:framesWritten")
        frame += committed
        buffer = buffer.slice(committed)
        const at = frame
        yield* updateMetadata((m) => ({ ...m, generation, syncedFrame: at }))
        yield* step("pull:metadataWritten")
        changed = true
        yield* foldSynced
      })

      const loop = Effect.gen(function*() {
        for (;;) {
          const start = frame + buffer.length + 1
          const result = yield* remote.pull(generation, start, start + SyncProtocol.CLIENT_BATCH_FRAMES)
          if (result._tag === "Frames") {
            if (result.frames.length === 0) {
              return yield* new SyncError.RemoteError({ reason: "Protocol", message: `pull from ${start} answered no frames` })
            }
            for (const f of result.frames) buffer.push({ pgno: f.pgno, commitSize: f.commitSize, page: Uint8Array.from(f.page) })
            yield* Ref.update(traffic, (t) => ({ ...t, received: t.received + result.frames.length * WalFrame.FRAME_SIZE }))
            if (buffer.length >= FLUSH_FRAMES) yield* flush
            continue
          }
          yield* flush
          if (buffer.length > 0) {
            return yield* new SyncError.RemoteError({
              reason: "Protocol",
              message: `generation ${generation} ends inside a transaction at frame ${frame + buffer.length}`
            })
          }
          if (result.generation <= generation) return
          // One generation per answer, like the libSQL client: the base of G+1 is G with all its frames.
          yield* rollSynced(generation + 1)
          generation += 1
          frame = 0
          changed = true
        }
      })
      yield* loop.pipe(Effect.ensuring(Effect.ignore(synced.open)))
      yield* synced.open
      yield* updateMetadata((m) => ({ ...m, lastPullAt: Date.now() }))
      return changed
    })

    /**
     * After step (a): the remote's progress row for this client says which changes it has. That settles a
     * push whose answer was lost (before or after a restart).
     */
    const settleProgress = Effect.gen(function*() {
      const progress = yield* on(synced, ChangeReplay.progress(clientId)).pipe(Effect.mapError(sqlStatementError("Replay")))
      yield* updateMetadata((m) => {
        const { transferredChangeId: _, ...rest } = m
        return { ...rest, lastPushedChangeId: Math.max(progress, m.lastPushedChangeId) }
      })
      return progress
    })

    /**
     * Step 1b and 2b: replay Draft's changes that the remote does not have onto Synced, in one SQLite
     * transaction. Push mode also writes the progress row; pull mode re-records the changes in Synced's
     * change log so that the copy to Draft keeps them pending.
     */
    const replayDraftOntoSynced = (mode: Mode, progress: number) =>
      Effect.gen(function*() {
        const changes = yield* on(draft, ChangeCapture.pending(progress)).pipe(Effect.mapError(sqlStatementError("Capture")))
        if (changes.length === 0) return { replayed: 0, lastChangeId: progress }
        const policy = { resolve, ...(options.transform ? { transform: options.transform } : {}) }
        const result = yield* on(
          synced,
          ChangeReplay.apply(changes, mode === "push" ? { mode: "push", clientId, ...policy } : { mode: "pull", ...policy })
        ).pipe(Effect.mapError(replayError))
        if (mode === "push") yield* Ref.set(pushConflicts, ConflictLog.entries(result))
        yield* step("replay:done")
        return { replayed: changes.length, lastChangeId: result.lastChangeId }
      })

    /**
     * Step 1c: push Synced's frames beyond the synced frame. `Ok` makes them the synced frames; `Conflict`
     * (someone pushed first) cuts them off again. A failure leaves `transferredChangeId` for the next pull
     * to settle.
     */
    const pushSyncedFrames = (lastChangeId: number) =>
      Effect.gen(function*() {
        const m = yield* SynchronizedRef.get(metadata)
        const tail = yield* syncedTail
        const frames = tail.frames
        if (frames.length === 0) return "Nothing" as const
        yield* updateMetadata((m) => ({ ...m, transferredChangeId: lastChangeId }))
        const start = m.syncedFrame + 1
        yield* step("push:beforeSend")
        const send = (from: number, sent: ReadonlyArray<WalFrame.Frame>) =>
          remote.push(m.generation, from, from + sent.length, sent).pipe(
            Effect.ensuring(Ref.update(traffic, (t) => ({ ...t, sent: t.sent + sent.length * WalFrame.FRAME_SIZE })))
          )
        let result = yield* send(start, frames)
        if (
          result._tag === "Conflict" && result.generation === m.generation && result.maxFrameNo < start - 1 &&
          result.maxFrameNo >= (m.foldedFrame ?? 0)
        ) {
          // The server cannot tell us from a pusher whose session it lost after acknowledging frames up to our
          // start, so it asks for its frames from maxFrameNo + 1 again. Those are synced frames we pulled from
          // it: sending them proves which head we build on (identical bytes), and our frames follow. (A fold
          // keeps the last transaction in the WAL for this; frames folded away leave it a conflict.)
          const rewound = yield* Files.readWalFrames(
            names.synced,
            start - 1 - result.maxFrameNo,
            result.maxFrameNo - (m.foldedFrame ?? 0)
          )
          result = yield* send(result.maxFrameNo + 1, [...rewound, ...frames])
        }
        yield* step("push:answered")
        if (result._tag === "Ok") {
          if (tail.state !== undefined) yield* Ref.set(syncedPrefix, { generation: m.generation, state: tail.state })
          yield* updateMetadata((m) => {
            const { transferredChangeId: _, ...rest } = m
            return { ...rest, syncedFrame: m.syncedFrame + frames.length, lastPushedChangeId: lastChangeId, lastPushAt: Date.now() }
          })
          const decided = yield* Ref.getAndSet(pushConflicts, [])
          if (decided.length > 0) {
            const at = Date.now()
            const entries = decided.map((entry) => ({ ...entry, at }))
            yield* conflictLog.append(entries).pipe(
              Effect.catchAll((error) => Effect.logWarning("cannot write the conflict log", error))
            )
            if (options.onConflicts) yield* options.onConflicts(entries)
          }
          // Acknowledged changes are not needed in Draft's log any more (ids are never reused).
          yield* on(draft, ChangeCapture.prune(lastChangeId)).pipe(
            Effect.catchAll((error) => Effect.logWarning("cannot prune acknowledged changes", error))
          )
          return "Pushed" as const
        }
        yield* updateMetadata((m) => {
          const { transferredChangeId: _, ...rest } = m
          return rest
        })
        yield* resetSyncedWal
        return "Conflict" as const
      })

    /** Moves reads to `copy`, after every read in flight on the other one has finished. */
    const switchReads = (copy: "draft" | "synced") => exclusively(readsOpen, readGate, READ_PERMITS, Ref.set(active, copy))

    /**
     * Step 2c: make Draft equal to Synced (the remote's frames + the pending changes just replayed) by
     * rewriting only the pages where they can differ (`DraftPages.copyPages`), taken from Synced, as one
     * transaction in a fresh WAL `<path>-draft-wal.next`: fsynced, flagged in metadata, then renamed over
     * Draft's WAL while Draft is closed, so that SQLite's WAL recovery makes the switch atomic. Reads go to
     * Synced meanwhile; the caller holds every write permit. Its cost follows the changed pages, not the
     * database size.
     */
    const copySyncedOverDraft = Effect.gen(function*() {
      const m = yield* SynchronizedRef.get(metadata)
      const prefix = yield* prefixAtSyncedFrame
      const synced_ = yield* Files.readWalFrames(names.synced, walFrames(m))
      const replay = yield* Files.readWalTail(names.synced, prefix)
      const all = [...synced_, ...replay.frames]
      const targetPages = all.length > 0
        ? all[all.length - 1].commitSize
        : yield* Files.attempt(names.synced, "cannot read", (fs) => PageCopy.headerPages(fs, names.synced))
      const tracking = m.draftPages ?? DraftPages.fresh(syncedFileAt(m))
      const pages = DraftPages.copyPages(tracking, PageCopy.pageNumbers(all), targetPages)
      const frames = yield* PageCopy.pagesAsTransaction(names.synced, all, pages, targetPages)
      yield* PageCopy.writeWalFile(draftWalNext, frames)
      yield* step("copy:walWritten")
      const previous = { draftBase: m.draftBase, draftPages: m.draftPages }
      const at = { generation: m.generation, frame: m.syncedFrame }
      yield* updateMetadata((m) => ({
        ...m,
        copyInProgress: true,
        activeCopy: "synced",
        draftBase: at,
        draftPages: DraftPages.copied(m.draftPages ?? tracking, at, frames.length, PageCopy.pageNumbers(replay.frames))
      }))
      yield* step("copy:flagged")
      yield* switchReads("synced")
      const swap = Effect.gen(function*() {
        yield* draft.close
        yield* step("copy:draftClosed")
        yield* finishCopyFiles
        yield* step("copy:renamed")
        yield* updateMetadata((m) => ({ ...m, copyInProgress: false, activeCopy: "draft" }))
      })
      yield* swap.pipe(
        Effect.tapError(() =>
          Effect.ignore(Effect.gen(function*() {
            if (!(yield* Files.exists(draftWalNext))) {
              // Renamed (the failure came after): Draft has the copy, as the metadata says.
              yield* updateMetadata((m) => ({ ...m, copyInProgress: false, activeCopy: "draft" }))
              return
            }
            // Not renamed: the old Draft and its WAL are whole (closing keeps the WAL); forget the copy.
            yield* Files.remove(draftWalNext)
            yield* updateMetadata((m) => {
              const { draftBase: _, draftPages: __, ...rest } = m
              return {
                ...rest,
                copyInProgress: false,
                activeCopy: "draft",
                ...(previous.draftBase ? { draftBase: previous.draftBase } : {}),
                ...(previous.draftPages ? { draftPages: previous.draftPages } : {})
              }
            })
          }))
        ),
        Effect.exit,
        // Whatever happened, Draft is opened again (capture reinstalled) before reads move back to it.
        Effect.flatMap((exit) => Effect.zipRight(openDraft, exit)),
        Effect.ensuring(Effect.ignore(draft.open)),
        Effect.ensuring(switchReads("draft"))
      )
      return frames.length
    }).pipe(Effect.tapError(() => Effect.ignore(Files.remove(draftWalNext))))

    /** Step 2d: cut Synced's WAL back to the synced frame, dropping the frames of the local replay. */
    const resetSyncedWal = Effect.gen(function*() {
      const m = yield* SynchronizedRef.get(metadata)
      yield* step("reset:before")
      yield* synced.withClosed(Files.truncateWal(names.synced, walFrames(m)))
    })

    // -------------------------------------------------------------------------------------------------
    // operations
    // -------------------------------------------------------------------------------------------------

    const pushRounds = Effect.gen(function*() {
      for (let round = 1; round <= maxRounds; round++) {
        yield* pullRemoteIntoSynced /* 1a */
        const progress = yield* settleProgress
        const replay = yield* replayDraftOntoSynced("push", progress) /* 1b */
        if (replay.replayed === 0) return false
        const outcome = yield* pushSyncedFrames(replay.lastChangeId) /* 1c */
        if (outcome !== "Conflict") {
          yield* foldSynced
          yield* maybeFoldDraft
          return true
        }
        const delay = Math.min(2000, Duration.toMillis(backoff) * 2 ** (round - 1)) * (0.5 + Math.random())
        yield* Effect.sleep(Duration.millis(delay))
      }
      return yield* new SyncError.ConflictError({
        reason: "RetriesExhausted",
        message: `push conflicted ${maxRounds} times in a row; local changes stay pending`,
        rounds: maxRounds
      })
    }).pipe(Effect.onError(() => Effect.ignore(resetSyncedWal)))

    const pullSteps = Effect.gen(function*() {
      const arrived = yield* pullRemoteIntoSynced /* 2a */
      const progress = yield* settleProgress
      const m = yield* SynchronizedRef.get(metadata)
      if (
        m.draftBase !== undefined && m.draftBase.generation === m.generation && m.draftBase.frame === m.syncedFrame
      ) {
        yield* foldSynced
        yield* maybeFoldDraft
        return arrived
      }
      yield* exclusively(writesOpen, writeGate, WRITE_PERMITS,
        Effect.gen(function*() {
          const started = Date.now()
          yield* finishDraftFold
          yield* replayDraftOntoSynced("pull", progress) /* 2b */
          yield* copySyncedOverDraft /* 2c */
          // Draft's file catches up with the copy right away, so the next copy again writes only what
          // changed after this one.
          yield* foldDraftUnlocked(true)
          yield* Ref.set(lastWriteBlockedMs, Option.some(Date.now() - started))
        })
      ).pipe(Effect.onError(() => Effect.ignore(resetSyncedWal)))
      yield* resetSyncedWal /* 2d */
      yield* foldSynced
      return true
    })

    const push: Effect.Effect<boolean, SyncError.SyncError> = syncLock.withPermits(1)(pushRounds).pipe(
      Effect.withScheduler(breathingScheduler),
      withFiles
    )
    const pull: Effect.Effect<boolean, SyncError.SyncError> = syncLock.withPermits(1)(pullSteps).pipe(
      Effect.withScheduler(breathingScheduler),
      withFiles
    )
    const sync: Effect.Effect<boolean, SyncError.SyncError> = syncLock.withPermits(1)(
      Effect.zipRight(pushRounds, pullSteps)
    ).pipe(Effect.withScheduler(breathingScheduler), withFiles)

    const execute = (sql: string, params: ReadonlyArray<unknown> = []): Effect.Effect<ExecuteResult, SyncError.SqlStatementError> =>
      writing(on(draft, ChangeCapture.execute(sql, params))).pipe(
        Effect.map((r): ExecuteResult => ({ changes: r.changes, lastInsertRowid: r.lastInsertRowid })),
        Effect.mapError(sqlStatementError("Statement", sql)),
        Effect.tap(() => maybeFoldDraft)
      )

    const query = <Row extends object = Record<string, unknown>>(
      sql: string,
      params: ReadonlyArray<unknown> = []
    ): Effect.Effect<ReadonlyArray<Row>, SyncError.SqlStatementError> =>
      isReadStatement(sql)
        ? reading(
          Effect.flatMap(Ref.get(active), (which) =>
            Effect.flatMap((which === "draft" ? draft : synced).client, (client) =>
              client.unsafe<Row>(sql, params as Array<any>)))
        ).pipe(Effect.mapError(sqlStatementError("Statement", sql)))
        : Effect.fail(
          new SyncError.SqlStatementError({
            reason: "Statement",
            message: "query runs reads only (a write here would bypass change capture); use execute",
            sql
          })
        )

    /** `execute` that also returns the statement's rows (`INSERT ... RETURNING`): SyncDatabase.layerSqlClient. */
    const executeRows = (
      sql: string,
      params: ReadonlyArray<unknown> = []
    ): Effect.Effect<ChangeCapture.ExecuteResult, SyncError.SqlStatementError> =>
      writing(on(draft, ChangeCapture.execute(sql, params))).pipe(
        Effect.mapError(sqlStatementError("Statement", sql)),
        Effect.tap(() => maybeFoldDraft)
      )

    /**
     * Runs `effect` with Draft's SqlClient as ONE capture transaction (one unit of replay), holding one write
     * permit throughout, so a pull's copy step waits for it and it never spans a replaced Draft.
     */
    const transaction = <A, E, R>(
      effect: Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | SqlError | ChangeCapture.CaptureError, Exclude<R, SqlClient.SqlClient>> =>
      writing(on(draft, ChangeCapture.transaction(effect))).pipe(Effect.tap(() => maybeFoldDraft))

    const stats: Effect.Effect<Stats, SyncError.SyncError> = Effect.gen(function*() {
      const m = yield* SynchronizedRef.get(metadata)
      const pendingChanges = yield* reading(
        Effect.flatMap(Ref.get(active), (which) =>
          on(which === "draft" ? draft : synced, ChangeCapture.countPending(m.lastPushedChangeId)))
      ).pipe(Effect.mapError(sqlStatementError("Capture")))
      const t = yield* Ref.get(traffic)
      return {
        clientId,
        pendingChanges,
        generation: m.generation,
        syncedFrame: m.syncedFrame,
        lastPushAt: Option.map(Option.fromNullable(m.lastPushAt), (ms) => new Date(ms)),
        lastPullAt: Option.map(Option.fromNullable(m.lastPullAt), (ms) => new Date(ms)),
        bytesSent: t.sent,
        bytesReceived: t.received,
        draftWalBytes: yield* Files.fileSize(Files.walPath(names.draft)),
        syncedWalBytes: yield* Files.fileSize(Files.walPath(names.synced)),
        activeCopy: yield* Ref.get(active),
        lastWriteBlockedMs: yield* Ref.get(lastWriteBlockedMs)
      }
    })

    return {
      clientId,
      conflicts: conflictLog.read,
      execute,
      executeRows,
      transaction,
      query,
      push,
      pull,
      sync,
      stats
    }
  })

/** @internal */
export type Engine = Effect.Effect.Success<ReturnType<typeof make>>
