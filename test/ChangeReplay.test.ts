import * as SqlClient from "@effect/sql/SqlClient"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import type * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import fc from "fast-check"
import * as ChangeCapture from "../src/ChangeCapture.js"
import * as ChangeReplay from "../src/ChangeReplay.js"
import * as ConflictPolicy from "../src/ConflictPolicy.js"
import type { LogChange } from "../src/internal/capture/changeLog.js"
import * as Prefetch from "../src/internal/replay/prefetch.js"
import * as Values from "../src/internal/replay/replayValues.js"
import * as SqlValue from "../src/internal/sqlite/sqlValue.js"
import type * as TableInfo from "../src/internal/sqlite/tableInfo.js"
import { indexItems, isLiteral, partialIndexWhere } from "../src/internal/sqlite/sqlText.js"
import { dump, exec, on, open, push, run } from "./support/changeSync.js"
import { tableABC } from "./support/tables.js"

type Client = SqlClient.SqlClient

const both = (a: Client, b: Client, ...statements: ReadonlyArray<string>) =>
  Effect.forEach(statements, (s) => Effect.zipRight(exec(a, s), exec(b, s)), { discard: true })

/** A (captured Draft) and B (Synced), both with `schema`, capture installed on A. */
const pair = (...schema: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const a = yield* open()
    const b = yield* open()
    yield* both(a, b, ...schema)
    yield* on(a, ChangeCapture.install)
    return { a, b }
  })

const expectSame = (a: Client, b: Client) =>
  Effect.gen(function*() {
    expect(yield* dump(b)).toEqual(yield* dump(a))
  })

const tx = (a: Client, ...statements: ReadonlyArray<string>) =>
  on(a, ChangeCapture.transaction(Effect.forEach(statements, (s) => ChangeCapture.execute(s), { discard: true })))

// ---------------------------------------------------------------------------------------------------------
// Random values and workloads
// ---------------------------------------------------------------------------------------------------------

const value: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.bigInt(-(2n ** 63n), 2n ** 63n - 1n),
  fc.integer(),
  fc.double(),
  fc.constantFrom(2 ** 53 + 1, 0.1, 1e308, 5e-324, 1.0),
  fc.string({ unit: "grapheme", maxLength: 30 }),
  fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes))
)

const bind = (v: unknown) => typeof v === "number" && Number.isNaN(v) ? null : v

const WORKLOAD_SCHEMA = [
  "CREATE TABLE t_int (id INTEGER PRIMARY KEY, v, w REAL)",
  "CREATE TABLE t_auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v INTEGER)",
  "CREATE TABLE t_comp (a TEXT, b INTEGER, v, PRIMARY KEY (a, b))",
  "CREATE TABLE t_wr (k TEXT PRIMARY KEY, u INTEGER UNIQUE, v) WITHOUT ROWID",
  "CREATE TABLE t_nopk (rowid TEXT, v)",
  "CREATE TABLE t_parent (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
  "CREATE TABLE t_child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES t_parent(id) ON DELETE CASCADE, v)",
  "CREATE TABLE t_log (id INTEGER PRIMARY KEY AUTOINCREMENT, what)",
  `CREATE TRIGGER t_int_log AFTER DELETE ON t_int BEGIN
     INSERT INTO t_log (what) VALUES ('deleted ' || OLD.id);
     UPDATE t_parent SET name = name || '.' WHERE id = OLD.id;
   END`
]

type Op = { readonly sql: string; readonly params: ReadonlyArray<unknown> } | { readonly push: true }

const key = fc.integer({ min: 1, max: 6 })
const conflict = fc.constantFrom("", "OR REPLACE ", "OR IGNORE ")
const statementOp: fc.Arbitrary<Op> = fc.oneof(
  fc.tuple(conflict, key, value, value).map(([c, k, v, w]) => ({
    sql: `INSERT ${c}INTO t_int VALUES (?, ?, ?)`,
    params: [k, bind(v), bind(w)]
  })),
  fc.tuple(key, value).map(([k, v]) => ({ sql: `UPDATE t_int SET v = ? WHERE id = ?`, params: [bind(v), k] })),
  fc.tuple(conflict, key, key).map(([c, k1, k2]) => ({ sql: `UPDATE ${c}t_int SET id = ? WHERE id = ?`, params: [k2, k1] })),
  key.map((k) => ({ sql: `DELETE FROM t_int WHERE id = ?`, params: [k] })),
  value.map((v) => ({ sql: `INSERT INTO t_auto (v) VALUES (?)`, params: [bind(v)] })),
  key.map((k) => ({ sql: `DELETE FROM t_auto WHERE id = ?`, params: [k] })),
  fc.tuple(conflict, fc.constantFrom("x", "y"), key, value).map(([c, a, b, v]) => ({
    sql: `INSERT ${c}INTO t_comp VALUES (?, ?, ?)`,
    params: [a, b, bind(v)]
  })),
  fc.tuple(fc.constantFrom("x", "y"), key, key).map(([a, b1, b2]) => ({
    sql: `UPDATE OR IGNORE t_comp SET b = ?, a = ? WHERE a = 'x' AND b = ?`,
    params: [b2, a, b1]
  })),
  fc.tuple(conflict, fc.constantFrom("k1", "k2", "k3"), key, value).map(([c, k, u, v]) => ({
    sql: `INSERT ${c}INTO t_wr VALUES (?, ?, ?)`,
    params: [k, u, bind(v)]
  })),
  fc.tuple(conflict, fc.constantFrom("k1", "k2", "k3"), key).map(([c, k, u]) => ({
    sql: `UPDATE ${c}t_wr SET u = ? WHERE k = ?`,
    params: [u, k]
  })),
  fc.constantFrom("k1", "k2", "k3").map((k) => ({ sql: `DELETE FROM t_wr WHERE k = ?`, params: [k] })),
  fc.tuple(value, value).map(([r, v]) => ({ sql: `INSERT INTO t_nopk VALUES (?, ?)`, params: [bind(r), bind(v)] })),
  fc.tuple(key, value).map(([k, v]) => ({ sql: `UPDATE t_nopk SET v = ? WHERE _rowid_ = ?`, params: [bind(v), k] })),
  fc.tuple(key, key).map(([k1, k2]) => ({ sql: `UPDATE OR REPLACE t_nopk SET _rowid_ = ? WHERE _rowid_ = ?`, params: [k2, k1] })),
  key.map((k) => ({ sql: `DELETE FROM t_nopk WHERE _rowid_ = ?`, params: [k] })),
  fc.tuple(conflict, key, fc.constantFrom("p", "q", "r")).map(([c, k, n]) => ({
    sql: `INSERT ${c}INTO t_parent VALUES (?, ?)`,
    params: [k, n]
  })),
  key.map((k) => ({ sql: `DELETE FROM t_parent WHERE id = ?`, params: [k] })),
  fc.tuple(conflict, key, key, value).map(([c, k, p, v]) => ({
    sql: `INSERT ${c}INTO t_child VALUES (?, ?, ?)`,
    params: [k, p, bind(v)]
  })),
  // schema changes in the middle of the data: new columns, indexes, a table created (and written) later
  fc.tuple(fc.integer({ min: 0, max: 1e9 }), fc.constantFrom("NULL", "7", "'d'", "2.5")).map(([n, d]) => ({
    sql: `ALTER TABLE t_int ADD COLUMN c${n} DEFAULT ${d}`,
    params: []
  })),
  fc.constantFrom("t_int (v)", "t_wr (v, k)", "t_child (parent)").map((on) => ({
    sql: `CREATE INDEX IF NOT EXISTS "i ${on}" ON ${on}`,
    params: []
  })),
  fc.constant({ sql: "CREATE TABLE IF NOT EXISTS t_late (k INTEGER PRIMARY KEY, v UNIQUE)", params: [] }),
  fc.tuple(conflict, key, value).map(([c, k, v]) => ({ sql: `INSERT ${c}INTO t_late VALUES (?, ?)`, params: [k, bind(v)] }))
)
const op: fc.Arbitrary<Op> = fc.oneof({ weight: 12, arbitrary: statementOp }, {
  weight: 1,
  arbitrary: fc.constant({ push: true as const })
})
const workload = fc.array(fc.array(op, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 25 })

