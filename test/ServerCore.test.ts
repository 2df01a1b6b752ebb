/**
 * The store's pure decisions: when a generation rolls, which old generations retention drops, and where
 * a push to an older generation continues. The effectful parts are covered through the conformance suite
 * (test/ServerStore.test.ts); these are the rules themselves, over all inputs.
 */
import { describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import * as Core from "../src/internal/server/serverCore.js"

describe("serverCore decisions", () => {
  it("rollDue: the growth rule needs both the minimum and the base's size times the factor; Frames is a count", () => {
    fc.assert(
      fc.property(fc.nat(100_000), fc.integer({ min: 1, max: 100_000 }), fc.double({ min: 0.1, max: 10, noNaN: true }), fc.nat(5000), (last, base, growth, min) => {
        expect(Core.rollDue({ _tag: "Growth", growth, minFrames: min }, last, base)).toBe(last > min && last > base * growth)
        expect(Core.rollDue({ _tag: "Frames", frames: min + 1 }, last, base)).toBe(last > min + 1)
        expect(Core.rollDue({ _tag: "Never" }, last, base)).toBe(false)
      })
    )
    expect(Core.rollPolicy({})).toEqual({ _tag: "Growth", growth: 1, minFrames: 1000 })
    expect(Core.rollPolicy({ generationFrames: 8, generationGrowth: 3 })).toEqual({ _tag: "Frames", frames: 8 })
    expect(Core.rollPolicy({ generationGrowth: "never" })).toEqual({ _tag: "Never" })
  })

  it("dropThroughFor: drops exactly the generations no kept rule protects, always a prefix, never the current one", () => {
    const arb = fc.record({
      current: fc.integer({ min: 1, max: 30 }),
      oldestOffset: fc.nat(30),
      count: fc.option(fc.nat(10), { nil: undefined }),
      ms: fc.option(fc.nat(1000), { nil: undefined }),
      gaps: fc.array(fc.nat(300), { minLength: 31, maxLength: 31 }),
      now: fc.nat(10_000)
    })
    fc.assert(
      fc.property(arb, ({ count, current, gaps, ms, now, oldestOffset }) => {
        const oldest = Math.max(1, current - oldestOffset)
        // Start times grow with the generation number.
        const startedAt = (g: number) => gaps.slice(0, g).reduce((a, b) => a + b, 0)
        const through = Core.dropThroughFor({ count, ms }, current, oldest, startedAt, now)
        expect(through).toBeGreaterThanOrEqual(oldest - 1)
        expect(through).toBeLessThan(current)
        for (let g = oldest; g < current; g++) {
          const protectedByCount = count !== undefined && g >= current - count
          const protectedByTime = ms !== undefined && now - startedAt(g + 1) < ms
          const dropped = g <= through
          if (dropped) expect(protectedByCount || protectedByTime).toBe(false)
          // Only a protected generation, or one after a protected one, stays.
          if (!dropped) {
            const someProtected = Array.from({ length: g - oldest + 1 }, (_, i) => g - i).some((h) =>
              (count !== undefined && h >= current - count) || (ms !== undefined && now - startedAt(h + 1) < ms)
            )
            expect(someProtected).toBe(true)
          }
        }
        // With neither rule, everything old goes; the defaults keep two generations and an hour.
        expect(Core.dropThroughFor({ count: undefined, ms: undefined }, current, oldest, startedAt, now)).toBe(current - 1)
      })
    )
    expect(Core.retention({})).toEqual({ count: 2, ms: 3_600_000 })
    expect(Core.retention({ keepGenerations: 1 })).toEqual({ count: 1, ms: undefined })
  })

  it("continuation: the offset maps a push after an old generation's end onto the current one, frame for frame", () => {
    fc.assert(
      fc.property(fc.array(fc.nat(50), { minLength: 1, maxLength: 6 }), fc.nat(5), fc.integer({ min: 1, max: 400 }), (lasts, from, start) => {
        const current = lasts.length
        const generation = Math.min(from + 1, current)
        const lastFrame = (g: number) => lasts[g - 1]
        const offset = Core.continuation(lastFrame, generation, current, start)
        // The push continues iff it starts past every generation it would cross.
        let s = start
        let expected: number | undefined = 0
        for (let g = generation; g < current; g++) {
          if (s <= lastFrame(g)) {
            expected = undefined
            break
          }
          s -= lastFrame(g)
          expected! += lastFrame(g)
        }
        expect(offset).toBe(expected)
        if (offset !== undefined) {
          // Frame `start` of the old generation is frame `start - offset` (>= 1) of the current one.
          expect(start - offset).toBeGreaterThanOrEqual(1)
          if (generation === current) expect(offset).toBe(0)
        }
      })
    )
  })
})
