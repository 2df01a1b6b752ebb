/**
 * Large byte buffers reused from one use to the next (a push's batches of frames, read from the WAL and
 * sent as they lie). The first touch of freshly allocated memory costs a page fault per 4 KiB page, which
 * on a loaded or virtualized machine makes allocating and filling a 4 MiB buffer cost as much as sending
 * it; a buffer kept from the last use costs nothing. A buffer is lent to one user at a time (a push takes
 * its own, so pushes of several databases in one process never share one), and the {@link KEPT} largest
 * of them are kept between uses.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

/** Buffers kept between uses: enough for the pushes of two databases at once. */
export const KEPT = 2

const free: Array<Uint8Array> = []

/**
 * Runs `use` with a buffer of at least `size` bytes, given back when `use` ends, however it ends. Its bytes
 * are whatever the last user left: `use` writes before it reads. Nothing `use` answers may keep a view of
 * it.
 */
export const withBuffer = <A, E, R>(size: number, use: (buffer: Uint8Array) => Effect.Effect<A, E, R>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      // the one given back last first (its pages are the likeliest to be resident)
      for (let i = free.length - 1; i >= 0; i--) {
        if (free[i]!.byteLength >= size) return free.splice(i, 1)[0]!
      }
      return new Uint8Array(size)
    }),
    use,
    (buffer) =>
      Effect.sync(() => {
        // the largest are kept (a small one given back does not push out a large one)
        free.push(buffer)
        if (free.length > KEPT) {
          let smallest = 0
          for (let i = 1; i < free.length; i++) if (free[i]!.byteLength < free[smallest]!.byteLength) smallest = i
          free.splice(smallest, 1)
        }
      })
  )
