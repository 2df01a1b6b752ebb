/**
 * Every SQLite value survives capture, replay (push and pull), the frames on the wire and a fresh replica
 * bit for bit: compared through `typeof()` and `hex()` on every replica and on the real libSQL client
 * reading the same server database, and -0.0 through the drivers' own values (SQLite prints it as 0.0).
 * The server is the real binary in its own process (the libSQL client blocks this thread during its calls).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import Database from "libsql"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { tempDir } from "./support/engine.js"
import { serverProcess } from "./support/process.js"

/** A value as SQL: bound when JavaScript holds it exactly, else an expression (TEXT that is not UTF-8). */
type Value = { readonly name: string; readonly sql: string; readonly params: ReadonlyArray<unknown> }

const bound = (name: string, value: unknown): Value => ({ name, sql: "?", params: [value] })
const textBytes = (name: string, hex: string): Value => ({ name, sql: `CAST(X'${hex}' AS TEXT)`, params: [] })

const values: ReadonlyArray<Value> = [
  bound("null", null),
  bound("int 0", 0n),
  bound("int max", 2n ** 63n - 1n),
  bound("int min", -(2n ** 63n)),
  bound("int 2^53+1", 2n ** 53n + 1n),
  bound("real -0.0", -0),
  bound("real 0.0", 0),
  bound("real +inf", Infinity),
  bound("real -inf", -Infinity),
  bound("real min subnormal", 5e-324),
  bound("real max subnormal", 2.225073858507201e-308),
  bound("real max", Number.MAX_VALUE),
  bound("real 0.1", 0.1),
  bound("real 1/3", 1 / 3),
  bound("real integral", 5),
  bound("text empty", ""),
  bound("text NUL inside", "a\0b"),
  bound("text only NUL", "\0"),
  bound("text quote and U+FFFD", "it's \uFFFD fine"),
  bound("text emoji", "\u{1F600} \u00e9"),
  textBytes("text invalid UTF-8", "FF00FE61"),
  textBytes("text lone continuation byte", "80"),
  textBytes("text truncated sequence then NUL", "E2820041"),
  bound("blob empty", Buffer.alloc(0)),
  bound("blob NUL", Buffer.from([0])),
  bound("blob 1 MB random", Crypto.randomBytes(1 << 20))
]

/**
 * The rows of `v` as every replica must show them: typeof and hex, but a REAL as the driver's number (hex()
 * of a REAL is its text, whose digits differ between SQLite versions), and the sign of a zero REAL.
 */
const SNAPSHOT = `SELECT id, typeof(k) AS tk, CASE typeof(k) WHEN 'real' THEN k ELSE hex(k) END AS hk,
  typeof(x) AS t, CASE typeof(x) WHEN 'real' THEN x ELSE hex(x) END AS h,
  CASE WHEN typeof(x) = 'real' AND x = 0 THEN x END AS zero FROM v ORDER BY id`

interface Row {
  readonly id: number
  readonly tk: string
  readonly hk: string | number
  readonly t: string
  readonly h: string | number
  readonly zero: number | null
}

/** Zero's sign made comparable (-0 and 0 are equal to `toEqual`'s eyes only through Object.is). */
const normalize = (rows: ReadonlyArray<Row>) =>
  rows.map((row) => ({ ...row, zero: row.zero === null ? null : Object.is(row.zero, -0) ? "-0" : "+0" }))

