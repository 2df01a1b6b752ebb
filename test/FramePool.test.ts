/**
 * The buffers a baton session's pending frames are copied into: copies equal their frames and own their
 * bytes, a buffer comes back only once its session gives it back, and no buffer is ever in two live
 * sessions at once.
 */
import { describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import * as FramePool from "../src/internal/server/framePool.js"
import * as WalFrame from "../src/WalFrame.js"

const framesOf = (count: number, tag: number): Array<WalFrame.Frame> => {
  const body = new Uint8Array(count * WalFrame.PAGE_SIZE)
  return Array.from({ length: count }, (_, i) => {
    const page = body.subarray(i * WalFrame.PAGE_SIZE, (i + 1) * WalFrame.PAGE_SIZE)
    page.fill((tag * 31 + i) & 0xff)
    page[0] = tag & 0xff
    return { pgno: i + 1, commitSize: i === count - 1 ? count : 0, page }
  })
}

describe("FramePool", () => {
  it("copies own their bytes; a released session's slabs are reused, an unreleased one's never", () => {
    const pool = FramePool.make()
    const a = {}
    const frames = framesOf(FramePool.SLAB_PAGES + 40, 1)
    const copies = FramePool.copy(pool, a, frames)
    expect(copies.map((c) => [c.pgno, c.commitSize])).toEqual(frames.map((f) => [f.pgno, f.commitSize]))
    const expected = frames.map((f) => f.page.slice())
    for (const frame of frames) frame.page.fill(0)
    copies.forEach((copy, i) => expect(Buffer.compare(copy.page, expected[i])).toBe(0))
    // two slabs (128 + 40 frames), both lent to `a`
    const slabs = new Set(copies.map((c) => c.page.buffer))
    expect(slabs.size).toBe(2)
    const b = {}
    const other = FramePool.copy(pool, b, framesOf(FramePool.SLAB_PAGES, 2))
    expect(slabs.has(other[0].page.buffer)).toBe(false)
    FramePool.release(pool, a)
    expect(pool.free.length).toBe(2)
    const c = {}
    const reused = FramePool.copy(pool, c, framesOf(3, 3))
    expect(slabs.has(reused[0].page.buffer)).toBe(true)
    // A few frames with no slab free get a buffer of their own size, lent to nobody.
    const small = FramePool.copy(FramePool.make(), {}, framesOf(3, 4))
    expect(small[0].page.buffer.byteLength).toBe(3 * WalFrame.PAGE_SIZE)
    // Without a pool nothing is lent.
    const unpooled = FramePool.copy(undefined, {}, framesOf(FramePool.SLAB_PAGES, 5))
    expect(unpooled[0].page.buffer.byteLength).toBe(FramePool.SLAB_PAGES * WalFrame.PAGE_SIZE)
    expect(FramePool.copy(pool, {}, [])).toEqual([])
  })

  it("no buffer is in two live sessions, and live copies keep their bytes, whatever the order of copies and releases", () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant("copy" as const), owner: fc.nat(3), count: fc.integer({ min: 1, max: 200 }) }),
      fc.record({ kind: fc.constant("release" as const), owner: fc.nat(3) })
    )
    fc.assert(
      fc.property(fc.array(op, { maxLength: 24 }), (ops) => {
        const pool = FramePool.make()
        const owners = [{}, {}, {}, {}]
        const live = new Map<object, Array<{ copy: WalFrame.Frame; expected: Uint8Array }>>()
        let tag = 0
        for (const step of ops) {
          const owner = owners[step.owner]
          if (step.kind === "copy") {
            const frames = framesOf(step.count, ++tag)
            const copies = FramePool.copy(pool, owner, frames)
            const kept = live.get(owner) ?? []
            copies.forEach((copy, i) => kept.push({ copy, expected: frames[i].page.slice() }))
            live.set(owner, kept)
            for (const frame of frames) frame.page.fill(0xee)
          } else {
            FramePool.release(pool, owner)
            live.delete(owner)
          }
          expect(pool.free.length).toBeLessThanOrEqual(FramePool.SLABS_KEPT)
          const holder = new Map<ArrayBufferLike, object>()
          for (const [who, copies] of live) {
            for (const { copy, expected } of copies) {
              expect(Buffer.compare(copy.page, expected)).toBe(0)
              const seen = holder.get(copy.page.buffer)
              if (seen !== undefined) expect(seen).toBe(who)
              holder.set(copy.page.buffer, who)
              expect(pool.free.includes(copy.page as Uint8Array) || pool.free.some((s) => s.buffer === copy.page.buffer)).toBe(false)
            }
          }
        }
      }),
      { numRuns: 50 }
    )
  })
})
