/**
 * Wakes the pulls that wait for a database's next commit (`ServerStore.awaitChange`).
 *
 * A waiter is a value in a map, keyed by database, holding the head it last saw and, once a commit may
 * have moved the head, what woke it: no fiber or storage connection is held per waiter, and its wait
 * (`awaitWake`) is one callback and one timer, not fibers racing a sleep. `notify` is called after a commit is durable (the store's own pushes) or when another process
 * reports one (a shared store's listener); it wakes only the waiters whose head differs from the one
 * reported, or every waiter of the database when the head is not known.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import type { DatabaseInfo } from "../../ServerStore.js"

/** A waiter: the head it last saw, and what woke it (with the new head when the notifier knows it). */
export interface Waiter {
  readonly database: string
  readonly generation: number
  readonly frameNo: number
  /** Completed by the first wake (later ones change nothing) with the head reported, if known. */
  readonly woken: Deferred.Deferred<DatabaseInfo | undefined>
  /** The first wake's report, for `awaitWake` to read without an effect. */
  reported: { readonly head: DatabaseInfo | undefined } | undefined
  /** The `awaitWake` in progress, if any. */
  onWake: ((head: DatabaseInfo | undefined) => void) | undefined
}

const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * Waits up to `ms` for `waiter` to be woken: `Some` of the head reported (undefined when not known), or
 * `None` when the time runs out first. Interrupting it ends it at once.
 */
export const awaitWake = (waiter: Waiter, ms: number): Effect.Effect<Option.Option<DatabaseInfo | undefined>> =>
  Effect.async((resume) => {
    if (waiter.reported !== undefined) return resume(Effect.succeed(Option.some(waiter.reported.head)))
    // (a timer fires at once past 2^31-1 ms: a longer wait is made of several, an infinite one of none)
    let timer: ReturnType<typeof setTimeout> | undefined
    const arm = (left: number) => {
      timer = setTimeout(() => {
        if (left > MAX_TIMER_MS) return arm(left - MAX_TIMER_MS)
        waiter.onWake = undefined
        resume(Effect.succeed(Option.none()))
      }, Math.min(left, MAX_TIMER_MS))
    }
    if (Number.isFinite(ms)) arm(Math.max(0, ms))
    waiter.onWake = (head) => {
      clearTimeout(timer)
      waiter.onWake = undefined
      resume(Effect.succeed(Option.some(head)))
    }
    return Effect.sync(() => {
      clearTimeout(timer)
      waiter.onWake = undefined
    })
  })

export interface CommitNotifier {
  /**
   * A commit or a roll of `database` is durable and the head is now `head` (undefined when the caller
   * does not know it: every waiter of the database then looks again).
   */
  readonly notify: (database: string, head: DatabaseInfo | undefined) => void
  /** Every waiter looks again: commits may have gone unreported (a listener that was down). */
  readonly notifyAll: () => void
  /** Adds a waiter for a head other than `generation`/`frameNo`; `remove` must follow (acquire/release). */
  readonly add: (database: string, generation: number, frameNo: number) => Waiter
  readonly remove: (waiter: Waiter) => void
  /** The databases that have waiters now. */
  readonly databases: () => ReadonlyArray<string>
  /** How many waiters there are. */
  readonly size: () => number
}

/** Whether `head` is not the head the waiter saw (so the waiter must answer). */
export const moved = (head: DatabaseInfo, generation: number, frameNo: number): boolean =>
  head.generation !== generation || head.maxFrameNo !== frameNo

/** Whether `head` is past the waiter's (so it can answer without reading the head again). */
export const ahead = (head: DatabaseInfo, generation: number, frameNo: number): boolean =>
  head.generation > generation || (head.generation === generation && head.maxFrameNo > frameNo)

export const make = (): CommitNotifier => {
  const byDatabase = new Map<string, Set<Waiter>>()
  let count = 0

  const wake = (waiter: Waiter, head: DatabaseInfo | undefined) => {
    if (waiter.reported !== undefined) return
    waiter.reported = { head }
    Deferred.unsafeDone(waiter.woken, Exit.succeed(head))
    waiter.onWake?.(head)
  }

  return {
    notify: (database, head) => {
      const waiters = byDatabase.get(database)
      if (waiters === undefined) return
      for (const waiter of waiters) {
        if (head === undefined || moved(head, waiter.generation, waiter.frameNo)) wake(waiter, head)
      }
    },
    notifyAll: () => {
      for (const waiters of byDatabase.values()) for (const waiter of waiters) wake(waiter, undefined)
    },
    add: (database, generation, frameNo) => {
      const waiter: Waiter = { database, generation, frameNo, woken: Deferred.unsafeMake(FiberId.none), reported: undefined, onWake: undefined }
      const waiters = byDatabase.get(database)
      if (waiters === undefined) byDatabase.set(database, new Set([waiter]))
      else waiters.add(waiter)
      count++
      return waiter
    },
    remove: (waiter) => {
      const waiters = byDatabase.get(waiter.database)
      if (waiters === undefined || !waiters.delete(waiter)) return
      count--
      if (waiters.size === 0) byDatabase.delete(waiter.database)
    },
    databases: () => Array.from(byDatabase.keys()),
    size: () => count
  }
}
