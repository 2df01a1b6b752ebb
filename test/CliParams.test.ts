/**
 * The pure parts of the command line: how positional parameters bind, how values are printed as JSON,
 * and the progress line. Binding through a real database is covered by CliWorkflow.test.ts.
 */
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as fc from "fast-check"
import { parseParam, parseParams, stringify, table } from "../src/internal/cli/cliParams.js"
import * as CliProgress from "../src/internal/cli/cliProgress.js"

const right = (input: string) => {
  const parsed = parseParam(input)
  if (Either.isLeft(parsed)) throw new Error(`${input}: ${parsed.left}`)
  return parsed.right
}

const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n

describe("CLI parameters", () => {
  it("integers: bigints (so SQLite stores INTEGER) over the whole 64-bit range, refused beyond", () => {
    fc.assert(fc.property(fc.bigInt({ min: INT64_MIN, max: INT64_MAX }), (n) => {
      expect(right(n.toString())).toBe(n)
    }))
    expect(Either.isLeft(parseParam("9223372036854775808"))).toBe(true)
    expect(right("-9223372036854775808")).toBe(INT64_MIN)
    fc.assert(fc.property(fc.bigInt({ min: INT64_MAX + 1n, max: 2n ** 80n }), fc.boolean(), (n, negative) => {
      const text = (negative ? -n - 1n : n).toString()
      expect(Either.isLeft(parseParam(text))).toBe(true)
    }))
  })

  it("reals: any finite double written by String() reads back as the same number", () => {
    fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
      const text = String(x)
      if (/^-?[0-9]+$/.test(text) && (BigInt(text) < INT64_MIN || BigInt(text) > INT64_MAX)) {
        // Integer digits outside 64 bits (e.g. 2^63 printed in full) are refused, not rounded.
        expect(Either.isLeft(parseParam(text))).toBe(true)
        return
      }
      const parsed = right(text)
      expect(Number(parsed)).toBe(x === 0 ? 0 : x)
      // Integral doubles print without a fraction and bind as INTEGER; the rest bind as REAL.
      expect(typeof parsed).toBe(/^-?[0-9]+$/.test(text) ? "bigint" : "number")
    }))
  })

  it("quoted text reads back exactly, doubled quotes included; NULL and blobs", () => {
    fc.assert(fc.property(fc.string({ unit: "grapheme" }), (s) => {
      expect(right(`'${s.replace(/'/g, "''")}'`)).toBe(s)
    }))
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      expect(right(`X'${Buffer.from(bytes).toString("hex")}'`)).toEqual(bytes)
    }))
    for (const n of ["NULL", "null", "Null"]) expect(right(n)).toBeNull()
    expect(Either.isLeft(parseParam("'it's'"))).toBe(true)
    expect(Either.isLeft(parseParam("X'abc'"))).toBe(true)
  })

  it("anything else is text exactly as written", () => {
    for (const text of ["007", "+1", "1_000", "1.", ".5", "1e", "abc", "", " 1", "0x10", "'", "it's", "NaN", "Infinity"]) {
      expect(right(text)).toBe(text)
    }
    fc.assert(fc.property(fc.string().filter((s) => /[g-wyzG-WYZ_ ]/.test(s) && !/^'.*'$/s.test(s)), (s) => {
      expect(right(s)).toBe(s)
    }))
  })

  it("bind in SQLite with the storage class they announce", () => {
    const db = new BetterSqlite3(":memory:")
    db.defaultSafeIntegers(true)
    const inputs = ["NULL", "42", "-9223372036854775808", "9007199254740993", "1.5", "X'00ff'", "'42'", "007", "hi"]
    const params = Either.getOrThrow(parseParams(inputs))
    const rows = inputs.map((_, i) =>
      db.prepare("SELECT typeof(?) AS type, quote(?) AS literal").get(params[i], params[i]) as { type: string; literal: string }
    )
    expect(rows.map((r) => [r.type, r.literal])).toEqual([
      ["null", "NULL"],
      ["integer", "42"],
      ["integer", "-9223372036854775808"],
      ["integer", "9007199254740993"],
      ["real", "1.5"],
      ["blob", "X'00FF'"],
      ["text", "'42'"],
      ["text", "'007'"],
      ["text", "'hi'"]
    ])
    db.close()
  })
})

