import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import type * as ChangeCapture from "../src/ChangeCapture.js"
import * as ConflictPolicy from "../src/ConflictPolicy.js"
import { Resolution } from "../src/ConflictPolicy.js"
import BetterSqlite3 from "better-sqlite3"

const literalArb = fc.oneof(
  fc.constant("NULL"),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String),
  fc.string().map((s) => `'${s.replace(/'/g, "''")}'`)
)
const imageArb = fc.dictionary(fc.constantFrom("id", "a", "b", "c"), literalArb, { minKeys: 1 })
const kindArb = fc.constantFrom<ConflictPolicy.ConflictKind>("RowChanged", "RowMissing", "KeyExists", "Constraint")
const changeKindArb = fc.constantFrom<ChangeCapture.Change["kind"]>("insert", "update", "delete")

const conflictArb = fc.record({
  kind: kindArb,
  changeKind: changeKindArb,
  before: fc.option(imageArb, { nil: null }),
  after: fc.option(imageArb, { nil: null }),
  remote: fc.option(imageArb, { nil: null }),
  mode: fc.constantFrom<"push" | "pull">("push", "pull")
}).map((c): ConflictPolicy.Conflict => ({
  kind: c.kind,
  table: "t",
  key: [["id", "1"]],
  change: { id: 1, txId: 1, table: "t", kind: c.changeKind, before: c.before, after: c.after },
  remote: c.remote,
  mode: c.mode
}))

describe("ConflictPolicy.builtin", () => {
  it("remoteWins keeps the remote row for every kind of conflict", () =>
    fc.assert(fc.property(conflictArb, (conflict) => {
      expect(ConflictPolicy.builtin("remoteWins", conflict)).toEqual(Resolution.KeepRemote())
      expect(ConflictPolicy.dropsTransaction(ConflictPolicy.builtin("remoteWins", conflict))).toBe(true)
    })))

  it("lastPushWins and mergeColumns never drop a transaction; constraints are not theirs to settle", () =>
    fc.assert(fc.property(conflictArb, fc.constantFrom("lastPushWins", "mergeColumns") as fc.Arbitrary<"lastPushWins" | "mergeColumns">, (conflict, policy) => {
      const resolution = ConflictPolicy.builtin(policy, conflict)
      expect(ConflictPolicy.dropsTransaction(resolution)).toBe(false)
      expect(resolution._tag === "Fail").toBe(conflict.kind === "Constraint")
    })))

  it("mergeColumns keeps the local change as captured (its changed columns only)", () =>
    fc.assert(fc.property(conflictArb.filter((c) => c.kind !== "Constraint"), (conflict) => {
      expect(ConflictPolicy.builtin("mergeColumns", conflict)).toEqual(Resolution.KeepLocal())
    })))

  it("lastPushWins writes the whole local row over a row changed remotely, keeping columns only the remote has", () =>
    fc.assert(fc.property(imageArb, imageArb, imageArb, (before, after, remote) => {
      const conflict: ConflictPolicy.Conflict = {
        kind: "RowChanged", table: "t", key: [["id", "1"]], remote, mode: "push",
        change: { id: 1, txId: 1, table: "t", kind: "update", before, after }
      }
      const resolution = ConflictPolicy.builtin("lastPushWins", conflict)
      expect(resolution._tag).toBe("Replace")
      if (resolution._tag === "Replace") {
        for (const [column, value] of Object.entries(after)) expect(resolution.row[column]).toBe(value)
        for (const [column, value] of Object.entries(remote)) {
          if (!(column in after)) expect(resolution.row[column]).toBe(value)
        }
      }
    })))

  it("resolver(policy) answers what builtin answers; a function is used as is", async () => {
    const conflicts = fc.sample(conflictArb, 50)
    for (const conflict of conflicts) {
      for (const policy of ["lastPushWins", "remoteWins", "mergeColumns"] as const) {
        const { Effect } = await import("effect")
        expect(await Effect.runPromise(ConflictPolicy.resolver<never>(policy)(conflict))).toEqual(
          ConflictPolicy.builtin(policy, conflict)
        )
      }
    }
  })
})

describe("ConflictPolicy.literal / value", () => {
  const db = new BetterSqlite3(":memory:")
  db.defaultSafeIntegers(true)
  const quote = db.prepare("SELECT quote(?) AS q")
  it("literal agrees with SQLite's quote() and value inverts it", () =>
    fc.assert(fc.property(
      fc.oneof(
        fc.constant(null),
        fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
        fc.integer(),
        fc.string(),
        fc.uint8Array({ maxLength: 32 })
      ),
      (v) => {
        const text = ConflictPolicy.literal(v)
        const bound = typeof v === "number" ? BigInt(v) : v instanceof Uint8Array ? Buffer.from(v) : v
        expect(text).toBe((quote.get(bound) as { q: string }).q)
        const back = ConflictPolicy.value(text)
        if (typeof v === "bigint") expect(BigInt(back as number | bigint)).toBe(v)
        else expect(back).toEqual(v)
      }
    )))

  it("a literal of a REAL stays a REAL in SQLite", () =>
    fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
      const row = db.prepare(`SELECT typeof(${ConflictPolicy.literal(x)}) AS t, ${ConflictPolicy.literal(x)} AS v`).get() as { t: string; v: number | bigint }
      if (Number.isInteger(x) && Number.isSafeInteger(x)) expect(row.t).toBe("integer")
      else {
        expect(row.t).toBe("real")
        expect(Number(row.v)).toBe(x)
      }
    })))
})
