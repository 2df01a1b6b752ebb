/**
 * The client engine: push (steps 1a–c) and pull (2a–d) over the Draft and Synced copies, bootstrap,
 * generation rolls and recovery on open. This file says in which order the steps run; each step is a
 * function of the engine's state in a file of its own (docs/architecture.md has the table).
 *
 * Invariants (every step keeps them; recovery on open restores them after a crash):
 * 1. At rest, Synced = generation `generation` at frame `foldedFrame` (its database file; after a fold or a
 *    roll cut short, ahead of it only on pages its WAL still holds, which SQLite reads first) + exactly the
 *    remote's frames `foldedFrame+1..syncedFrame` (its WAL, at most `maxWalFrames` of them after a fold).
 *    Frames beyond `syncedFrame` exist only inside a push or a pull and are cut off by the next step (a) or
 *    on open.
 * 2. Every change in Draft's change log with an id above the remote's progress row for this client
 *    (`_sync_progress`, read from Synced after a pull) is not yet on the remote; every one at or below it is,
 *    exactly once: the progress row is written in the same remote transaction as the replayed changes.
 * 3. Draft's file equals Synced at `draftPages.fileBase` except on `draftPages.filePages`; a pull changes
 *    Draft only by a complete, fsynced copy transaction (`<path>-draft-wal.next`, renamed over Draft's WAL);
 *    metadata says when a copy or a fold is under way, and open finishes it.
 * 4. Writes never reach Draft while it is being replaced (the copy holds every write permit); reads never
 *    see a half-replaced Draft (they are served by Synced meanwhile, which holds the same rows).
 * 5. Push, pull and sync never run two at a time; Synced is only touched by them (and by reads during 2c).
 * 6. Local change ids only grow, across copies and restarts, so that (2) can compare them.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scheduler from "effect/Scheduler"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as Fs from "node:fs"
import * as ConflictPolicy from "../../ConflictPolicy.js"
import * as LocalCopies from "../../LocalCopies.js"
import * as SyncError from "../../SyncError.js"
import * as SyncFiles from "../../SyncFiles.js"
import * as SyncMetadata from "../../SyncMetadata.js"
import * as SyncRemote from "../../SyncRemote.js"
import { bootstrap, type EarlySnapshot, headSnapshot, unfinished } from "./bootstrap.js"
import * as ConflictLog from "./conflictLog.js"
import * as Copy from "./copy.js"
import * as Fold from "./fold.js"
import * as Follow from "./follow.js"
import * as Changes from "../live/changes.js"
import * as Gates from "./gates.js"
import * as Local from "./local.js"
import * as Pull from "./pull.js"
import * as Push from "./push.js"
import * as LocalFiles from "./localFiles.js"
import { recover } from "./recovery.js"
import { pullFollowingRemote, rebootstrapSynced } from "./rebootstrap.js"
import * as RemoteBinding from "./remoteBinding.js"
import * as Replay from "./replay.js"
import { type EngineOptions, type OfferedAnswer, type Opening, payOwedSyncs, persistStaged, type State, type SyncedPrefix, updateMetadata } from "./state.js"
import { resetSyncedWal } from "./syncedWal.js"

export { bootstrapSteps, type EngineOptions, type Step, steps } from "./state.js"

/**
 * better-sqlite3 runs every statement synchronously, and Effect's default scheduler goes back to the event
 * loop only after thousands of yields: a replay of thousands of changes would hold the whole process (reads,
 * writes, an HTTP server) for seconds. Push and pull run on this scheduler instead, which returns to the
 * event loop (setImmediate) each time the fiber yields (every 2048 operations).
 */
const breathingScheduler = Scheduler.make((task) => {
  setImmediate(task)
})

/** Push: rounds of 1a, 1b, 1c until the remote acknowledges (or nothing is pending); a conflict starts over. */
const pushRounds = Effect.fn("Engine.push")(
  function*(state: State) {
    // At the remote's head (as far as this replica knows), the push goes first, without the pull before it.
    const atHead = yield* Push.pushAtHead(state)
    if (atHead === "Pushed") {
      yield* Fold.foldSynced(state)
      yield* Fold.foldDraftIfIdle(state)
      return true
    }
    for (let round = 1; round <= state.maxRounds; round++) {
      const arrived = yield* pullFollowingRemote(state, Pull.pullRemoteIntoSynced) /* 1a */
      const progress = yield* Pull.settleProgress(state)
      const replay = yield* Replay.replayDraftOntoSynced(state, "push", progress) /* 1b */
      // Nothing to push: what step (a) staged is written now (a push ends with the metadata file current).
      if (replay.replayed === 0) return yield* Effect.as(persistStaged(state), false)
      const outcome = yield* Push.pushSyncedFrames(state, replay) /* 1c */
      if (outcome !== "Conflict") {
        // The pull found the replica at the head: a push at the head would have landed (push.ts `atHeadCount`).
        if (!arrived) yield* Ref.set(state.atHeadMissed, false)
        yield* Fold.foldSynced(state)
        yield* Fold.foldDraftIfIdle(state)
        return true
      }
      yield* Push.backoff(state, round)
    }
    return yield* Push.retriesExhausted(state)
  },
  (effect, state) => Effect.onError(effect, () => Effect.ignore(resetSyncedWal(state)))
)