/** Runs a workload on A (each inner array one local transaction; failed statements are skipped). */
const runWorkload = (a: Client, b: Client, groups: ReadonlyArray<ReadonlyArray<Op>>) =>
  Effect.gen(function*() {
    for (const group of groups) {
      yield* on(
        a,
        ChangeCapture.transaction(Effect.forEach(group, (o) =>
          "push" in o ? Effect.void : Effect.ignore(ChangeCapture.execute(o.sql, o.params)), { discard: true }))
      )
      if (group.some((o) => "push" in o)) {
        yield* push(a, b)
        yield* expectSame(a, b)
      }
    }
  })

const runProperty = (program: Effect.Effect<void, unknown, import("effect/Scope").Scope>) =>
  Effect.runPromise(Effect.scoped(program))

describe("ChangeReplay", () => {
  describe("pure planning", () => {
    const table = tableABC
    const image = fc.record({
      a: fc.constantFrom("1", "2", "'k'"),
      b: fc.constantFrom("NULL", "1", "1.0", "'1'", "X'01'"),
      c: fc.constantFrom("NULL", "2", "'z'")
    })

    it("decide (last push wins) writes exactly the changed columns, at the before key", () =>
      fc.assert(fc.property(image, image, fc.option(image, { nil: null }), (before, after, current) => {
        const change: ChangeCapture.Change = { id: 1, txId: 1, table: "t", kind: "update", before, after }
        const decision = ChangeReplay.decide(change, current, table)
        if (current === null) {
          expect(decision).toMatchObject({ _tag: "Upsert", row: after, conflict: "RowMissing" })
          return
        }
        const changed = ["a", "b", "c"].filter((c) => before[c as "a"] !== after[c as "a"])
        if (changed.length === 0) {
          expect(decision._tag).toBe("Skip")
        } else {
          expect(decision._tag).toBe("Update")
          if (decision._tag !== "Update") return
          expect(Object.keys(decision.set).sort()).toEqual(changed)
          expect(decision.key).toEqual([["a", before.a]])
          const same = before.a === current.a && before.b === current.b && before.c === current.c
          expect(decision.conflict).toBe(same ? null : "RowChanged")
        }
      })))

    it("decide: deletes of missing rows are skipped, inserts over other values report KeyExists", () =>
      fc.assert(fc.property(image, fc.option(image, { nil: null }), (row, current) => {
        const del = ChangeReplay.decide({ id: 1, txId: 1, table: "t", kind: "delete", before: row, after: null }, current, table)
        expect(del._tag).toBe(current === null ? "Skip" : "Delete")
        const ins = ChangeReplay.decide({ id: 1, txId: 1, table: "t", kind: "insert", before: null, after: row }, current, table)
        const same = current !== null && row.a === current.a && row.b === current.b && row.c === current.c
        expect(ins._tag).toBe(same ? "Skip" : "Upsert")
        if (ins._tag === "Upsert") expect(ins.conflict).toBe(current === null ? null : "KeyExists")
      })))

    it("statements never splice anything but identifiers and literals", () => {
      const weird: ChangeReplay.TableInfo = { ...table, name: `we"ird'; DROP TABLE x; --`, columns: [`a"`, "b"], primaryKey: [`a"`] }
      const [statement] = ChangeReplay.plan(
        { id: 1, txId: 1, table: weird.name, kind: "insert", before: null, after: { [`a"`]: "'x'", b: "NULL" } },
        weird,
        null
      )
      expect(statement).toBe(
        `INSERT INTO "we""ird'; DROP TABLE x; --" ("a""", "b") VALUES ('x', NULL) ON CONFLICT ("a""") DO UPDATE SET "b" = excluded."b"`
      )
    })

    it("indexItems reads the key parts of a CREATE INDEX", () => {
      expect(indexItems(`CREATE UNIQUE INDEX "i(" ON "t(" (lower(a), b COLLATE NOCASE DESC, "c,d" ASC) WHERE x IN (1, 2)`))
        .toEqual(["lower(a)", "b", `"c,d"`])
      expect(indexItems(`CREATE UNIQUE INDEX i ON t (coalesce(a, ',') COLLATE "my coll")`)).toEqual(["coalesce(a, ',')"])
      expect(indexItems(`CREATE UNIQUE INDEX i ON t`)).toBeUndefined()
    })

    it("partialIndexWhere finds the top-level WHERE only", () => {
      expect(partialIndexWhere(`CREATE UNIQUE INDEX i ON t (a) WHERE b = 1`)).toBe("b = 1")
      expect(partialIndexWhere(`CREATE UNIQUE INDEX "where" ON "where" ([where], a) WHERE 'where' <> a -- c`))
        .toBe("'where' <> a -- c")
      expect(partialIndexWhere(`CREATE UNIQUE INDEX i ON t (a COLLATE NOCASE)`)).toBeUndefined()
      expect(partialIndexWhere(`CREATE INDEX i ON t (a) /* WHERE */`)).toBeUndefined()
    })

    it("isLiteral accepts what quote() writes and rejects anything else", () => {
      for (const ok of ["NULL", "-9223372036854775808", "0.1", "1.0e+301", "-9.0e+999", "'it''s'", "X'00FF'", "''"]) {
        expect(isLiteral(ok)).toBe(true)
      }
      for (const bad of ["1; DROP TABLE t", "'a' || 'b'", "'unterminated", "'a'b'", "X'0'", "x'00'", "abs(1)", "", "1e5"]) {
        expect(isLiteral(bad)).toBe(false)
      }
    })
  })

  describe("against real SQLite", () => {
    it("property: literals round-trip exactly (plan an insert on B from A's quote() images)", () =>
      fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(value, value, value), { minLength: 1, maxLength: 20 }), (rows) =>
          runProperty(Effect.gen(function*() {
            const { a, b } = yield* pair("CREATE TABLE r (id INTEGER PRIMARY KEY, x, y REAL, z INTEGER)")
            for (const [i, [x, y, z]] of rows.entries()) {
              yield* on(a, ChangeCapture.execute("INSERT INTO r VALUES (?, ?, ?, ?)", [i, bind(x), bind(y), bind(z)]))
            }
            const changes = yield* on(a, ChangeCapture.pending(0))
            const info = (yield* on(b, ChangeReplay.readTableInfo("r")))!
            for (const change of changes) {
              for (const statement of ChangeReplay.plan(change, info, null)) yield* exec(b, statement)
            }
            yield* expectSame(a, b)
          }))
        ),
        { numRuns: 40 }
      ))

    it("property: REAL values survive capture and replay bit for bit; 64-bit integers exactly", () =>
      fc.assert(
        fc.asyncProperty(
          fc.array(fc.tuple(fc.double({ noNaN: true }), fc.bigInt(-(2n ** 63n), 2n ** 63n - 1n)), { minLength: 1, maxLength: 30 }),
          (pairs) =>
            runProperty(Effect.gen(function*() {
              const { a, b } = yield* pair("CREATE TABLE f (id INTEGER PRIMARY KEY, r REAL, i INTEGER)")
              yield* tx(a, ...pairs.map((_, i) => `INSERT INTO f (id) VALUES (${i})`))
              for (const [i, [r, n]] of pairs.entries()) {
                yield* on(a, ChangeCapture.execute("UPDATE f SET r = ?, i = ? WHERE id = ?", [r, n, i]))
              }
              yield* push(a, b)
              const rows = yield* b.unsafe<{ r: number; i: bigint }>("SELECT r, i FROM f ORDER BY id").pipe(
                Effect.provideService(SqlClient.SafeIntegers, true)
              )
              rows.forEach(({ i: n, r }, i) => {
                const [expectedR, expectedN] = pairs[i]!
                // SQLite stores -0.0 as 0.0 (quote() and the file agree); everything else is exact
                expect(Object.is(r, expectedR === 0 ? 0 : expectedR)).toBe(true)
                expect(n).toBe(expectedN)
              })
            }))
        ),
        { numRuns: 30 }
      ))

    it("property: random workloads on A replayed onto B leave identical user tables", () =>
      fc.assert(
        fc.asyncProperty(workload, (groups) =>
          runProperty(Effect.gen(function*() {
            const { a, b } = yield* pair(...WORKLOAD_SCHEMA)
            yield* runWorkload(a, b, groups)
            yield* push(a, b)
            yield* expectSame(a, b)
            // exactly once: replaying everything again is a no-op
            const all = yield* on(a, ChangeCapture.pending(0))
            const last = yield* on(a, ChangeCapture.lastChangeId)
            const again = yield* on(b, ChangeReplay.apply(all, { mode: "push", clientId: "A" }))
            expect(again.lastChangeId).toBe(last)
            yield* expectSame(a, b)
            // pull mode from scratch onto a fresh copy: same tables, same log (ids included)
            const c = yield* open()
            yield* Effect.forEach(WORKLOAD_SCHEMA, (s) => exec(c, s), { discard: true })
            yield* on(c, ChangeReplay.apply(all, { mode: "pull" }))
            yield* expectSame(a, c)
            expect(yield* on(c, ChangeCapture.pending(0))).toEqual(all)
            expect(yield* on(c, ChangeReplay.progress("A"))).toBe(0)
          }))
        ),
        { numRuns: 40 }
      ))
  })

  describe("hard cases", () => {
    it.scoped("composite key, NULL in a key column, key-changing update, delete + reinsert", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE c (a TEXT, b INTEGER, v, PRIMARY KEY (a, b))")
        yield* run(a, "INSERT INTO c VALUES ('x', 1, 'one'), (NULL, 2, 'null-key'), ('y', NULL, 'null-b')")
        yield* push(a, b)
        yield* expectSame(a, b)
        yield* run(a, "UPDATE c SET v = 'changed' WHERE a IS NULL")
        yield* run(a, "UPDATE c SET a = 'z', b = 9 WHERE a = 'x'")
        yield* run(a, "UPDATE c SET b = 3 WHERE a = 'y'")
        yield* tx(a, "DELETE FROM c WHERE a = 'z'", "INSERT INTO c VALUES ('z', 9, 'reborn')")
        yield* push(a, b)
        yield* expectSame(a, b)
        yield* run(a, "DELETE FROM c WHERE a IS NULL")
        yield* push(a, b)
        yield* expectSame(a, b)
        expect((yield* dump(b)).split("\n").filter((l) => l.startsWith("  ")).length).toBe(2)
      }))

    it.scoped("WITHOUT ROWID, INTEGER PRIMARY KEY, AUTOINCREMENT, no key with a column named rowid", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          "CREATE TABLE w (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
          "CREATE TABLE ipk (id INTEGER PRIMARY KEY, v)",
          "CREATE TABLE auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
          "CREATE TABLE plain (rowid TEXT, \"_rowid_\" INTEGER, v)"
        )
        yield* tx(
          a,
          "INSERT INTO w VALUES ('a', 1), ('b', 2)",
          "INSERT INTO ipk (v) VALUES ('first'), ('second')",
          "INSERT INTO auto (v) VALUES ('x'), ('y')",
          "DELETE FROM auto WHERE v = 'y'",
          "INSERT INTO auto (v) VALUES ('z')",
          "INSERT INTO plain VALUES ('not-the-rowid', 7, 'p'), ('dup', 7, 'p')"
        )
        yield* push(a, b)
        yield* expectSame(a, b)
        yield* tx(a, "UPDATE plain SET oid = 40 WHERE rowid = 'dup'", "UPDATE w SET k = 'c' WHERE k = 'a'", "DELETE FROM ipk WHERE id = 1")
        yield* push(a, b)
        yield* expectSame(a, b)
        const rows = yield* b.unsafe("SELECT oid, rowid FROM plain ORDER BY oid").values
        expect(rows).toEqual([[1, "not-the-rowid"], [40, "dup"]])
        // B's own AUTOINCREMENT counter does not drift below replicated ids
        const seq = yield* b.unsafe("SELECT seq FROM sqlite_sequence WHERE name = 'auto'").values
        expect(seq).toEqual([[3]])
      }))

    it.scoped("INSERT OR REPLACE evicting a row through a UNIQUE index replays the eviction", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v)")
        yield* run(a, "INSERT INTO u VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two')")
        yield* push(a, b)
        yield* run(a, "INSERT OR REPLACE INTO u VALUES (3, 'a@x', 'three')")
        yield* run(a, "UPDATE OR REPLACE u SET email = 'b@x' WHERE id = 3")
        const error = yield* push(a, b).pipe(Effect.flip, Effect.option)
        expect(error._tag).toBe("None")
        yield* expectSame(a, b)
        expect(yield* b.unsafe("SELECT id, email FROM u").values).toEqual([[3, "b@x"]])
      }))

    it.scoped("an eviction is logged even when a user trigger writes the same table during the write", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE)",
          `CREATE TRIGGER u_shadow AFTER INSERT ON u WHEN NEW.id < 100 BEGIN
             INSERT OR REPLACE INTO u VALUES (NEW.id + 100, NEW.email || '.shadow');
           END`
        )
        yield* run(a, "INSERT INTO u VALUES (1, 'a'), (2, 'b')")
        // a plain insert that collides (UNIQUE fails, nothing logged), then a REPLACE that evicts row 1,
        // whose user trigger in turn evicts row 101 through its own REPLACE
        yield* run(a, "INSERT INTO u VALUES (3, 'a.shadow')").pipe(Effect.ignore)
        yield* run(a, "INSERT OR REPLACE INTO u VALUES (4, 'a')")
        yield* push(a, b)
        yield* expectSame(a, b)
        expect(yield* b.unsafe("SELECT id, email FROM u ORDER BY id").values).toEqual([
          [2, "b"],
          [4, "a"],
          [102, "b.shadow"],
          [104, "a.shadow"]
        ])
      }))

    it.scoped("INSERT OR REPLACE eviction through a partial UNIQUE index evicts only rows the index holds", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          "CREATE TABLE s (id INTEGER PRIMARY KEY, user TEXT, active INTEGER, note TEXT)",
          `CREATE UNIQUE INDEX "one where active" ON s (user) WHERE active = 1 AND note IS NOT 'WHERE (x'`
        )
        yield* run(a, "INSERT INTO s VALUES (1, 'u', 1, NULL), (2, 'u', 0, NULL), (3, 'v', 1, 'WHERE (x')")
        yield* push(a, b)
        yield* run(a, "INSERT OR REPLACE INTO s VALUES (4, 'u', 1, 'new')") // evicts 1, not 2
        yield* run(a, "INSERT OR REPLACE INTO s VALUES (5, 'v', 1, NULL)") // 3 is not in the index: no eviction
        yield* run(a, "UPDATE OR REPLACE s SET active = 1 WHERE id = 2") // evicts 4
        const kinds = (yield* on(a, ChangeCapture.pending(3))).map((c) => `${c.kind} ${(c.before ?? c.after)!["id"]}`)
        expect(kinds).toEqual(["delete 1", "insert 4", "insert 5", "delete 4", "update 2"])
        yield* push(a, b)
        yield* expectSame(a, b)
      }))

    it.scoped("INSERT OR REPLACE eviction through a UNIQUE index on expressions", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          "CREATE TABLE m (id INTEGER PRIMARY KEY, email TEXT, domain TEXT)",
          "CREATE UNIQUE INDEX m_email ON m (lower(trim(email)), coalesce(domain, '-') COLLATE NOCASE DESC)"
        )
        yield* run(a, "INSERT INTO m VALUES (1, 'Ann@x', NULL), (2, 'ann@x', 'y'), (3, 'bob@x', 'Z')")
        yield* push(a, b)
        yield* run(a, "INSERT OR REPLACE INTO m VALUES (4, ' ANN@X ', '-')") // evicts 1 only
        yield* run(a, "UPDATE OR REPLACE m SET domain = 'z', email = 'BOB@x' WHERE id = 2") // evicts 3
        const kinds = (yield* on(a, ChangeCapture.pending(3))).map((c) => `${c.kind} ${(c.before ?? c.after)!["id"]}`)
        expect(kinds).toEqual(["delete 1", "insert 4", "delete 3", "update 2"])
        yield* push(a, b)
        yield* expectSame(a, b)
      }))

    it.scoped("ON DELETE CASCADE and child-before-parent order under deferred foreign keys", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT)",
          "CREATE TABLE ch (id INTEGER PRIMARY KEY, p INTEGER NOT NULL REFERENCES p(id) ON DELETE CASCADE, v)"
        )
        yield* on(
          a,
          ChangeCapture.transaction(Effect.gen(function*() {
            yield* ChangeCapture.execute("PRAGMA defer_foreign_keys = ON")
            yield* ChangeCapture.execute("INSERT INTO ch VALUES (10, 1, 'child first')")
            yield* ChangeCapture.execute("INSERT INTO p VALUES (1, 'parent')")
          }))
        )
        yield* run(a, "INSERT INTO ch VALUES (11, 1, 'second child')")
        yield* push(a, b)
        yield* expectSame(a, b)
        yield* run(a, "DELETE FROM p WHERE id = 1")
        const kinds = (yield* on(a, ChangeCapture.pending(3))).map((c) => `${c.kind} ${c.table}`)
        expect(kinds).toEqual(["delete ch", "delete ch", "delete p"])
        yield* push(a, b)
        yield* expectSame(a, b)
        const fk = yield* b.unsafe("PRAGMA foreign_key_check").values
        expect(fk).toEqual([])
      }))

    it.scoped("a foreign key broken by replay is a typed error, rolled back, and the connection stays usable", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          "CREATE TABLE p (id INTEGER PRIMARY KEY)",
          "CREATE TABLE ch (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id))"
        )
        yield* run(a, "INSERT INTO p VALUES (1)")
        yield* push(a, b)
        yield* exec(b, "DELETE FROM p") // another replica removed the parent
        yield* run(a, "INSERT INTO ch VALUES (10, 1)")
        const error = yield* push(a, b).pipe(Effect.flip)
        expect(error._tag === "ReplayError" && error.reason).toBe("Constraint")
        expect(error.message).toContain("FOREIGN KEY")
        expect(yield* b.unsafe("SELECT count(*) FROM ch").values).toEqual([[0]])
        expect(yield* on(b, ChangeReplay.progress("A"))).toBe(1)
        // B is not left inside a transaction: the next replay works (A re-asserts the parent)
        yield* run(a, "INSERT OR REPLACE INTO p VALUES (1)")
        yield* push(a, b)
        yield* expectSame(a, b)
      }))

    it.scoped("odd names: quotes in table and column names, columns named __proto__ and constructor", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          `CREATE TABLE "we""ird 'name" ("co""l" TEXT PRIMARY KEY, "__proto__", "constructor", [x;y])`
        )
        yield* run(a, `INSERT INTO "we""ird 'name" VALUES ('k''1', 'p', 'c', 1)`)
        yield* run(a, `UPDATE "we""ird 'name" SET "__proto__" = 'p2', "co""l" = 'k2'`)
        const changes = yield* on(a, ChangeCapture.pending(0))
        expect(Object.keys(changes[1]!.after!)).toEqual([`co"l`, "__proto__", "constructor", "x;y"])
        yield* push(a, b)
        yield* expectSame(a, b)
        expect(yield* b.unsafe(`SELECT "co""l", "__proto__" FROM "we""ird 'name"`).values).toEqual([["k2", "p2"]])
      }))

    it.scoped("BLOBs, large TEXT, integers beyond 2^53, REAL vs INTEGER affinity", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE v (id INTEGER PRIMARY KEY, i INTEGER, r REAL, n NUMERIC, t TEXT, x)")
        const blob = Buffer.alloc(3 * 1024 * 1024, 0xab)
        const text = "é'\"".repeat(1_000_000)
        yield* on(a, ChangeCapture.execute("INSERT INTO v VALUES (1, ?, ?, ?, ?, ?)", [2n ** 63n - 1n, 5, "3.0", text, blob]))
        yield* on(a, ChangeCapture.execute("INSERT INTO v VALUES (2, 9007199254740993, 9007199254740993, '10', 7, 1.0)"))
        yield* on(a, ChangeCapture.execute("INSERT INTO v VALUES (3, 5.0, 0.1, 2.5, 0.30000000000000004, -0.0)"))
        yield* push(a, b)
        yield* expectSame(a, b)
        const types = yield* b.unsafe(
          "SELECT typeof(i), typeof(r), typeof(n), typeof(t), typeof(x), quote(i), quote(r) FROM v ORDER BY id"
        ).values
        expect(types).toEqual([
          ["integer", "real", "integer", "text", "blob", "9223372036854775807", "5.0"],
          ["integer", "real", "integer", "text", "real", "9007199254740993", "9007199254740992.0"],
          ["integer", "real", "real", "text", "real", "5", "0.1"]
        ])
      }))

    it.scoped("schema changes replay in order and idempotently", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair()
        yield* tx(
          a,
          "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)",
          "INSERT INTO items VALUES (1, 'a')",
          "CREATE INDEX items_name ON items (name)",
          "ALTER TABLE items ADD COLUMN qty INTEGER NOT NULL DEFAULT 0",
          "UPDATE items SET qty = 5",
          "ALTER TABLE items RENAME COLUMN name TO title",
          "CREATE TABLE tmp (x)",
          "INSERT INTO tmp VALUES (1)",
          "ALTER TABLE tmp RENAME TO kept",
          "INSERT INTO kept VALUES (2)",
          "CREATE VIEW big AS SELECT * FROM items WHERE qty > 1",
          "CREATE TABLE gone (x)",
          "DROP TABLE gone"
        )
        yield* push(a, b)
        yield* expectSame(a, b)
        // the same statements again under another client id (no progress to skip them): already applied
        const all = yield* on(a, ChangeCapture.pending(0))
        const ddl = all.filter((c) => c.kind === "ddl")
        yield* on(b, ChangeReplay.apply(ddl.filter((c) => !/tmp|kept/.test(c.sql!)), { mode: "push", clientId: "x" }))
        expect(yield* dump(b)).toEqual(yield* dump(a))
        // idempotence is per statement: replaying "CREATE TABLE tmp; ALTER TABLE tmp RENAME TO kept" once more
        // is not an error, but re-creates an empty tmp (only the progress row makes a sequence exactly-once)
        yield* on(b, ChangeReplay.apply(ddl, { mode: "push", clientId: "y" }))
        expect(yield* b.unsafe("SELECT name FROM sqlite_schema WHERE name IN ('tmp', 'kept') ORDER BY name").values)
          .toEqual([["kept"], ["tmp"]])
        // a replica that made the same table itself
        const c = yield* open()
        yield* exec(c, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        yield* on(c, ChangeReplay.apply(all, { mode: "push", clientId: "A" }))
        expect(yield* dump(c)).toEqual(yield* dump(a))
      }))

    it.scoped("generated columns are not captured nor written; a column the target dropped is left out", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          `CREATE TABLE g (id INTEGER PRIMARY KEY, price INTEGER, qty INTEGER,
             total INTEGER GENERATED ALWAYS AS (price * qty) STORED, label TEXT AS ('#' || id) VIRTUAL, note TEXT)`
        )
        yield* run(a, "INSERT INTO g (id, price, qty, note) VALUES (1, 3, 4, 'n')")
        yield* run(a, "UPDATE g SET qty = 5")
        const [insert] = yield* on(a, ChangeCapture.pending(0))
        expect(Object.keys(insert!.after!)).toEqual(["id", "price", "qty", "note"])
        yield* push(a, b)
        yield* expectSame(a, b)
        expect(yield* b.unsafe("SELECT total, label FROM g").values).toEqual([[15, "#1"]])
        // another replica dropped `note`; last push wins on the columns that still exist
        yield* exec(b, "ALTER TABLE g DROP COLUMN note")
        yield* run(a, "INSERT INTO g (id, price, qty, note) VALUES (2, 1, 1, 'lost')")
        yield* run(a, "UPDATE g SET note = 'lost too', qty = 2 WHERE id = 1")
        yield* push(a, b)
        expect(yield* b.unsafe("SELECT id, price, qty, total FROM g ORDER BY id").values).toEqual([[1, 3, 2, 6], [2, 1, 1, 1]])
      }))

    it.scoped("on files: triggers stay out of the file; a Draft rebuilt from Synced continues the log", () =>
      Effect.gen(function*() {
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "capture-"))),
          (d) => Effect.sync(() => fs.rmSync(d, { recursive: true, force: true }))
        )
        const draftPath = path.join(dir, "db-draft")
        const syncedPath = path.join(dir, "db-synced")
        yield* Effect.scoped(Effect.gen(function*() {
          const a = yield* open(draftPath)
          const b = yield* open(syncedPath)
          yield* both(a, b, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
          yield* on(a, ChangeCapture.install)
          yield* run(a, "INSERT INTO t VALUES (1, 'pushed')")
          yield* push(a, b)
          yield* run(a, "INSERT INTO t VALUES (2, 'pending')")
          // a second connection to Draft has no triggers: its writes are not captured (documented)
          const other = yield* open(draftPath)
          yield* exec(other, "INSERT INTO t VALUES (3, 'uncaptured')")
          expect(yield* on(a, ChangeCapture.countPending(0))).toBe(2)
          yield* exec(other, "DELETE FROM t WHERE id = 3")
          // pull step (b): pending changes replayed onto Synced and re-recorded there
          const pendingChanges = yield* on(a, ChangeCapture.pending(yield* on(b, ChangeReplay.progress("A"))))
          yield* on(b, ChangeReplay.apply(pendingChanges, { mode: "pull" }))
          const triggers = yield* a.unsafe("SELECT count(*) FROM main.sqlite_schema WHERE type = 'trigger'").values
          expect(triggers).toEqual([[0]])
        }))
        // pull step (c): Synced's file becomes Draft's
        fs.copyFileSync(syncedPath, draftPath)
        for (const suffix of ["-wal", "-shm"]) fs.rmSync(draftPath + suffix, { force: true })
        const a = yield* open(draftPath)
        yield* on(a, ChangeCapture.install)
        expect((yield* on(a, ChangeCapture.pending(0))).map((c) => [c.id, c.after?.["v"]])).toEqual([[2, "'pending'"]])
        yield* run(a, "UPDATE t SET v = 'later' WHERE id = 2")
        expect((yield* on(a, ChangeCapture.pending(0))).map((c) => c.id)).toEqual([2, 3])
        expect(yield* a.unsafe("SELECT id, v FROM t ORDER BY id").values).toEqual([[1, "pushed"], [2, "later"]])
      }))

    it.scoped("last push wins, merging columns, and every conflict is reported with the remote row", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE d (id INTEGER PRIMARY KEY, x, y)")
        yield* run(a, "INSERT INTO d VALUES (1, 'x1', 'y1'), (2, 'x2', 'y2'), (3, 'x3', 'y3')")
        yield* push(a, b)
        // remote edits: column y of row 1, delete of row 2, a row 4 that A will insert too
        yield* exec(b, "UPDATE d SET y = 'remote' WHERE id = 1")
        yield* exec(b, "DELETE FROM d WHERE id = 2")
        yield* exec(b, "INSERT INTO d VALUES (4, 'remote4', NULL)")
        yield* tx(a, "UPDATE d SET x = 'local' WHERE id = 1", "UPDATE d SET x = 'local2' WHERE id = 2")
        yield* tx(a, "DELETE FROM d WHERE id = 3", "INSERT INTO d VALUES (4, 'local4', NULL)")
        const groups = ChangeReplay.groupByTransaction(yield* on(a, ChangeCapture.pending(3)))
        expect(groups.map((g) => g.map((c) => c.id))).toEqual([[4, 5], [6, 7]])
        const result = yield* push(a, b)
        expect(result.applied).toBe(4)
        expect(result.conflicts.map((c) => [c.change.id, c.kind, c.current?.["x"] ?? null, c.decision._tag])).toEqual([
          [4, "RowChanged", "'x1'", "Update"],
          [5, "RowMissing", null, "Upsert"],
          [7, "KeyExists", "'remote4'", "Upsert"]
        ])
        expect(yield* b.unsafe("SELECT id, x, y FROM d ORDER BY id").values).toEqual([
          [1, "local", "remote"], // edits of different columns both survive
          [2, "local2", "y2"], // the local update wins over the remote delete
          [4, "local4", null]
        ])
      }))

    it.scoped("the decision point can be replaced: a remote-wins policy keeps remote rows on conflict", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE d (id INTEGER PRIMARY KEY, x)")
        yield* run(a, "INSERT INTO d VALUES (1, 'a'), (2, 'b')")
        yield* push(a, b)
        yield* exec(b, "UPDATE d SET x = 'remote' WHERE id = 1")
        yield* run(a, "UPDATE d SET x = 'local'")
        const remoteWins: typeof ChangeReplay.decide = (change, current, table) => {
          const decision = ChangeReplay.decide(change, current, table)
          return "conflict" in decision && decision.conflict ? { _tag: "Skip", conflict: decision.conflict } : decision
        }
        const changes = yield* on(a, ChangeCapture.pending(2))
        const result = yield* on(b, ChangeReplay.apply(changes, { mode: "push", clientId: "A", decide: remoteWins }))
        expect(result.conflicts.map((c) => [c.change.id, c.kind, c.decision._tag])).toEqual([[3, "RowChanged", "Skip"]])
        expect(yield* b.unsafe("SELECT id, x FROM d ORDER BY id").values).toEqual([[1, "remote"], [2, "local"]])
      }))

    it.scoped("replaying twice with progress applies exactly once; progress is per client", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE n (id INTEGER PRIMARY KEY, v INTEGER)")
        yield* run(a, "INSERT INTO n VALUES (1, 1)")
        const first = yield* on(a, ChangeCapture.pending(0))
        yield* on(b, ChangeReplay.apply(first, { mode: "push", clientId: "A" }))
        // meanwhile someone else deletes the row on B; a second delivery of the same insert must not resurrect it
        yield* exec(b, "DELETE FROM n")
        const again = yield* on(b, ChangeReplay.apply(first, { mode: "push", clientId: "A" }))
        expect(again.lastChangeId).toBe(1)
        expect(yield* b.unsafe("SELECT count(*) FROM n").values).toEqual([[0]])
        expect(yield* on(b, ChangeReplay.progress("A"))).toBe(1)
        expect(yield* on(b, ChangeReplay.progress("B"))).toBe(0)
        yield* run(a, "UPDATE n SET v = 2")
        yield* push(a, b)
        expect(yield* on(b, ChangeReplay.progress("A"))).toBe(2)
        expect(yield* b.unsafe("SELECT id, v FROM n").values).toEqual([[1, 2]]) // last push wins: resurrected by update
      }))

    it.scoped("pull mode re-records changes with the same ids and leaves progress alone", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE n (id INTEGER PRIMARY KEY, v)")
        yield* run(a, "INSERT INTO n VALUES (1, 'pushed')")
        yield* push(a, b)
        yield* run(a, "INSERT INTO n VALUES (2, 'pending')")
        yield* run(a, "UPDATE n SET v = 'pending too' WHERE id = 1")
        const all = yield* on(a, ChangeCapture.pending(0))
        const result = yield* on(b, ChangeReplay.apply(all, { mode: "pull", clientId: "A" }))
        expect(result.lastChangeId).toBe(3)
        expect(yield* on(b, ChangeReplay.progress("A"))).toBe(1)
        expect((yield* on(b, ChangeCapture.pending(0))).map((c) => c.id)).toEqual([2, 3])
        expect(yield* on(b, ChangeCapture.pending(0))).toEqual(all.slice(1))
        yield* expectSame(a, b)
        // B as the next Draft: capture continues above every id
        yield* on(b, ChangeCapture.install)
        yield* run(b, "DELETE FROM n WHERE id = 2")
        expect((yield* on(b, ChangeCapture.pending(3))).map((c) => c.id)).toEqual([4])
      }))

    it.scoped("a failing change rolls back the whole replay (rows and progress) with a typed error", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair("CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
        yield* exec(b, "INSERT INTO u VALUES (100, 'taken@x')")
        yield* run(a, "INSERT INTO u VALUES (1, 'free@x')")
        yield* run(a, "INSERT INTO u VALUES (2, 'taken@x')")
        const before = yield* dump(b)
        const error = yield* push(a, b).pipe(Effect.flip)
        expect(error._tag).toBe("ReplayError")
        if (error._tag === "ReplayError") {
          expect(error.reason).toBe("Constraint")
          expect(error.changeId).toBe(2)
          expect(error.statement).toContain("INSERT INTO \"u\"")
        }
        expect(yield* dump(b)).toEqual(before)
        expect(yield* on(b, ChangeReplay.progress("A"))).toBe(0)
        const missing = yield* on(
          b,
          ChangeReplay.apply([{ id: 9, txId: 9, table: "nope", kind: "delete", before: { id: "1" }, after: null }], {
            mode: "push",
            clientId: "A"
          })
        ).pipe(Effect.flip)
        expect(missing._tag === "ReplayError" && missing.reason).toBe("MissingTable")
      }))

    it.scoped("values that are not quote() literals are refused before anything runs", () =>
      Effect.gen(function*() {
        const { b } = yield* pair("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        const error = yield* on(
          b,
          ChangeReplay.apply([{
            id: 1,
            txId: 1,
            table: "t",
            kind: "insert",
            before: null,
            after: { id: "1", v: "(SELECT 1); DROP TABLE t" }
          }], { mode: "push", clientId: "A" })
        ).pipe(Effect.flip)
        expect(error._tag === "ReplayError" && error.reason).toBe("InvalidChange")
        expect(yield* b.unsafe("SELECT count(*) FROM sqlite_schema WHERE name = 't'").values).toEqual([[1]])
        expect(yield* on(b, ChangeReplay.progress("A"))).toBe(0)
      }))

    it.scoped("user triggers on replicated tables do not fire again on replay (unless asked to)", () =>
      Effect.gen(function*() {
        const { a, b } = yield* pair(
          "CREATE TABLE acct (id INTEGER PRIMARY KEY, balance INTEGER)",
          "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, msg TEXT)",
          "CREATE TABLE stamp (id INTEGER PRIMARY KEY, n INTEGER)",
          `CREATE TRIGGER acct_audit AFTER UPDATE ON acct BEGIN
             INSERT INTO audit (msg) VALUES ('balance ' || NEW.balance);
             INSERT INTO stamp VALUES (NEW.id, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1;
           END`
        )
        yield* run(a, "INSERT INTO acct VALUES (1, 10)")
        yield* run(a, "UPDATE acct SET balance = 20")
        yield* run(a, "UPDATE acct SET balance = 30")
        const changes = yield* on(a, ChangeCapture.pending(0))
        // a copy that lets them fire shows the hazard: every trigger effect lands twice
        const c = yield* open()
        yield* Effect.forEach(
          (yield* a<{ sql: string }>`SELECT sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite%' AND name NOT LIKE '\_sync%' ESCAPE '\\'`),
          (row) => exec(c, row.sql),
          { discard: true }
        )
        yield* exec(c, "INSERT INTO audit (msg) VALUES ('remote entry')") // C's audit ids have moved on
        yield* on(c, ChangeReplay.apply(changes, { mode: "push", clientId: "A", triggers: "fire" }))
        // (the remote entry is overwritten too: AUTOINCREMENT keys allocated on two replicas collide)
        expect(yield* c.unsafe("SELECT msg FROM audit ORDER BY id").values).toEqual([
          ["balance 20"],
          ["balance 30"],
          ["balance 30"]
        ])
        // default: suspended during replay, restored afterwards, B equals A
        yield* push(a, b)
        yield* expectSame(a, b)
        expect(yield* b.unsafe("SELECT msg FROM audit ORDER BY id").values).toEqual([["balance 20"], ["balance 30"]])
        expect(yield* b.unsafe("SELECT n FROM stamp").values).toEqual([[2]])
        yield* exec(b, "UPDATE acct SET balance = 40") // still installed on B
        expect(yield* b.unsafe("SELECT n FROM stamp").values).toEqual([[3]])
      }))
  })
})

