/**
 * SQLite values as JavaScript holds them exactly, and their SQL literals.
 *
 * Storage class ↔ JavaScript: NULL → null, INTEGER → bigint (all 64 bits), REAL → number (-0.0, infinities
 * and subnormals included), TEXT → string when its bytes are valid UTF-8, else {@link TextBytes}, BLOB →
 * Uint8Array. better-sqlite3 reads with `safeIntegers(true)` give exactly this (except TEXT that is not valid
 * UTF-8, which it decodes lossily: see {@link mayBeLossy}), and binding these values back stores the same
 * storage class (a number binds as REAL, a bigint as INTEGER).
 *
 * @internal
 */

/** TEXT whose bytes are not valid UTF-8 (or that must keep its exact bytes): bound with `CAST(? AS TEXT)`. */
export class TextBytes {
  constructor(readonly bytes: Uint8Array) {}
}

export type SqlValue = null | bigint | number | string | Uint8Array | TextBytes

const strictUtf8 = new TextDecoder("utf-8", { fatal: true })

/** TEXT bytes as the value that holds them exactly. */
export const textFromBytes = (bytes: Uint8Array): string | TextBytes => {
  try {
    return strictUtf8.decode(bytes)
  } catch {
    return new TextBytes(Uint8Array.from(bytes))
  }
}

/**
 * better-sqlite3 replaces invalid UTF-8 by U+FFFD when it reads TEXT: a string holding one may not be the
 * stored bytes, and its row is read again as bytes.
 */
export const mayBeLossy = (value: unknown): boolean => typeof value === "string" && value.includes("\uFFFD")

/** Values from a better-sqlite3 read (safeIntegers on): Buffers become plain Uint8Arrays of the same bytes. */
export const fromDriver = (value: unknown): SqlValue => {
  if (value === null || typeof value === "bigint" || typeof value === "number" || typeof value === "string") return value
  if (value instanceof Uint8Array || value instanceof TextBytes) return value
  if (value === undefined) return null
  throw new TypeError(`not an SQLite value: ${String(value)}`)
}

const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.byteLength !== b.byteLength) return false
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false
  return true
}

/** Exact equality: same storage class and same value, bit for bit (-0.0 is not 0.0). */
export const equals = (a: SqlValue, b: SqlValue): boolean => {
  if (a === b) return typeof a !== "number" || Object.is(a, b)
  if (typeof a === "number" && typeof b === "number") return Object.is(a, b)
  if (a instanceof TextBytes) return b instanceof TextBytes && bytesEqual(a.bytes, b.bytes)
  if (a instanceof Uint8Array) return b instanceof Uint8Array && !(b instanceof TextBytes) && bytesEqual(a, b)
  return false
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex").toUpperCase()

/** A REAL as a literal SQLite reads back bit for bit (JavaScript's shortest round-trip digits). */
const realLiteral = (n: number): string => {
  if (n === Infinity) return "9.0e+999"
  if (n === -Infinity) return "-9.0e+999"
  if (Number.isNaN(n)) return "NULL" // SQLite stores NaN as NULL
  if (Object.is(n, -0)) return "-0.0"
  const text = String(n)
  const e = text.indexOf("e")
  const mantissa = e < 0 ? text : text.slice(0, e)
  const withPoint = mantissa.includes(".") ? mantissa : `${mantissa}.0`
  return e < 0 ? withPoint : `${withPoint}${text.slice(e)}`
}

/**
 * The SQL literal of a value (what `quote()` writes, made exact): TEXT holding a NUL or invalid UTF-8 is
 * `CAST(X'..' AS TEXT)`, -0.0 is `-0.0`.
 */
export const toLiteral = (value: SqlValue): string => {
  if (value === null) return "NULL"
  if (typeof value === "bigint") return value.toString()
  if (typeof value === "number") return realLiteral(value)
  if (typeof value === "string") {
    if (value.includes("\0")) return `CAST(X'${hex(Buffer.from(value, "utf8"))}' AS TEXT)`
    return `'${value.replaceAll("'", "''")}'`
  }
  if (value instanceof TextBytes) return `CAST(X'${hex(value.bytes)}' AS TEXT)`
  return `X'${hex(value)}'`
}

const integerLiteral = /^-?\d+$/
const realLiteralPattern = /^-?\d+\.\d+(e[+-]\d+)?$/
const blobLiteral = /^X'((?:[0-9A-Fa-f]{2})*)'$/
const castText = /^CAST\(X'((?:[0-9A-Fa-f]{2})*)' AS TEXT\)$/

/** Whether `text` is a literal {@link fromLiteral} reads. */
export const isExactLiteral = (text: string): boolean => fromLiteral(text) !== undefined

/**
 * The value of a literal written by `quote()` or {@link toLiteral}; undefined when `text` is not one (it is
 * never evaluated as SQL). An integer literal beyond 64 bits reads as a REAL, as SQLite reads it.
 */
export const fromLiteral = (text: string): SqlValue | undefined => {
  if (text === "NULL") return null
  if (text.length >= 2 && text.charCodeAt(0) === 39 && text.charCodeAt(text.length - 1) === 39) {
    const body = text.slice(1, -1)
    if (body.replaceAll("''", "").includes("'")) return undefined
    return body.replaceAll("''", "'")
  }
  if (integerLiteral.test(text)) {
    const big = BigInt(text)
    return big >= -(2n ** 63n) && big < 2n ** 63n ? big : Number(text)
  }
  if (realLiteralPattern.test(text)) return Number(text)
  let m = blobLiteral.exec(text)
  if (m !== null) return Uint8Array.from(Buffer.from(m[1]!, "hex"))
  m = castText.exec(text)
  if (m !== null) {
    const bytes = Uint8Array.from(Buffer.from(m[1]!, "hex"))
    const decoded = textFromBytes(bytes)
    // A valid string with a NUL keeps its literal form through toLiteral; both are the same value.
    return decoded
  }
  return undefined
}

/** `?`, or `CAST(? AS TEXT)` where the value is TEXT given as bytes. */
export const placeholder = (value: SqlValue): string => value instanceof TextBytes ? "CAST(? AS TEXT)" : "?"

/** The value as better-sqlite3 binds it. */
export const bindable = (value: SqlValue): unknown => value instanceof TextBytes ? value.bytes : value

/** A short tag of the placeholders a row of values needs (part of a prepared statement's cache key). */
export const shape = (values: ReadonlyArray<SqlValue>): string => {
  let out = ""
  for (let i = 0; i < values.length; i++) if (values[i] instanceof TextBytes) out += `${i},`
  return out
}