/** Pull: 2a, then (unless Draft is already a copy of Synced as it stands) 2b, 2c, 2d; then the folds. */
const pullSteps = Effect.fn("Engine.pull")(function*(state: State) {
  const arrived = yield* pullFollowingRemote(state, Pull.pullRemoteIntoSynced) /* 2a */
  const progress = yield* Pull.settleProgress(state)
  if (yield* Copy.draftIsCurrent(state)) {
    // No copy to carry what step (a) staged: written now.
    yield* persistStaged(state)
    yield* Fold.foldSynced(state)
    yield* Fold.foldDraftIfIdle(state)
    return arrived
  }
  if (state.options.followOnSynced === true && (yield* Follow.leaveDraftBehind(state, progress))) {
    // Reads are on Synced; Draft's copy waits for a pause, the next write or the close (follow.ts). What step (a)
    // staged stays staged: the next metadata write (that copy's flag, a push's acknowledgement, a fold of
    // Synced, the close) takes it; a crash before that only makes recovery cut the frames off again.
    yield* Fold.foldSynced(state)
    return arrived
  }
  yield* copySteps(state, progress)
  return true
})

/** 2b, 2c (reactive queries are told by its swap), 2d, then the folds. */
const copySteps = (state: State, progress: number) =>
  Effect.gen(function*() {
    yield* Copy.replayAndCopy(state, progress).pipe(
      Effect.onError(() => Effect.ignore(resetSyncedWal(state))),
      // Reads are back on Draft unless the copy failed before they left Synced.
      Effect.ensuring(Effect.sync(() => {
        state.following.behind = state.following.behind && state.gates.active.current === "synced"
      }))
    )
    yield* resetSyncedWal(state) /* 2d */
    yield* Fold.foldSynced(state)
    yield* Fold.foldDraftIfIdle(state)
  })

/**
 * Draft brought up to Synced after pulls left it behind (follow.ts), under the sync lock. A failure leaves
 * it behind, reads on Synced: the next write, pull or close tries again.
 */
const catchUp = (state: State): Effect.Effect<void, SyncError.SyncError> =>
  exclusive(
    state,
    Effect.suspend(() =>
      state.following.behind
        ? Effect.flatMap(SynchronizedRef.get(state.metadata), (m) => copySteps(state, m.lastPushedChangeId))
        : Effect.void
    ).pipe(Effect.withSpan("Engine.catchUp"))
  )

/**
 * One of push, pull and sync at a time, on the breathing scheduler, with the file service the engine was
 * built with (tests inject faults through it) whatever context the caller runs in.
 */
const exclusive = <A>(state: State, effect: Effect.Effect<A, SyncError.SyncError>): Effect.Effect<A, SyncError.SyncError> => {
  const locked = state.syncLock.withPermits(1)(effect).pipe(Effect.withScheduler(breathingScheduler))
  return Option.isSome(state.fileService)
    ? Effect.provideService(locked, SyncFiles.SyncFiles, state.fileService.value)
    : locked
}

/** The engine's state over the opened local database, whose metadata is `initial`. */
const makeState = (opening: Opening, initial: SyncMetadata.Metadata) =>
  Effect.gen(function*() {
    const gates = yield* Gates.make
    const changes = yield* Changes.make
    const state: State = {
      ...opening,
      draft: yield* LocalCopies.Draft,
      synced: Follow.gatedSynced(yield* LocalCopies.Synced, gates, changes),
      fileService: yield* Effect.serviceOption(SyncFiles.SyncFiles),
      metadata: yield* SynchronizedRef.make(initial),
      staged: yield* Ref.make(false),
      clientId: initial.clientId,
      step: opening.options.onStep ?? (() => Effect.void),
      maxRounds: opening.options.maxPushRounds ?? 12,
      backoff: Duration.decode(opening.options.conflictBackoff ?? Duration.millis(20)),
      resolve: opening.options.conflicts ?? ConflictPolicy.resolver("lastPushWins"),
      conflictLog: ConflictLog.make(`${opening.options.path}-conflicts`),
      pushConflicts: yield* Ref.make<ReadonlyArray<ConflictPolicy.Entry>>([]),
      syncedPrefix: yield* Ref.make<SyncedPrefix | undefined>(undefined),
      gates,
      syncLock: yield* Effect.makeSemaphore(1),
      lastWriteBlockedMs: yield* Ref.make(Option.none<number>()),
      readVerdicts: new Map(),
      writesSinceWalCheck: { count: 0 },
      changes,
      pushIdentity: yield* Ref.make<boolean | undefined>(undefined),
      atHeadMissed: yield* Ref.make(false),
      offeredAnswer: { current: undefined },
      owedSyncs: new Set(),
      syncedPageIndex: { current: undefined },
      maxWalFrames: Math.max(1, opening.options.maxWalFrames ?? 1000),
      following: { behind: false, wanting: 0, catchUp: Effect.void }
    }
    state.following.catchUp = catchUp(state)
    return state
  })

