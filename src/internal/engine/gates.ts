/**
 * Which copy serves reads, and the gates reads and writes pass: a read takes one read permit, a write one
 * write permit. Switching the active copy takes every read permit, so no read spans the switch; a pull's
 * copy step takes every write permit, so no write lands in a Draft being replaced (invariant 4).
 *
 * A read or write that runs in one synchronous step (a statement on better-sqlite3) takes no permit: it
 * checks {@link readsPass} / {@link writesPass} in that same step, and since nothing else runs on the
 * thread meanwhile, it cannot overlap a step that holds (or waits for) every permit.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

const WRITE_PERMITS = 64
const READ_PERMITS = 1024

/** @internal */
export type ActiveCopy = "draft" | "synced"

/** @internal */
export interface Gates {
  /** The copy reads go to; changed only by {@link switchReads}, while it holds every read permit. */
  readonly active: { current: ActiveCopy }
  readonly readGate: Effect.Semaphore
  readonly writeGate: Effect.Semaphore
  // Effect's semaphores let a small taker pass a waiting large one, so a stream of reads or writes could
  // starve the step that needs every permit. The latches close the door first: new reads (writes) wait
  // at the latch while the ones in flight finish, then the step runs, then the door opens again.
  readonly readsOpen: Effect.Latch
  readonly writesOpen: Effect.Latch
  /** Steps that hold or wait for every read (write) permit, counted from before they close the door. */
  readonly exclusive: { reads: number; writes: number }
  /**
   * Counts writes to Draft: it grows each time one starts (a direct one included). A pull that prepares its
   * copy outside the write gate compares it under the gate: unchanged means no write landed meanwhile.
   */
  readonly epoch: { writes: number }
}

/** @internal */
export const make: Effect.Effect<Gates> = Effect.gen(function*() {
  return {
    active: { current: "draft" as ActiveCopy },
    readGate: yield* Effect.makeSemaphore(READ_PERMITS),
    writeGate: yield* Effect.makeSemaphore(WRITE_PERMITS),
    readsOpen: yield* Effect.makeLatch(true),
    writesOpen: yield* Effect.makeLatch(true),
    exclusive: { reads: 0, writes: 0 },
    epoch: { writes: 0 }
  }
})

/** The copy that serves reads now. */
export const active = (gates: Gates): Effect.Effect<ActiveCopy> => Effect.sync(() => gates.active.current)

/** Whether a read running in one synchronous step may run now without a permit. */
export const readsPass = (gates: Gates): boolean => gates.exclusive.reads === 0

/**
 * Whether a write running in one synchronous step may run now without a permit; when it may, the write is
 * counted (see `Gates.epoch`) as starting now.
 */
export const writesPass = (gates: Gates): boolean => {
  if (gates.exclusive.writes !== 0) return false
  gates.epoch.writes++
  return true
}

const started = (gates: Gates) =>
  Effect.sync(() => {
    gates.epoch.writes++
  })

/** How many writes have started so far (see `Gates.epoch`). */
export const writeEpoch = (gates: Gates): Effect.Effect<number> => Effect.sync(() => gates.epoch.writes)

/** Runs a read under one read permit. */
export const reading = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  Effect.zipRight(gates.readsOpen.await, gates.readGate.withPermits(1)(effect))

/** Runs a write under one write permit. */
export const writing = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  Effect.zipRight(gates.writesOpen.await, gates.writeGate.withPermits(1)(Effect.zipRight(started(gates), effect)))

const exclusively = <A, E, R>(
  gates: Gates,
  kind: "reads" | "writes",
  latch: Effect.Latch,
  gate: Effect.Semaphore,
  permits: number,
  effect: Effect.Effect<A, E, R>
) =>
  Effect.acquireUseRelease(
    Effect.zipRight(Effect.sync(() => gates.exclusive[kind]++), latch.close),
    () => gate.withPermits(permits)(effect),
    () => Effect.zipRight(latch.open, Effect.sync(() => gates.exclusive[kind]--))
  )

/** Runs `effect` once every write in flight has finished, with new writes waiting until it ends. */
export const holdingWrites = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  exclusively(gates, "writes", gates.writesOpen, gates.writeGate, WRITE_PERMITS, effect)

/** Runs `effect` only if no write is in flight (and keeps new ones waiting meanwhile); `None` otherwise. */
export const ifNoWrites = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  gates.writeGate.withPermitsIfAvailable(WRITE_PERMITS)(
    Effect.acquireUseRelease(
      Effect.zipRight(Effect.sync(() => gates.exclusive.writes++), started(gates)),
      () => effect,
      () => Effect.sync(() => gates.exclusive.writes--)
    )
  )

/** Moves reads to `copy`, after every read in flight on the other one has finished. */
export const switchReads = (gates: Gates, copy: ActiveCopy) =>
  exclusively(
    gates,
    "reads",
    gates.readsOpen,
    gates.readGate,
    READ_PERMITS,
    Effect.sync(() => {
      gates.active.current = copy
    })
  )

/**
 * Takes every read permit (new reads wait at the door) until {@link releaseReads}: for a step that closes the
 * copy reads are on and opens it again in separate steps (see follow.ts). Interrupted while waiting for the
 * reads in flight, it opens the door again.
 */
export const holdReads = (gates: Gates): Effect.Effect<void> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.zipRight(
      Effect.zipRight(Effect.sync(() => gates.exclusive.reads++), gates.readsOpen.close),
      restore(gates.readGate.take(READ_PERMITS)).pipe(
        Effect.onInterrupt(() => Effect.zipRight(gates.readsOpen.open, Effect.sync(() => gates.exclusive.reads--)))
      )
    )
  )

/** Ends {@link holdReads}; `copy`, if given, is where reads go from now on. */
export const releaseReads = (gates: Gates, copy?: ActiveCopy): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (copy !== undefined) gates.active.current = copy
    return Effect.zipRight(
      gates.readGate.release(READ_PERMITS),
      Effect.zipRight(gates.readsOpen.open, Effect.sync(() => gates.exclusive.reads--))
    )
  })