// ---------------------------------------------------------------------------------------------------------
// Two clients and a remote, through the seed's push and pull steps (logical part only: Synced is the remote
// itself for push, and a backup of it for pull)
// ---------------------------------------------------------------------------------------------------------

const CLIENT_SCHEMA = [
  "CREATE TABLE kv (k INTEGER PRIMARY KEY, v)",
  "CREATE TABLE pair (a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID",
  "CREATE TABLE bag (x, y)",
  "CREATE TABLE events (id TEXT PRIMARY KEY, n INTEGER)",
  "CREATE TABLE own (k TEXT PRIMARY KEY, v)"
]

type ClientOp =
  | { readonly _tag: "write"; readonly client: 0 | 1; readonly sql: string; readonly params: ReadonlyArray<unknown> }
  | { readonly _tag: "event"; readonly client: 0 | 1 }
  | { readonly _tag: "own"; readonly client: 0 | 1; readonly verb: "upsert" | "update" | "delete"; readonly key: number; readonly v: unknown }
  | { readonly _tag: "push" | "pull" | "sync"; readonly client: 0 | 1 }

const clientIndex = fc.constantFrom(0 as const, 1 as const)
const smallKey = fc.integer({ min: 1, max: 4 })
const clientOp: fc.Arbitrary<ClientOp> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(clientIndex, fc.oneof(
    fc.tuple(smallKey, value).map(([k, v]) => ({ sql: "INSERT OR REPLACE INTO kv VALUES (?, ?)", params: [k, bind(v)] })),
    fc.tuple(smallKey, value).map(([k, v]) => ({ sql: "UPDATE kv SET v = ? WHERE k = ?", params: [bind(v), k] })),
    smallKey.map((k) => ({ sql: "DELETE FROM kv WHERE k = ?", params: [k] })),
    fc.tuple(fc.constantFrom("p", "q"), smallKey, value).map(([a, b, v]) => ({
      sql: "INSERT OR REPLACE INTO pair VALUES (?, ?, ?)",
      params: [a, b, bind(v)]
    })),
    fc.tuple(smallKey, smallKey).map(([b1, b2]) => ({ sql: "UPDATE OR REPLACE pair SET b = ? WHERE b = ?", params: [b2, b1] })),
    fc.tuple(value, value).map(([x, y]) => ({ sql: "INSERT INTO bag VALUES (?, ?)", params: [bind(x), bind(y)] })),
    fc.tuple(smallKey, value).map(([r, y]) => ({ sql: "UPDATE bag SET y = ? WHERE rowid = ?", params: [bind(y), r] })),
    fc.constantFrom("extra", "more").map((c) => ({ sql: `ALTER TABLE kv ADD COLUMN ${c} DEFAULT 1`, params: [] }))
  )).map(([client, op]) => ({ _tag: "write" as const, client, ...op })) },
  { weight: 2, arbitrary: clientIndex.map((client) => ({ _tag: "event" as const, client })) },
  // rows only their own client writes: whatever happens to them must reach the remote exactly
  {
    weight: 3,
    arbitrary: fc.tuple(clientIndex, fc.constantFrom("upsert" as const, "update" as const, "delete" as const), smallKey, value)
      .map(([client, verb, key, v]) => ({ _tag: "own" as const, client, verb, key, v: bind(v) }))
  },
  {
    weight: 3,
    arbitrary: fc.tuple(fc.constantFrom("push" as const, "pull" as const, "sync" as const), clientIndex)
      .map(([_tag, client]) => ({ _tag, client }))
  }
)