/**
 * Both copies closed, then the clean close recorded. The record is written and fsynced while the copies
 * close, and put in place once they are closed (a crash before that leaves the record that says in use,
 * which only makes the next open check in full).
 */
const closeCleanly = (state: State) =>
  Effect.zipRight(
    Effect.catchAll(state.following.catchUp, (error) =>
      Effect.logWarning("cannot bring the local copy up to the remote's state before closing", error)),
    recordCleanClose(state)
  )

const recordCleanClose = (state: State) =>
  SynchronizedRef.updateEffect(state.metadata, (m) =>
    Effect.gen(function*() {
      const next: SyncMetadata.Metadata = { ...m, inUse: false }
      const [prepared] = yield* Effect.all([
        // First: its fsync is in flight while the copies close. The record may count on frames whose
        // fsync is owed: those come first.
        Effect.either(Effect.zipRight(payOwedSyncs(state), state.metadataStore.prepare(next, { renameDurable: false }))),
        Effect.all([state.draft.close, state.synced.close])
      ], { concurrency: 2 })
      if (Either.isLeft(prepared)) {
        yield* Effect.logWarning("cannot record a clean close", prepared.left)
        return m
      }
      return yield* prepared.right.commit.pipe(
        Effect.zipRight(Ref.set(state.staged, false)),
        Effect.as(next),
        Effect.catchAll((error) => Effect.as(Effect.logWarning("cannot record a clean close", error), m))
      )
    }))

/**
 * A brand-new local database's head snapshot, asked for before the open takes the owner lock: when
 * `<path>-info` does not exist (the open will most likely bootstrap), the request starts now, in a fiber of
 * the caller's scope, so that the download overlaps the open's work before the bootstrap needs the bytes
 * (the owner lock, the copies' services, the metadata's read, the removal of leftovers). Nothing local is
 * read but that file's existence; only a bootstrap, decided under the lock, uses the answer, and any other
 * open interrupts the request.
 */
export const askEarly = (options: Pick<EngineOptions, "path" | "bootstrap">, remote: SyncRemote.Service) =>
  Effect.suspend(() =>
    (options.bootstrap ?? "head") !== "head" || Fs.existsSync(LocalCopies.files(options.path).info)
      ? Effect.succeed(undefined)
      : Effect.forkScoped(headSnapshot(remote))
  )

/** The answer `askEarly` asked for, if it did. */
export type Early = Effect.Effect.Success<ReturnType<typeof askEarly>>

/** Opens the local database: bootstrap when it is brand-new, recovery otherwise; then the engine's state. */
const open = (options: EngineOptions, early: Early) =>
  Effect.gen(function*() {
    const opening: Opening = {
      options,
      paths: LocalCopies.files(options.path),
      remote: yield* SyncRemote.SyncRemote,
      metadataStore: yield* SyncMetadata.SyncMetadata,
      traffic: yield* Ref.make({ sent: 0, received: 0 })
    }
    const stored = yield* opening.metadataStore.read
    // Copies without metadata: a bootstrap killed before its metadata write starts again (bootstrap removes
    // them); anything else may hold changes not pushed yet.
    if (
      Option.isNone(stored) && options.startOver !== true && (yield* LocalFiles.anyCopyExists(opening.paths)) &&
      !(yield* unfinished(opening.paths))
    ) {
      return yield* LocalFiles.metadataLost(opening.paths)
    }
    // Another server database's URL is refused before anything is touched.
    const url = Option.isSome(stored)
      ? yield* RemoteBinding.urlDecision(stored.value.remoteUrl, opening.remote.url, options.allowUrlChange === true)
      : "keep"
    const { initial, renameDurable } = yield* Option.match(stored, {
      onNone: () =>
        Effect.map(
          bootstrap(opening, early === undefined ? undefined : Fiber.join(early) satisfies EarlySnapshot),
          ({ metadata, renameDurable }) => ({ initial: metadata, renameDurable })
        ),
      onSome: (m) =>
        Effect.zipRight(
          early === undefined ? Effect.void : Fiber.interruptFork(early),
          Effect.map(
            recover(opening, url === "record" && opening.remote.url !== undefined ? { ...m, remoteUrl: opening.remote.url } : m),
            (initial) => ({ initial, renameDurable: Effect.void })
          )
        )
    })
    // Waited for on the way out whatever happens: it closes the descriptor of the fsync in flight.
    return yield* Effect.onError(ready(options, opening, stored, initial, renameDurable), () => Effect.ignore(renameDurable))
  })