const open = (path: string, url: string) =>
  Layer.build(
    SyncDatabase.layer({ path, url, clientName: NodePath.basename(path) }).pipe(Layer.provide(NodeHttpClient.layerUndici))
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

describe("value fidelity over the real server", () => {
  it.scoped("every storage class, bit for bit, on both replicas and on the libSQL client (insert, update, delete, keys)", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data])
      const url = `${server.url}/db/values`
      const a = yield* open(NodePath.join(dir, "a"), url)
      const b = yield* open(NodePath.join(dir, "b"), url)

      // k and x: the value in columns without affinity; byvalue: the value as the key replay finds rows by
      // (without the values a key cannot tell apart: NULL, and 0 = 0.0 = -0.0, of which -0.0 stays)
      yield* a.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, k, x)")
      yield* a.execute("CREATE TABLE byvalue (k PRIMARY KEY, x) WITHOUT ROWID")
      for (const [i, value] of values.entries()) {
        yield* a.execute(`INSERT INTO v (id, k, x) VALUES (?, ${value.sql}, ${value.sql})`, [i, ...value.params, ...value.params])
        if (!["null", "int 0", "real 0.0"].includes(value.name)) {
          yield* a.execute(`INSERT INTO byvalue (k, x) VALUES (${value.sql}, ?)`, [...value.params, i])
        }
      }
      const expected = normalize(yield* a.query<Row>(SNAPSHOT))
      // what SQLite itself stored (no sync yet): the reference
      expect(expected.find((r) => r.id === 5)).toMatchObject({ t: "real", zero: "-0" })
      expect(expected.find((r) => r.id === 20)).toMatchObject({ t: "text", h: "FF00FE61" })
      expect(expected.find((r) => r.id === 16)).toMatchObject({ t: "text", h: "610062" })
      expect(yield* a.push).toBe(true)

      // B: a fresh replica; A after its own sync (its copy is rebuilt from the replayed frames)
      expect(yield* b.pull).toBe(true)
      yield* a.pull
      expect(normalize(yield* b.query<Row>(SNAPSHOT))).toEqual(expected)
      expect(normalize(yield* a.query<Row>(SNAPSHOT))).toEqual(expected)

      // B rewrites every row with the next value (a key lookup by exotic key, an update of both columns);
      // meanwhile A holds pending changes of its own that a pull replays again over B's.
      for (const [i] of values.entries()) {
        const next = values[(i + 1) % values.length]!
        yield* b.execute(
          `UPDATE v SET x = ${next.sql} WHERE id = ?`,
          [...next.params, i]
        )
      }
      yield* b.execute("DELETE FROM byvalue WHERE k = CAST(X'FF00FE61' AS TEXT)")
      yield* b.execute("UPDATE byvalue SET x = x + 1000 WHERE k = CAST(X'80' AS TEXT)")
      yield* a.execute("UPDATE byvalue SET x = -x WHERE k IS ?", [-0])
      yield* a.execute("DELETE FROM byvalue WHERE k IS ?", ["a\0b"])
      expect(yield* b.push).toBe(true)
      yield* a.pull // A's pending changes replayed over B's rows, re-recorded in A's new copy
      expect(yield* a.push).toBe(true)
      yield* b.pull

      const after = normalize(yield* b.query<Row>(SNAPSHOT))
      expect(normalize(yield* a.query<Row>(SNAPSHOT))).toEqual(after)
      expect(after.map((r) => [r.t, r.h, r.zero])).toEqual(
        expected.map((_, i) => expected[(i + 1) % expected.length]!).map((r) => [r.t, r.h, r.zero])
      )
      expect(after.map((r) => [r.tk, r.hk])).toEqual(expected.map((r) => [r.tk, r.hk]))
      const byValue = `SELECT typeof(k) AS t, CASE typeof(k) WHEN 'real' THEN k ELSE hex(k) END AS h, x FROM byvalue ORDER BY k`
      const keys = yield* a.query<{ t: string; h: string | number; x: number }>(byValue)
      expect(yield* b.query(byValue)).toEqual(keys)
      expect(keys.length).toBe(values.length - 3 - 2) // three values left out, two deleted
      expect(keys.find((r) => r.h === "80")?.x).toBe(1021)
      expect(keys.find((r) => r.t === "real" && Object.is(r.h, -0) && r.x < 0)).toBeDefined() // -0.0's row, negated
      expect(keys.find((r) => r.h === "610062")).toBeUndefined()

      // the real libSQL client, reading the same server database
      const libsql = new Database(NodePath.join(dir, "libsql.db"), { syncUrl: url, offline: true } as Database.Options)
      yield* Effect.addFinalizer(() => Effect.sync(() => libsql.close()))
      libsql.sync()
      expect(normalize(libsql.prepare(SNAPSHOT).all() as Array<Row>)).toEqual(after)
      expect(libsql.prepare(byValue).all()).toEqual(keys)
      expect(libsql.prepare("PRAGMA integrity_check").all()).toEqual([{ integrity_check: "ok" }])
    }), { timeout: 120_000 })

  it.scoped("the change log costs about the value's own size (a 10 MB blob is not written as hex)", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data])
      const a = yield* open(NodePath.join(dir, "a"), `${server.url}/db/big`)
      yield* a.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
      yield* a.push
      // Draft's file and WAL together: the write lands in the WAL, and a fold moves it into the file when the
      // WAL outgrows its bound, so only their sum says what the write cost.
      const draftBytes = () =>
        Fs.readdirSync(dir).filter((f) => f.includes("draft") && !f.endsWith("-shm"))
          .reduce((sum, f) => sum + Fs.statSync(NodePath.join(dir, f)).size, 0)
      const before = draftBytes()
      const blob = Crypto.randomBytes(10 << 20)
      yield* a.execute("INSERT INTO blobs VALUES (1, ?)", [blob])
      // the row (10 MB) and its log entry (10 MB), with page overhead; hex would add 20 MB more
      const written = draftBytes() - before
      expect(written).toBeGreaterThan(20e6)
      expect(written).toBeLessThan(23e6)
      expect(yield* a.push).toBe(true)
      yield* a.pull
      const [row] = yield* a.query<{ data: Uint8Array }>("SELECT data FROM blobs WHERE id = 1")
      expect(Buffer.compare(Buffer.from(row!.data), blob)).toBe(0)
    }), { timeout: 120_000 })
})
