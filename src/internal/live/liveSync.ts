/**
 * Live sync: for the layer's life, a waiting pull stays open at the remote's head (its answer means a
 * commit landed: pull), local writes are pushed shortly after they commit (a burst is one sync), and a
 * remote that cannot be reached is tried again with capped exponential backoff. A remote without waiting
 * pulls is polled instead. Two fibers: the watcher (waiting pulls) and the worker (one sync or pull at a
 * time, on requests the watcher and the writes make).
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type * as SyncError from "../../SyncError.js"
import * as SyncProtocol from "../../SyncProtocol.js"
import type { LiveState } from "../../SyncEvents.js"
import type * as SyncRemote from "../../SyncRemote.js"
import type * as Changes from "./changes.js"

/** @internal */
export interface Options {
  /** Seconds a waiting pull stays open (cut to the remote's `maxWaitSeconds`). Default 25. */
  readonly waitSeconds?: number | undefined
  /**
   * How soon after a local write it is pushed; writes meanwhile go with it, and so do the writes made while
   * a push runs (the next one takes them all). Default 2 ms.
   */
  readonly pushDelay?: Duration.DurationInput | undefined
  /** How often a remote without waiting pulls is asked for changes. Default 2 seconds. */
  readonly pollInterval?: Duration.DurationInput | undefined
  /** The longest pause between attempts while the remote cannot be reached. Default 10 seconds. */
  readonly maxBackoff?: Duration.DurationInput | undefined
  /**
   * While the replica reads the remote's changes from its synced copy (nothing of its own pending), how
   * long after its last pull the draft copy is brought up to date in the background, so that a write made
   * later need not wait for that. Default 100 ms: a stream of remote changes is copied once, when it pauses.
   */
  readonly catchUpDelay?: Duration.DurationInput | undefined
}

/** What live sync needs of the database. */
export interface Target {
  /** The service's push and pull (with events and status). */
  readonly push: Effect.Effect<boolean, SyncError.SyncError>
  readonly pull: Effect.Effect<boolean, SyncError.SyncError>
  /** Bytes received from the remote so far (a push that brought other replicas' frames is followed by a pull). */
  readonly received: Effect.Effect<number | undefined>
  /** Where the synced copy stands on the remote's history. */
  readonly position: Effect.Effect<{ readonly generation: number; readonly frame: number }>
  readonly tracker: Changes.Tracker
  /**
   * Hands the next push or pull a waiting pull's answer from the synced frame, used in place of its first
   * requests when it settles the check of the remote (else dropped).
   */
  readonly offer: (answer: {
    readonly generation: number
    readonly start: number
    readonly end: number
    readonly result: SyncRemote.PullResult
  }) => Effect.Effect<void>
  /** The remote, observed (its answers set `online`). */
  readonly remote: SyncRemote.Service
  /** Records the live state in `status` and tells `events` when it changes. */
  readonly report: (state: LiveState) => Effect.Effect<void>
  /** Whether pulls left the draft copy behind the synced one (reads on Synced), and the copy that ends that. */
  readonly behind: Effect.Effect<boolean>
  readonly catchUp: Effect.Effect<void>
}

/** The pause before attempt `n` (from 0) after failures: 250 ms doubling, capped. */
export const backoffMs = (attempt: number, capMs: number): number => Math.min(capMs, 250 * 2 ** Math.min(attempt, 20))

/**
 * Whether the answer to a pull of the frame after `frame` says the remote moved on: frames came, or its
 * head is in another generation or past `frame`.
 */
export const moved = (result: SyncRemote.PullResult, generation: number, frame: number): boolean =>
  result._tag === "Frames" || result.generation !== generation || result.maxFrameNo !== frame

/**
 * The same for a waiting pull from the synced frame `frame` itself (`after`): frames after it came, or the
 * remote no longer has it where this replica does (a pull says why).
 */
export const movedFromHeld = (result: SyncRemote.PullResult): boolean =>
  result._tag === "CheckpointNeeded" || result.frames.length > 1

/** Failures worth trying again: the remote was unreachable, busy, or another replica pushed first. */
const transient = (error: SyncError.SyncError) => error._tag === "NetworkError" || error._tag === "ConflictError"