describe("ChangeReplay: two clients, push and pull", () => {
  it("property: replicas converge; client-owned rows and client-keyed inserts reach the remote exactly", () =>
    fc.assert(
      fc.asyncProperty(fc.array(clientOp, { minLength: 1, maxLength: 30 }), (ops) =>
        runProperty(Effect.gen(function*() {
          const dir = yield* Effect.acquireRelease(
            Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "replicas-"))),
            (d) => Effect.sync(() => fs.rmSync(d, { recursive: true, force: true }))
          )
          const remote = yield* open(path.join(dir, "remote"))
          for (const s of CLIENT_SCHEMA) yield* exec(remote, s)
          const paths = [path.join(dir, "c0"), path.join(dir, "c1")] as const
          const ids = ["c0", "c1"] as const
          const scopes: Array<Scope.CloseableScope> = []
          const clients: Array<SqlClient.SqlClient> = []
          const openClient = (i: 0 | 1) =>
            Effect.gen(function*() {
              const scope = yield* Scope.make()
              scopes[i] = scope
              clients[i] = yield* Scope.extend(open(paths[i]), scope)
              yield* on(clients[i]!, ChangeCapture.install)
            })
          const remove = (file: string) => ["", "-wal", "-shm"].forEach((s) => fs.rmSync(file + s, { force: true }))
          // step 2: pending changes onto a fresh copy of the remote (pull mode), which becomes the Draft
          const pull = (i: 0 | 1) =>
            Effect.gen(function*() {
              const done = yield* on(remote, ChangeReplay.progress(ids[i]))
              const changes = yield* on(clients[i]!, ChangeCapture.pending(done))
              yield* Scope.close(scopes[i]!, Exit.void)
              const next = `${paths[i]}.next`
              remove(next)
              yield* (remote as SqliteClient.SqliteClient).backup(next)
              yield* Effect.scoped(Effect.flatMap(open(next), (copy) =>
                on(copy, ChangeReplay.apply(changes, { mode: "pull", clientId: ids[i] }))))
              remove(paths[i])
              fs.renameSync(next, paths[i])
              yield* openClient(i)
              yield* on(clients[i]!, ChangeCapture.ensureChangeIdsAbove(done))
            })
          const push = (i: 0 | 1) =>
            Effect.gen(function*() {
              const done = yield* on(remote, ChangeReplay.progress(ids[i]))
              const changes = yield* on(clients[i]!, ChangeCapture.pending(done))
              yield* on(remote, ChangeReplay.apply(changes, { mode: "push", clientId: ids[i] }))
            })
          // both start as copies of the remote
          for (const i of [0, 1] as const) {
            yield* (remote as SqliteClient.SqliteClient).backup(paths[i])
            yield* openClient(i)
          }
          const events: Array<Set<string>> = [new Set(), new Set()]
          let counter = 0
          for (const op of ops) {
            const c = clients[op.client]!
            if (op._tag === "write") yield* Effect.ignore(on(c, ChangeCapture.execute(op.sql, op.params)))
            else if (op._tag === "own") {
              const k = `${ids[op.client]}-${op.key}`
              const [text, params] = op.verb === "upsert"
                ? ["INSERT OR REPLACE INTO own VALUES (?, ?)", [k, op.v]]
                : op.verb === "update"
                ? ["UPDATE own SET v = ? WHERE k = ?", [op.v, k]]
                : ["DELETE FROM own WHERE k = ?", [k]]
              yield* on(c, ChangeCapture.execute(text, params))
            }
            else if (op._tag === "event") {
              const id = `${ids[op.client]}-${counter++}`
              yield* on(c, ChangeCapture.execute("INSERT INTO events VALUES (?, ?)", [id, counter]))
              events[op.client]!.add(id)
            } else if (op._tag === "push") yield* push(op.client)
            else if (op._tag === "pull") yield* pull(op.client)
            else {
              yield* push(op.client)
              yield* pull(op.client)
            }
          }
          const ownRows = (client: SqlClient.SqlClient, i: 0 | 1) =>
            client.unsafe(`SELECT k, quote(v) FROM own WHERE k LIKE '${ids[i]}-%' ORDER BY k`).values
          const owned = [yield* ownRows(clients[0]!, 0), yield* ownRows(clients[1]!, 1)]
          yield* push(0)
          yield* push(1)
          expect(yield* ownRows(remote, 0)).toEqual(owned[0])
          expect(yield* ownRows(remote, 1)).toEqual(owned[1])
          yield* pull(0)
          yield* pull(1)
          const expected = yield* dump(remote)
          expect(yield* dump(clients[0]!)).toEqual(expected)
          expect(yield* dump(clients[1]!)).toEqual(expected)
          const arrived = (yield* remote.unsafe("SELECT id FROM events ORDER BY id").values).map((r) => r[0])
          expect(arrived).toEqual([...events[0]!, ...events[1]!].sort())
          for (const i of [0, 1] as const) {
            expect(yield* on(clients[i]!, ChangeCapture.countPending(yield* on(remote, ChangeReplay.progress(ids[i]))))).toBe(0)
          }
          for (const scope of scopes) yield* Scope.close(scope, Exit.void)
        }))
      ),
      { numRuns: 25 }
    ), 120_000)
})

