/**
 * Exact values (pure, with SQLite as the judge of literals) and replay's decision on them: the decision on
 * values is the decision on literals (the public `ChangeReplay.decide`), for every image and current row.
 */
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as fc from "fast-check"
import * as ChangeReplay from "../src/ChangeReplay.js"
import * as ChangeLog from "../src/internal/capture/changeLog.js"
import * as Values from "../src/internal/replay/replayValues.js"
import * as SqlValue from "../src/internal/sqlite/sqlValue.js"
import { tableABC } from "./support/tables.js"

const value: fc.Arbitrary<SqlValue.SqlValue> = fc.oneof(
  fc.constant(null),
  fc.bigInt(-(2n ** 63n), 2n ** 63n - 1n),
  fc.double({ noNaN: true }),
  fc.constantFrom(-0, 0, Infinity, -Infinity, 5e-324, 2.225073858507201e-308, Number.MAX_VALUE),
  fc.string({ unit: "binary" }).map((s) => s.replace(/[\uD800-\uDFFF]/g, "x")),
  fc.constantFrom("", "\0", "a\0b", "it's", "\uFFFD"),
  fc.uint8Array({ maxLength: 40 }).map((bytes) => SqlValue.textFromBytes(bytes)),
  fc.uint8Array({ maxLength: 40 })
)

const db = new BetterSqlite3(":memory:")

/** What SQLite makes of a literal: its storage class and exact value (TEXT as bytes). */
const evaluate = (literal: string): SqlValue.SqlValue => {
  const [type, raw] = db.prepare(
    `SELECT typeof(v), CASE typeof(v) WHEN 'text' THEN CAST(v AS BLOB) ELSE v END FROM (SELECT ${literal} AS v)`
  ).raw(true).safeIntegers(true).get() as [string, unknown]
  return type === "text" ? SqlValue.textFromBytes(raw as Uint8Array) : SqlValue.fromDriver(raw)
}

describe("SqlValue", () => {
  it("property: a value's literal reads back as the same value, in JavaScript and in SQLite", () =>
    fc.assert(fc.property(value, (v) => {
      const literal = SqlValue.toLiteral(v)
      const back = SqlValue.fromLiteral(literal)
      expect(back === undefined ? "unreadable" : SqlValue.equals(back, v), literal).toBe(true)
      expect(SqlValue.equals(evaluate(literal), v), literal).toBe(true)
    }), { numRuns: 500 }))

  it("equals tells storage classes, zero signs and bytes apart", () => {
    expect(SqlValue.equals(1n, 1)).toBe(false)
    expect(SqlValue.equals(0, -0)).toBe(false)
    expect(SqlValue.equals("1", 1n)).toBe(false)
    expect(SqlValue.equals(new Uint8Array([97]), "a")).toBe(false)
    expect(SqlValue.equals(new SqlValue.TextBytes(new Uint8Array([0xff])), new Uint8Array([0xff]))).toBe(false)
    expect(SqlValue.equals(new SqlValue.TextBytes(new Uint8Array([0xff])), new SqlValue.TextBytes(new Uint8Array([0xff]))))
      .toBe(true)
  })

  it("quote()'s literals read as what SQLite reads; anything else is refused", () => {
    for (const literal of ["NULL", "-9223372036854775808", "0.1", "1.0e+301", "-9.0e+999", "'it''s'", "X'00FF'", "''",
      "4.9406564584124654e-324", "CAST(X'FF00' AS TEXT)"]) {
      expect(SqlValue.equals(SqlValue.fromLiteral(literal)!, evaluate(literal)), literal).toBe(true)
    }
    for (const bad of ["1; DROP TABLE t", "'a' || 'b'", "'unterminated", "X'0'", "abs(1)", "", "1e5", "(SELECT 1)"]) {
      expect(SqlValue.fromLiteral(bad), bad).toBeUndefined()
    }
  })
})

describe("replay's decision on values", () => {
  const table = tableABC
  const small = fc.constantFrom<SqlValue.SqlValue>(null, 1n, 1, -0, 0, "1", "a\0b", new Uint8Array([1]))
  const image = fc.tuple(fc.constantFrom<SqlValue.SqlValue>(1n, 2n, "k"), small, small)
    .map((values): ChangeLog.Values => ({ columns: table.columns, values }))
  const kind = fc.constantFrom("insert", "update", "delete") as fc.Arbitrary<"insert" | "update" | "delete">

  it("property: the decision on values is the decision on their literals", () =>
    fc.assert(fc.property(kind, image, image, fc.option(image, { nil: null }), (k, before, after, current) => {
      const change: ChangeLog.LogChange = {
        id: 1,
        txId: 1,
        table: "t",
        kind: k,
        before: k === "insert" ? null : before,
        after: k === "delete" ? null : after,
        rowidBefore: null,
        rowidAfter: null,
        sql: null
      }
      const typed = Values.toPublic(Values.decide(change, current, table))
      const literal = ChangeReplay.decide(ChangeLog.toPublic(change), Values.publicImage(current), table)
      expect(typed).toEqual(literal)
    }), { numRuns: 1000 }))

  it("property: statements bind every value and splice none", () =>
    fc.assert(fc.property(kind, image, image, fc.option(image, { nil: null }), (k, before, after, current) => {
      const change: ChangeLog.LogChange = {
        id: 1, txId: 1, table: "t", kind: k,
        before: k === "insert" ? null : before,
        after: k === "delete" ? null : after,
        rowidBefore: null, rowidAfter: null, sql: null
      }
      for (const statement of Values.statements(Values.decide(change, current, table), table)) {
        const placeholders = statement.sql.split("?").length - 1
        expect(placeholders).toBe(statement.params.length)
        expect(statement.sql).not.toMatch(/'|X'/)
      }
    }), { numRuns: 500 }))
})
