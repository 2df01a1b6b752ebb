/**
 * Pure parts of the command line: positional SQL parameters, JSON rendering of SQLite values, and the
 * human table of `query`. Property-tested in test/CliParams.test.ts.
 *
 * @internal
 */
import * as Either from "effect/Either"

/** A value bound to a statement: what better-sqlite3 accepts. */
export type Param = null | number | bigint | string | Uint8Array

const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n
const CANONICAL_INTEGER = /^-?(0|[1-9][0-9]*)$/
// JSON's number grammar with a fraction or an exponent (so "1.5", "-2e3", "0.0"; not "1.", ".5", "1e").
const REAL = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/
const HEX_BLOB = /^[xX]'([0-9a-fA-F]*)'$/
const QUOTED = /^'(.*)'$/s

/**
 * One positional parameter of `exec`/`query`, read like an SQL literal where it looks like one:
 * - `NULL` (any case) → NULL;
 * - a canonical integer (`0`, `42`, `-7`; no `+`, no leading zeros) → INTEGER, bound as a bigint
 *   (better-sqlite3 binds every JS number as REAL, which a column without INTEGER affinity would keep);
 *   refused outside the 64-bit range;
 * - a number with a fraction or exponent (`1.5`, `-2e3`) → REAL;
 * - `X'00ff'` → BLOB (even number of hex digits);
 * - `'text'` → TEXT without the quotes, `''` inside standing for one `'` (how to pass `'42'`, `'NULL'`);
 * - anything else (including `007`, `+1`, `1_000`) → TEXT exactly as written.
 */
export const parseParam = (input: string): Either.Either<Param, string> => {
  if (input.toUpperCase() === "NULL") return Either.right(null)
  if (CANONICAL_INTEGER.test(input)) {
    const n = BigInt(input)
    if (n < INT64_MIN || n > INT64_MAX) {
      return Either.left(
        `parameter ${input} is outside SQLite's 64-bit integer range; write '${input}' for text or ${input}.0 for a real`
      )
    }
    return Either.right(n)
  }
  if (REAL.test(input)) {
    const x = Number(input)
    if (!Number.isFinite(x)) return Either.left(`parameter ${input} is not a finite real number`)
    return Either.right(x)
  }
  const hex = HEX_BLOB.exec(input)
  if (hex !== null) {
    if (hex[1].length % 2 !== 0) return Either.left(`blob parameter ${input} has an odd number of hex digits`)
    return Either.right(Uint8Array.from(Buffer.from(hex[1], "hex")))
  }
  const quoted = QUOTED.exec(input)
  if (quoted !== null) {
    const body = quoted[1]
    if (body.replace(/''/g, "").includes("'")) {
      return Either.left(`text parameter ${input}: a ' inside quotes must be doubled ('')`)
    }
    return Either.right(body.replace(/''/g, "'"))
  }
  return Either.right(input)
}

/** Every parameter, or the first error. */
export const parseParams = (inputs: ReadonlyArray<string>): Either.Either<Array<Param>, string> => {
  const out: Array<Param> = []
  for (const input of inputs) {
    const parsed = parseParam(input)
    if (Either.isLeft(parsed)) return Either.left(parsed.left)
    out.push(parsed.right)
  }
  return Either.right(out)
}

/**
 * A value read from SQLite as JSON-ready data. Integers come as bigint when read with safe integers:
 * those within ±(2^53 - 1) become numbers; larger ones stay bigint and `stringify` writes their exact
 * digits. BLOBs become `{ "$blob": "<hex>" }`.
 */
export const toJsonValue = (value: unknown): unknown => {
  if (typeof value === "bigint") {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value
  }
  if (value instanceof Uint8Array) return { $blob: Buffer.from(value).toString("hex") }
  if (value instanceof Date) return value.toISOString()
  if (Array.isArray(value)) return value.map(toJsonValue)
  if (value !== null && typeof value === "object") {
    // defineProperty: a column may be called "__proto__".
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) {
      Object.defineProperty(out, k, { value: toJsonValue(v), enumerable: true, writable: true, configurable: true })
    }
    return out
  }
  if (typeof value === "number" && !Number.isFinite(value)) return null
  return value
}

/**
 * JSON text of `value` (after `toJsonValue`), one line. Bigints are written as exact integer literals,
 * which is valid JSON; parsers that read numbers as doubles round them, `jq` 1.7+ keeps them.
 */
export const stringify = (value: unknown): string => write(toJsonValue(value)) ?? "null"

const write = (value: unknown): string | undefined => {
  if (typeof value === "bigint") return value.toString()
  if (value === null || typeof value !== "object") return JSON.stringify(value)
  if (Array.isArray(value)) return `[${value.map((v) => write(v) ?? "null").join(",")}]`
  const fields: Array<string> = []
  for (const [k, v] of Object.entries(value)) {
    const text = write(v)
    if (text !== undefined) fields.push(`${JSON.stringify(k)}:${text}`)
  }
  return `{${fields.join(",")}}`
}

/** A value as one cell of the human table. */
export const cell = (value: unknown): string => {
  if (value === null || value === undefined) return "NULL"
  if (typeof value === "bigint") return value.toString()
  if (value instanceof Uint8Array) return `X'${Buffer.from(value).toString("hex").toUpperCase()}'`
  if (typeof value === "string") return value.replace(/\r?\n/g, "\\n")
  if (value instanceof Date) return value.toISOString()
  // Nested data (a conflict's row images) as its JSON text.
  if (typeof value === "object") return stringify(value)
  return String(value)
}

/** Rows as an aligned text table with a header; `(n rows)` below it. Columns come from the first row. */
export const table = (rows: ReadonlyArray<Record<string, unknown>>): string => {
  if (rows.length === 0) return "(0 rows)"
  const columns = Object.keys(rows[0])
  const cells = rows.map((row) => columns.map((c) => cell(row[c])))
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i].length)))
  const line = (values: ReadonlyArray<string>) => values.map((v, i) => v.padEnd(widths[i])).join("  ").trimEnd()
  return [
    line(columns),
    line(widths.map((w) => "-".repeat(w))),
    ...cells.map(line),
    `(${rows.length} ${rows.length === 1 ? "row" : "rows"})`
  ].join("\n")
}

/** `1234567` → `1.2 MB`. */
export const formatBytes = (bytes: number): string => {
  if (bytes < 1024) return `${bytes} B`
  const units = ["KB", "MB", "GB", "TB"]
  let value = bytes / 1024
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`
}