// ---------------------------------------------------------------------------------------------------------
// Reading ahead: the rows updates and deletes compare, read a page at a time
// ---------------------------------------------------------------------------------------------------------

const AHEAD_SCHEMA = [
  "CREATE TABLE t_int (id INTEGER PRIMARY KEY, v, w REAL)",
  "CREATE TABLE t_auto (id INTEGER PRIMARY KEY AUTOINCREMENT, v INTEGER)",
  "CREATE TABLE t_comp (a TEXT, b INTEGER, v, PRIMARY KEY (a, b))",
  "CREATE TABLE t_wr (k TEXT PRIMARY KEY, u INTEGER UNIQUE, v) WITHOUT ROWID",
  "CREATE TABLE t_nopk (rowid TEXT, v)",
  "CREATE TABLE t_nocase (k TEXT PRIMARY KEY COLLATE NOCASE, v)"
]

const aheadOp: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: statementOp },
  fc.tuple(fc.constantFrom("a", "A", "b", "a "), value).map(([k, v]) => ({
    sql: "INSERT OR REPLACE INTO t_nocase VALUES (?, ?)",
    params: [k, bind(v)]
  })),
  fc.tuple(fc.constantFrom("a", "B"), value).map(([k, v]) => ({ sql: "UPDATE t_nocase SET v = ? WHERE k = ?", params: [bind(v), k] })),
  fc.constantFrom("A", "b").map((k) => ({ sql: "DELETE FROM t_nocase WHERE k = ?", params: [k] }))
)

