/**
 * Buffers for the pages of a baton session's pending frames, reused from one transaction to the next.
 *
 * A request's frames are views into a body buffer the next request reuses, so the frames a session keeps
 * between requests are copied. Into fresh memory, that copy costs a page fault per 4 KiB page, which on
 * a virtualized machine is most of a pending request's time in the store (1.6 ms of 2.4 ms for 128
 * frames). A session's buffers are given back once its transaction is stored (the store keeps copies of
 * what it commits), and the next transaction copies into them.
 *
 * @internal
 */
import * as WalFrame from "../../WalFrame.js"

/** Pages of one slab (512 KiB). */
export const SLAB_PAGES = 128

/** Slabs kept between transactions (16 MiB). */
export const SLABS_KEPT = 32

/** Requests of fewer frames copy into a buffer of their own size, unless a slab is free anyway. */
const SLAB_MIN_PAGES = SLAB_PAGES / 4

export interface FramePool {
  /** Slabs free for the next copies, last given back last. */
  readonly free: Array<Uint8Array>
  /** Slabs lent to each open session, given back together when its transaction is stored. */
  readonly lent: WeakMap<object, Array<Uint8Array>>
}

export const make = (): FramePool => ({ free: [], lent: new WeakMap() })

/**
 * Copies of `frames` whose pages share few buffers: slabs of the pool ({@link SLAB_PAGES} pages each),
 * lent to `owner` (the session that keeps them), or for a few frames, or without a pool, buffers of
 * their own size (one allocation per slab's worth of frames, not one per page).
 */
export const copy = (
  pool: FramePool | undefined,
  owner: object,
  frames: ReadonlyArray<WalFrame.Frame>
): Array<WalFrame.Frame> => {
  const copies: Array<WalFrame.Frame> = new Array(frames.length)
  for (let first = 0; first < frames.length; first += SLAB_PAGES) {
    const count = Math.min(SLAB_PAGES, frames.length - first)
    let bytes = 0
    for (let i = first; i < first + count; i++) bytes += frames[i].page.byteLength
    let into: Uint8Array
    if (pool !== undefined && bytes <= SLAB_PAGES * WalFrame.PAGE_SIZE && (pool.free.length > 0 || count >= SLAB_MIN_PAGES)) {
      into = pool.free.pop() ?? new Uint8Array(SLAB_PAGES * WalFrame.PAGE_SIZE)
      const lent = pool.lent.get(owner)
      if (lent === undefined) pool.lent.set(owner, [into])
      else lent.push(into)
    } else {
      into = new Uint8Array(bytes)
    }
    let at = 0
    for (let i = first; i < first + count; i++) {
      const { commitSize, page, pgno } = frames[i]
      into.set(page, at)
      copies[i] = { pgno, commitSize, page: into.subarray(at, at + page.byteLength) }
      at += page.byteLength
    }
  }
  return copies
}

/**
 * Gives back the slabs lent to `owner`. Only once nothing reads its frames any more: its whole
 * transaction stored, and the session gone. A session dropped any other way keeps its slabs to the
 * garbage collector.
 */
export const release = (pool: FramePool, owner: object): void => {
  const lent = pool.lent.get(owner)
  if (lent === undefined) return
  pool.lent.delete(owner)
  for (const slab of lent) if (pool.free.length < SLABS_KEPT) pool.free.push(slab)
}
