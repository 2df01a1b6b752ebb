/**
 * Wakes the pulls that wait for a database's next commit (`ServerStore.awaitChange`).
 *
 * A waiter is a value in a map, keyed by database, holding the head it last saw and a `Deferred` that
 * completes when a commit may have moved the head: no fiber, timer or storage connection is held per
 * waiter. `notify` is called after a commit is durable (the store's own pushes) or when another process
 * reports one (a shared store's listener); it wakes only the waiters whose head differs from the one
 * reported, or every waiter of the database when the head is not known.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import type { DatabaseInfo } from "../../ServerStore.js"

/** A waiter: the head it last saw, and what wakes it (with the new head when the notifier knows it). */
export interface Waiter {
  readonly database: string
  readonly generation: number
  readonly frameNo: number
  readonly woken: Deferred.Deferred<DatabaseInfo | undefined>
}

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
    Deferred.unsafeDone(waiter.woken, Exit.succeed(head))
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
      const waiter: Waiter = { database, generation, frameNo, woken: Deferred.unsafeMake(FiberId.none) }
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