export const run = (target: Target, options: Options = {}): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const pushDelay = Duration.decode(options.pushDelay ?? Duration.millis(2))
    const pollInterval = Duration.decode(options.pollInterval ?? Duration.seconds(2))
    const capMs = Duration.toMillis(options.maxBackoff ?? Duration.seconds(10))
    const waitSeconds = options.waitSeconds ?? 25
    const catchUpDelay = Duration.decode(options.catchUpDelay ?? Duration.millis(100))

    // Requests to the worker: a sync (local writes to push) and/or a pull; one wake-up covers many.
    const wants = { sync: true, pull: false }
    const wake = yield* Queue.sliding<void>(1)
    const request = (what: "sync" | "pull") => {
      wants[what] = true
      wake.unsafeOffer(undefined)
    }
    // Pulls the watcher asked for (`requested`) and how many of them a finished step covered (`served`);
    // `progress` wakes the watcher when that or the synced position moved.
    let requested = 0
    let served = 0
    const progress = yield* Queue.sliding<void>(1)
    const progressed = () => progress.unsafeOffer(undefined)
    // Where the watcher stood when it asked for the pull: a push of ours that moved the position meanwhile
    // was the commit its waiting pull heard (see the worker).
    let pullFrom: { readonly generation: number; readonly frame: number } | undefined
    // The waiting pull's answer that asked for the pull, if it can serve as the pull's first requests.
    let answer: Parameters<Target["offer"]>[0] | undefined

    const writes = yield* Queue.sliding<void>(1)
    const listener = () => writes.unsafeOffer(undefined)
    yield* Effect.acquireRelease(
      Effect.sync(() => target.tracker.writeListeners.add(listener)),
      () => Effect.sync(() => target.tracker.writeListeners.delete(listener))
    )
    yield* Effect.acquireRelease(
      Effect.sync(() => target.tracker.positionListeners.add(progressed)),
      () => Effect.sync(() => target.tracker.positionListeners.delete(progressed))
    )
    // The first write of a burst starts the clock; every write until it runs out goes with the same sync.
    const pusher = Effect.forever(
      Effect.zipRight(Queue.take(writes), Effect.zipRight(Effect.sleep(pushDelay), Effect.sync(() => request("sync"))))
    )

    // A push whose frames are all this replica's leaves the local copy as it is: no pull after it (the pull
    // would only copy the same rows again). Frames of other replicas it met (a conflict, or a push before
    // ours) are not in the local copy yet: pulled at once, since the watcher's position is past them now.
    const pushThenPull = Effect.gen(function*() {
      const before = yield* target.received
      const pushed = yield* target.push
      const after = yield* target.received
      if (before === undefined || after === undefined || after > before) return (yield* target.pull) || pushed
      return pushed
    })

    // A sync (a push of local writes) under way, and the waiting pull to abandon when one starts: the
    // commit of our own push would wake it with frames this replica already holds (work for the remote and
    // for us), so it is given up (the request aborted) and asked again from where the push leaves us, which
    // hears at once of anything another replica committed meanwhile.
    let syncing = false
    let waiting: Deferred.Deferred<void> | undefined

    let failures = 0
    const worker = Effect.forever(Effect.gen(function*() {
      // Pulls left the draft copy behind: brought up to date once they pause (unless a write did it first).
      if (yield* target.behind) {
        const woken = yield* Effect.timeout(Queue.take(wake), catchUpDelay).pipe(Effect.option)
        if (Option.isNone(woken)) return yield* Effect.uninterruptible(target.catchUp)
      } else {
        yield* Queue.take(wake)
      }
      while (wants.sync || wants.pull) {
        const op = wants.sync ? "sync" : "pull"
        const covers = requested
        const done = Effect.sync(() => {
          served = Math.max(served, covers)
          progressed()
        })
        const from = pullFrom
        const offered = answer
        wants.sync = false
        wants.pull = false
        pullFrom = undefined
        answer = undefined
        if (op === "pull" && from !== undefined) {
          // The position moved since the watcher asked: our own push landed (its commit woke the watcher) and
          // took in every frame before it. Nothing to pull; the watcher asks again from the new position and
          // hears at once of anything beyond it.
          const now = yield* target.position
          if (now.generation !== from.generation || now.frame !== from.frame) {
            yield* done
            continue
          }
        }
        yield* target.report("syncing")
        // Whichever runs (a push's step (a) too) uses it if it still applies.
        if (offered !== undefined) yield* target.offer(offered)
        if (op === "sync") {
          syncing = true
          if (waiting !== undefined) Deferred.unsafeDone(waiting, Exit.void)
        }
        // A sync that started finishes even when the scope closes (like autoSync's).
        const outcome = yield* Effect.either(Effect.uninterruptible(op === "sync" ? pushThenPull : target.pull)).pipe(
          Effect.ensuring(Effect.sync(() => {
            if (!syncing) return
            syncing = false
            progressed()
          }))
        )
        if (outcome._tag === "Right") {
          failures = 0
          yield* target.report("connected")
          yield* done
          continue
        }
        const error = outcome.left
        yield* target.report(error._tag === "NetworkError" ? "offline" : "connected")
        if (!transient(error)) {
          // Not a matter of time (refused, a mismatch, a local failure): said in status and events already;
          // the next write or remote change tries again.
          yield* Effect.logWarning(`live sync: ${error._tag}: ${error.message}`)
          yield* done
          continue
        }
        yield* Effect.sleep(backoffMs(failures++, capMs))
        wants[op] = true
      }
    }))

    // Asks the worker for a pull from `at` and waits until it is done or has moved the position: the pull's
    // frames are in the synced copy, its copy to Draft may still run, and the next waiting pull can start
    // from there meanwhile (its answer is the next pull's, which starts as soon as this one ends).
    const pullAndWait = (
      at: { readonly generation: number; readonly frame: number },
      offered: Parameters<Target["offer"]>[0] | undefined
    ) =>
      Effect.gen(function*() {
        const ticket = ++requested
        pullFrom = at
        answer = offered
        request("pull")
        for (;;) {
          yield* Queue.take(progress)
          if (served >= ticket) return
          const now = yield* target.position
          if (now.generation !== at.generation || now.frame !== at.frame) return
        }
      })

    let watchFailures = 0
    // What the remote does with waiting pulls, learnt from `info` first and again after an outage (it may
    // be another server): whether it waits, and whether a waiting pull may start at the synced frame.
    let mode: { readonly waits: boolean; readonly after: boolean } | undefined
    const failed = (error: SyncError.SyncError) =>
      Effect.gen(function*() {
        if (error._tag === "NetworkError") yield* target.report("offline")
        else yield* Effect.logWarning(`live sync: ${error._tag}: ${error.message}`)
        mode = undefined
        yield* Effect.sleep(backoffMs(watchFailures++, capMs))
      })
    const watcher = Effect.forever(Effect.gen(function*() {
      if (mode === undefined) {
        const info = yield* Effect.either(target.remote.info)
        if (info._tag === "Left") return yield* failed(info.left)
        const waits = (info.right.maxWaitSeconds ?? 0) > 0
        mode = { waits, after: waits && info.right.waitAfter === true }
      }
      // Not while our own push runs (its commit would wake the pull): from where it leaves the position.
      while (syncing) yield* Queue.take(progress)
      const at = yield* target.position
      // From the synced frame itself where the remote allows it: the answer then carries that frame (the
      // check of the remote compares it) and the new ones, and serves as the pull's requests.
      const fromHeld = mode.after && at.frame > 0
      const start = fromHeld ? at.frame : at.frame + 1
      const end = fromHeld ? at.frame + 1 + SyncProtocol.CLIENT_BATCH_FRAMES : at.frame + 2
      const abandon = Deferred.unsafeMake<void>(FiberId.none)
      waiting = abandon
      // A push that began since the check above: given up at once.
      if (syncing) Deferred.unsafeDone(abandon, Exit.void)
      const answered = yield* Effect.raceFirst(
        Effect.map(
          Effect.either(
            target.remote.pull(at.generation, start, end, fromHeld ? { waitSeconds, after: at.frame } : { waitSeconds })
          ),
          Option.some
        ),
        Effect.as(Deferred.await(abandon), Option.none())
      ).pipe(Effect.ensuring(Effect.sync(() => {
        waiting = undefined
      })))
      // Abandoned for a push of ours: asked again once it is done.
      if (Option.isNone(answered)) return
      const result = answered.value
      if (result._tag === "Left") return yield* failed(result.left)
      if (watchFailures > 0) {
        // Back after an outage: push what was written meanwhile and bring what others did.
        watchFailures = 0
        yield* target.report("connected")
        request("sync")
      }
      if (fromHeld ? movedFromHeld(result.right) : moved(result.right, at.generation, at.frame)) {
        // Moved by this replica meanwhile (its own push, or a pull): ask again from there. Another replica's
        // frames a push of ours took in are pulled by the worker right after that push.
        const current = yield* target.position
        if (current.generation !== at.generation || current.frame !== at.frame) return
        yield* pullAndWait(at, fromHeld ? { generation: at.generation, start, end, result: result.right } : undefined)
        const now = yield* target.position
        // A pull that could not move (a remote that went back in time, a failure said in status): not again at once.
        if (now.generation === at.generation && now.frame === at.frame) yield* Effect.sleep(backoffMs(watchFailures++, capMs))
        return
      }
      // Nothing new. A remote that waited is asked again at once; one that does not wait is polled.
      if (!mode.waits) yield* Effect.sleep(pollInterval)
    }))

    yield* Effect.forkScoped(pusher)
    yield* Effect.forkScoped(worker)
    yield* Effect.forkScoped(watcher)
    wake.unsafeOffer(undefined)
  })