const tableInfo = (name: string, columns: Array<string>, primaryKey: Array<string>): TableInfo.TableInfo => ({
  name,
  columns,
  primaryKey,
  withoutRowid: false,
  rowidAlias: "_rowid_",
  uniqueIndexes: [],
  allColumns: columns
})

describe("ChangeReplay: reading ahead", () => {
  const sqlValue: fc.Arbitrary<SqlValue.SqlValue> = fc.oneof(
    fc.constant(null),
    fc.bigInt(-(2n ** 63n), 2n ** 63n - 1n),
    fc.double({ noNaN: true }),
    fc.string({ maxLength: 5 }),
    fc.uint8Array({ maxLength: 4 }),
    fc.uint8Array({ maxLength: 3 }).map((bytes) => new SqlValue.TextBytes(Uint8Array.from([0xff, ...bytes])))
  )
  const TABLES = { t: tableInfo("t", ["id", "v"], ["id"]), u: tableInfo("u", ["a", "b", "v"], ["a", "b"]) }
  const logChange: fc.Arbitrary<LogChange> = fc.tuple(
    fc.nat(),
    fc.constantFrom("insert" as const, "update" as const, "delete" as const, "ddl" as const),
    fc.constantFrom("t" as const, "u" as const, "missing" as const),
    fc.array(sqlValue, { minLength: 3, maxLength: 3 }),
    fc.array(sqlValue, { minLength: 3, maxLength: 3 })
  ).map(([id, kind, table, before, after]) => {
    const columns = table === "u" ? ["a", "b", "v"] : ["id", "v"]
    const image = (values: Array<SqlValue.SqlValue>) => ({ columns, values: values.slice(0, columns.length) })
    return {
      id,
      txId: 1,
      table,
      kind,
      before: kind === "update" || kind === "delete" ? image(before) : null,
      after: kind === "insert" || kind === "update" ? image(after) : null,
      rowidBefore: null,
      rowidAfter: null,
      sql: kind === "ddl" ? "CREATE TABLE x (y)" : null
    }
  })

  it("property: the plan asks for every update's and delete's row before the first schema change, once, at its lookup key", () =>
    fc.assert(fc.property(fc.array(logChange, { maxLength: 40 }), (page) => {
      const tableOf = (name: string) => (TABLES as Record<string, TableInfo.TableInfo>)[name]
      const planned = Prefetch.plan(page, tableOf)
      const firstDdl = page.findIndex((change) => change.kind === "ddl")
      const expected = new Map<string, Array<{ index: number; key: Values.Key }>>()
      page.forEach((change, index) => {
        if (firstDdl >= 0 && index > firstDdl) return
        if (change.kind !== "update" && change.kind !== "delete") return
        const table = tableOf(change.table)
        if (table === undefined) return
        const key = Values.lookupKey(change, table)
        if (key === undefined || key.values.some((v) => v === null || v instanceof SqlValue.TextBytes)) return
        expected.set(change.table, [...(expected.get(change.table) ?? []), { index, key }])
      })
      expect(new Map([...planned].map(([name, wanted]) => [name, [...wanted]]))).toEqual(expected)
    }), { numRuns: 300 }))

  it("property: keys SQLite may take for the same row share a token", () =>
    fc.assert(fc.property(fc.bigInt(-(2n ** 52n), 2n ** 52n), fc.string({ maxLength: 6 }), (n, text) => {
      expect(Prefetch.token([n])).toEqual(Prefetch.token([Number(n)]))
      expect(Prefetch.token([n])).toEqual(Prefetch.token([String(n)]))
      expect(Prefetch.token(["k", n])).toEqual(Prefetch.token(["K  ", Number(n)]))
      expect(Prefetch.token([text.toUpperCase()])).toEqual(Prefetch.token([text.toLowerCase()]))
      expect(Prefetch.token([n])).not.toEqual(Prefetch.token([n + 1n]))
    }), { numRuns: 200 }))

  // `triggers: "fire"` turns reading ahead off (a trigger may write any row); these tables have none, so
  // the two replays must agree on every row and every conflict.
  it("property: replaying with rows read ahead gives the same rows, conflicts and drops as reading each row", () =>
    fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(aheadOp, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 30 }),
        fc.array(aheadOp, { maxLength: 25 }),
        fc.constantFrom("none" as const, "remoteWins" as const, "lastPushWinsRow" as const),
        (local, remote, policy) =>
          runProperty(Effect.gen(function*() {
            const a = yield* open()
            const targets = [yield* open(), yield* open()] as const
            for (const s of AHEAD_SCHEMA) for (const c of [a, ...targets]) yield* exec(c, s)
            yield* on(a, ChangeCapture.install)
            for (const group of local) {
              yield* on(a, ChangeCapture.transaction(Effect.forEach(group, (o) =>
                "push" in o ? Effect.void : Effect.ignore(ChangeCapture.execute(o.sql, o.params)), { discard: true })))
            }
            // the targets moved on meanwhile, the same way (so local changes meet conflicts)
            for (const o of remote) {
              if ("push" in o) continue
              for (const t of targets) yield* Effect.ignore(t.unsafe(o.sql, o.params as Array<any>).raw)
            }
            const changes = yield* on(a, ChangeCapture.pending(0))
            const resolve = policy === "none" ? {} : { resolve: ConflictPolicy.resolver<never>(policy) }
            const results = []
            for (const [i, t] of targets.entries()) {
              const exit = yield* Effect.exit(on(t, ChangeReplay.apply(changes, {
                mode: "push",
                clientId: "A",
                ...resolve,
                ...(i === 1 ? { triggers: "fire" as const } : {})
              })))
              results.push(Exit.match(exit, {
                onFailure: (cause) => ({ failed: String(Cause.squash(cause)) }),
                onSuccess: (result) => result
              }))
            }
            expect(results[0]).toEqual(results[1])
            expect(yield* dump(targets[0])).toEqual(yield* dump(targets[1]))
          }))
      ),
      { numRuns: 60 }
    ), 120_000)
})
