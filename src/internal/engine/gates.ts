/**
 * Which copy serves reads, and the gates reads and writes pass: a read takes one read permit, a write one
 * write permit. Switching the active copy takes every read permit, so no read spans the switch; a pull's
 * copy step takes every write permit, so no write lands in a Draft being replaced (invariant 4).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"

const WRITE_PERMITS = 64
const READ_PERMITS = 1024

/** @internal */
export type ActiveCopy = "draft" | "synced"

/** @internal */
export interface Gates {
  readonly active: Ref.Ref<ActiveCopy>
  readonly readGate: Effect.Semaphore
  readonly writeGate: Effect.Semaphore
  // Effect's semaphores let a small taker pass a waiting large one, so a stream of reads or writes could
  // starve the step that needs every permit. The latches close the door first: new reads (writes) wait
  // at the latch while the ones in flight finish, then the step runs, then the door opens again.
  readonly readsOpen: Effect.Latch
  readonly writesOpen: Effect.Latch
  /**
   * Counts writes to Draft: `epoch` grows each time one starts. A pull that prepares its copy outside the
   * write gate compares it under the gate: unchanged means no write landed meanwhile.
   */
  readonly writes: Ref.Ref<number>
}

/** @internal */
export const make: Effect.Effect<Gates> = Effect.gen(function*() {
  return {
    active: yield* Ref.make<ActiveCopy>("draft"),
    readGate: yield* Effect.makeSemaphore(READ_PERMITS),
    writeGate: yield* Effect.makeSemaphore(WRITE_PERMITS),
    readsOpen: yield* Effect.makeLatch(true),
    writesOpen: yield* Effect.makeLatch(true),
    writes: yield* Ref.make(0)
  }
})

/** Runs a read under one read permit. */
export const reading = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  Effect.zipRight(gates.readsOpen.await, gates.readGate.withPermits(1)(effect))

/** Runs a write under one write permit. */
export const writing = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  Effect.zipRight(gates.writesOpen.await, gates.writeGate.withPermits(1)(Effect.zipRight(Ref.update(gates.writes, (n) => n + 1), effect)))

/** How many writes have started so far (see `Gates.writes`). */
export const writeEpoch = (gates: Gates) => Ref.get(gates.writes)

const exclusively = <A, E, R>(latch: Effect.Latch, gate: Effect.Semaphore, permits: number, effect: Effect.Effect<A, E, R>) =>
  Effect.acquireUseRelease(latch.close, () => gate.withPermits(permits)(effect), () => latch.open)

/** Runs `effect` once every write in flight has finished, with new writes waiting until it ends. */
export const holdingWrites = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  exclusively(gates.writesOpen, gates.writeGate, WRITE_PERMITS, effect)

/** Runs `effect` only if no write is in flight (and keeps new ones waiting meanwhile); `None` otherwise. */
export const ifNoWrites = <A, E, R>(gates: Gates, effect: Effect.Effect<A, E, R>) =>
  gates.writeGate.withPermitsIfAvailable(WRITE_PERMITS)(Effect.zipRight(Ref.update(gates.writes, (n) => n + 1), effect))

/** Moves reads to `copy`, after every read in flight on the other one has finished. */
export const switchReads = (gates: Gates, copy: ActiveCopy) =>
  exclusively(gates.readsOpen, gates.readGate, READ_PERMITS, Ref.set(gates.active, copy))