describe("CLI output", () => {
  it("JSON: one line, exact 64-bit integers, blobs as hex; equal to JSON.stringify where JSON can say it", () => {
    fc.assert(fc.property(fc.jsonValue(), (value) => {
      expect(stringify(value)).toBe(JSON.stringify(value))
    }))
    fc.assert(fc.property(fc.bigInt({ min: INT64_MIN, max: INT64_MAX }), (n) => {
      const text = stringify({ n })
      expect(text).toBe(`{"n":${n.toString()}}`)
      expect(() => JSON.parse(text)).not.toThrow()
    }))
    expect(stringify([{ b: new Uint8Array([0, 255]), s: "\u0000bigint:1", big: 2n ** 63n - 1n, small: 5n }])).toBe(
      `[{"b":{"$blob":"00ff"},"s":"\\u0000bigint:1","big":9223372036854775807,"small":5}]`
    )
    expect(JSON.parse(stringify({ ["__proto__"]: 1n }))).toEqual(JSON.parse(`{"__proto__":1}`))
  })

  it("the human table aligns columns and counts rows", () => {
    expect(table([{ id: 1n, name: "a", v: null }, { id: 10n, name: "line\nbreak", v: new Uint8Array([1]) }])).toBe(
      ["id  name         v", "--  -----------  -----", "1   a            NULL", "10  line\\nbreak  X'01'", "(2 rows)"].join("\n")
    )
    expect(table([])).toBe("(0 rows)")
    expect(table([{ row: { id: 2n ** 60n, name: "x" }, at: new Date(0) }])).toBe(
      ["row                                    at", "-------------------------------------  ------------------------", `{"id":1152921504606846976,"name":"x"}  1970-01-01T00:00:00.000Z`, "(1 row)"].join("\n")
    )
  })

  it("the progress line: a bar of fixed width that fills monotonically; no bar without a total", () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 1e9 }), fc.array(fc.nat(), { maxLength: 20 }), (total, steps) => {
      let done = 0
      let previous = -1
      for (const step of steps) {
        done += step
        const line = CliProgress.render({ label: "pull", done, total, elapsedMs: 1000 })
        const bar = /\[([#.]+)\]\s+(\d+)%/.exec(line)!
        expect(bar[1]).toHaveLength(24)
        const filled = bar[1].indexOf(".") === -1 ? 24 : bar[1].indexOf(".")
        expect(filled).toBeGreaterThanOrEqual(previous)
        expect(Number(bar[2])).toBeLessThanOrEqual(100)
        previous = filled
      }
    }))
    expect(CliProgress.render({ label: "bootstrap", done: 4096, total: undefined, elapsedMs: 0 })).toBe("bootstrap  4.0 KB")
  })

  it("progress shows on a terminal in auto mode only for big transfers, always with 'always', never with 'never'", () => {
    const capture = (mode: CliProgress.Mode, isTTY: boolean, label: string, total: number | undefined, bytes: number) => {
      let out = ""
      const progress = CliProgress.make(mode, { isTTY, write: (t) => void (out += t) })
      Effect.runSync(Effect.all([progress.begin(label, total), progress.advance(bytes), progress.end]))
      return out
    }
    const big = CliProgress.AUTO_THRESHOLD_BYTES
    expect(capture("auto", true, "pull", 1000, 1000)).toBe("")
    expect(capture("auto", true, "pull", big, big)).toContain("100%")
    expect(capture("auto", true, "pull", undefined, big)).toContain("2.0 MB")
    expect(capture("auto", true, "bootstrap (base of generation 1)", undefined, 4096)).toContain("4.0 KB")
    expect(capture("auto", false, "pull", big, big)).toBe("")
    expect(capture("never", true, "pull", big, big)).toBe("")
    expect(capture("always", false, "pull", 10, 10)).toMatch(/100%.*\n$/)
  })
})