/** The rest of `open`, from the metadata on: the copies opened, and what the open brings. */
const ready = (
  options: EngineOptions,
  opening: Opening,
  stored: Option.Option<SyncMetadata.Metadata>,
  initial: SyncMetadata.Metadata,
  renameDurable: Effect.Effect<void, SyncError.StorageError>
) =>
  Effect.gen(function*() {
    const state = yield* makeState(opening, initial)
    // Checked before either copy is opened: opening a missing file would create an empty database.
    // A database bootstrapped just now was written and checked (SQLite's check of the base) by this open.
    if (Option.isSome(stored)) yield* LocalFiles.repair(state, yield* LocalFiles.inspect(state.paths, initial.inUse !== false))
    yield* state.synced.open
    yield* Copy.openDraft(state)
    // Set while open; cleared once both copies are closed. Found set on open: the full check above. The
    // clearing's rename need not survive a crash: the record it replaces (set, with every durable fact;
    // staged facts may be lost) only makes the next open check in full.
    if (initial.inUse !== true) yield* updateMetadata(state, (m) => ({ ...m, inUse: true }))
    yield* Effect.addFinalizer(() => closeCleanly(state))
    // A Draft fold the metadata flags is finished; a Draft WAL that outgrew its bound is folded.
    yield* Fold.foldDraft(state, false)
    // A bootstrap's metadata rename durable before the open goes on (to a pull) or returns.
    yield* Effect.mapError(renameDurable, (cause) =>
      new SyncError.BootstrapError({
        reason: "Storage",
        message: `cannot create a local database from the remote: ${cause.message}`,
        cause
      }))
    if ((options.bootstrap ?? "head") === "head" && initial.lastPullAt === undefined) {
      // A new local database opens with the remote's current state: the frames after its base come now.
      // If that fails the first time the open fails (its files stay, with the base); a later open of a
      // database that never pulled tries again but opens whatever happens (it may be offline).
      const catchUp = exclusive(state, pullSteps(state)).pipe(
        Effect.mapError((cause) =>
          new SyncError.BootstrapError({
            reason: cause._tag === "StorageError" ? "Storage" : "Remote",
            message: `cannot bring the remote's current state: ${cause.message}`,
            cause
          })
        )
      )
      yield* Option.isNone(stored)
        ? catchUp
        : Effect.catchAll(catchUp, (error) => Effect.logWarning("cannot bring the remote's state on open", error))
    }
    return state
  })

/** @internal */
export const make = (options: EngineOptions, early?: Early) =>
  Effect.map(open(options, early), (state) => ({
    clientId: state.clientId,
    conflicts: state.conflictLog.read,
    execute: Local.execute(state),
    executeRows: Local.executeRows(state),
    transaction: Local.transaction(state),
    query: Local.query(state),
    classify: Local.classify(state),
    push: exclusive(state, pushRounds(state)),
    pull: exclusive(state, pullSteps(state)),
    sync: exclusive(state, Effect.zipRight(pushRounds(state), pullSteps(state))),
    rebootstrap: exclusive(state, Effect.zipRight(rebootstrapSynced(state, "Requested"), pullSteps(state))),
    stats: Local.stats(state),
    pendingChanges: Local.pendingChanges(state),
    changes: state.changes,
    watch: Changes.watch(state.changes, state.gates, state.draft),
    tablesRead: Local.tablesRead(state),
    offer: (answer: OfferedAnswer) => Pull.offer(state, answer),
    behind: Effect.sync(() => state.following.behind),
    catchUp: state.following.catchUp.pipe(
      Effect.catchAll((error) => Effect.logWarning("cannot bring the local copy up to the remote's state", error))
    ),
    position: Effect.map(SynchronizedRef.get(state.metadata), (m) => ({ generation: m.generation, frame: m.syncedFrame }))
  }))

/** @internal */
export type Engine = Effect.Effect.Success<ReturnType<typeof make>>
