import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import fc from "fast-check"
import * as Exit from "effect/Exit"
import * as ChangeCapture from "../src/ChangeCapture.js"
import * as ChangeReplay from "../src/ChangeReplay.js"
import BetterSqlite3 from "better-sqlite3"
import * as ChangeLog from "../src/internal/capture/changeLog.js"
import * as NodePath from "node:path"
import { dump, exec, on, open, run } from "./support/changeSync.js"
import { tempDir } from "./support/engine.js"

const tx = (a: SqlClient.SqlClient, ...statements: ReadonlyArray<string>) =>
  on(a, ChangeCapture.transaction(Effect.forEach(statements, (s) => ChangeCapture.execute(s), { discard: true })))

const quoted = (client: SqlClient.SqlClient, expr: string) =>
  Effect.map(client.unsafe(`SELECT quote(${expr}) AS q`).values, (rows) => rows[0]![0] as string)

describe("ChangeCapture", () => {
  it.scoped("install is idempotent and covers user tables only (prefix match, not LIKE)", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
      yield* exec(a, "CREATE TABLE async_jobs (id INTEGER PRIMARY KEY)")
      yield* exec(a, "CREATE TABLE _sync_private (x)")
      yield* exec(a, "CREATE VIRTUAL TABLE IF NOT EXISTS vt USING json_each('[1]')").pipe(Effect.ignore)
      yield* on(a, ChangeCapture.install)
      yield* on(a, ChangeCapture.install)
      const triggers = yield* a<{ name: string; tbl_name: string }>`
        SELECT name, tbl_name FROM temp.sqlite_schema WHERE type = 'trigger' ORDER BY name`
      const tables = [...new Set(triggers.map((t) => t.tbl_name))].sort()
      expect(tables).toEqual(["async_jobs", "t"])
      // AFTER insert/update/delete + BEFORE update (key eviction) per table
      expect(triggers.length).toBe(8)
      const recursive = yield* a<{ recursive_triggers: number }>`PRAGMA recursive_triggers`
      expect(recursive[0]!.recursive_triggers).toBe(0)
    }))

  it.scoped("images are exact quote() literals for every storage class", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE v (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n, any_col)")
      yield* on(a, ChangeCapture.install)
      const big = "x'y\"z\u00e9\u{1F600}".repeat(200_000)
      yield* on(
        a,
        ChangeCapture.execute("INSERT INTO v VALUES (1, ?, ?, ?, ?, NULL, ?)", [
          9223372036854775807n,
          0.1,
          big,
          Buffer.from([0, 1, 2, 255]),
          -9223372036854775808n
        ])
      )
      yield* on(a, ChangeCapture.execute("INSERT INTO v VALUES (2, 9007199254740993, 1e308, '', x'', NULL, 2.5e-300)"))
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes.map((c) => c.kind)).toEqual(["insert", "insert"])
      for (const change of changes) {
        const id = change.after!["id"]!
        for (const column of ["id", "i", "r", "t", "b", "n", "any_col"]) {
          expect(change.after![column]).toBe(yield* quoted(a, `(SELECT ${column} FROM v WHERE id = ${id})`))
        }
      }
      expect(changes[0]!.after!["i"]).toBe("9223372036854775807")
      expect(changes[0]!.after!["any_col"]).toBe("-9223372036854775808")
      expect(changes[0]!.after!["b"]).toBe("X'000102FF'")
      expect(changes[1]!.after!["i"]).toBe("9007199254740993")
      expect(changes[1]!.before).toBeNull()
      expect(changes[0]!.rowid).toBeUndefined()
    }))

  it.scoped("transaction groups its changes under one txId; ids follow the local sequence", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
      yield* on(a, ChangeCapture.install)
      yield* on(
        a,
        ChangeCapture.transaction(Effect.gen(function*() {
          yield* ChangeCapture.execute("INSERT INTO t VALUES (1, 'a')")
          yield* ChangeCapture.execute("INSERT INTO t VALUES (2, 'b')")
          yield* ChangeCapture.execute("UPDATE t SET v = 'c'")
        }))
      )
      yield* run(a, "DELETE FROM t WHERE id = 1")
      // a write that bypasses ChangeCapture entirely is still captured, as its own unit
      yield* exec(a, "INSERT INTO t VALUES (3, 'raw')")
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes.map((c) => c.id)).toEqual([1, 2, 3, 4, 5, 6])
      expect(changes.map((c) => c.txId)).toEqual([1, 1, 1, 1, 5, 6])
      expect(changes.map((c) => c.kind)).toEqual(["insert", "insert", "update", "update", "delete", "insert"])
      expect(changes[2]!.before).toEqual({ id: "1", v: "'a'" })
      expect(changes[2]!.after).toEqual({ id: "1", v: "'c'" })
      expect(yield* on(a, ChangeCapture.lastChangeId)).toBe(6)
      expect(yield* on(a, ChangeCapture.countPending(4))).toBe(2)
      yield* on(a, ChangeCapture.prune(4))
      expect((yield* on(a, ChangeCapture.pending(0))).map((c) => c.id)).toEqual([5, 6])
    }))

  it.scoped("each statement outside a transaction is one unit: its rows share its first change's id, ids keep growing once pruned", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v, u UNIQUE)")
      yield* exec(a, "CREATE TABLE audit (n INTEGER PRIMARY KEY, what)")
      // a user trigger writing a captured table from inside the statement
      yield* exec(a, "CREATE TRIGGER t_audit AFTER UPDATE ON t BEGIN INSERT INTO audit (what) VALUES (NEW.v); END")
      yield* on(a, ChangeCapture.install)
      const units = (after: number) =>
        Effect.map(on(a, ChangeCapture.pending(after)), (changes) => changes.map((c) => [c.id, c.txId, c.table, c.kind]))
      yield* run(a, "INSERT INTO t (id, v, u) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
      yield* run(a, "INSERT INTO t (id, v, u) VALUES (4, 'd', 4)")
      yield* run(a, "UPDATE t SET v = v || '!' WHERE id <= 2")
      // a conflict clause of the statement applies to the triggers' own writes too: the key still moves
      yield* run(a, "INSERT OR IGNORE INTO t (id, v, u) VALUES (5, 'e', 5), (1, 'dup', 9)")
      yield* run(a, "INSERT OR IGNORE INTO t (id, v, u) VALUES (6, 'f', 6)")
      yield* run(a, "INSERT OR REPLACE INTO t (id, v, u) VALUES (7, 'g', 6)")
      expect(yield* units(0)).toEqual([
        [1, 1, "t", "insert"], [2, 1, "t", "insert"], [3, 1, "t", "insert"],
        [4, 4, "t", "insert"],
        [5, 5, "t", "update"], [6, 5, "audit", "insert"], [7, 5, "t", "update"], [8, 5, "audit", "insert"],
        [9, 9, "t", "insert"],
        [10, 10, "t", "insert"],
        [11, 11, "t", "delete"], [12, 11, "t", "insert"]
      ])
      // a failed statement leaves no rows, and the next one is a unit of its own
      expect(Exit.isFailure(yield* Effect.exit(run(a, "INSERT INTO t (id, v, u) VALUES (20, 'x', 20), (21, 'y', 20)")))).toBe(true)
      yield* run(a, "DELETE FROM t WHERE id = 7")
      expect(yield* units(12)).toEqual([[13, 13, "t", "delete"]])
      // all pushed and pruned: the log is empty, ids go on above the last one
      yield* on(a, ChangeCapture.prune(13))
      expect(yield* units(0)).toEqual([])
      expect(yield* on(a, ChangeCapture.lastChangeId)).toBe(13)
      yield* run(a, "DELETE FROM t WHERE id >= 4")
      expect(yield* units(0)).toEqual([[14, 14, "t", "delete"], [15, 14, "t", "delete"]])
      // a transaction's rows and the statement after it are two units
      yield* tx(a, "UPDATE t SET v = 'tx' WHERE id = 1")
      yield* run(a, "UPDATE t SET u = 100 WHERE id = 2")
      expect((yield* units(15)).map(([id, txId, table]) => [id, txId, table])).toEqual([
        [16, 16, "t"], [17, 16, "audit"], [18, 18, "t"], [19, 18, "audit"]
      ])
    }))

  it.scoped("pruned ids are never handed out again, on a reopened connection too; a write bypassing execute is a unit per row", () =>
    Effect.gen(function*() {
      const file = NodePath.join(yield* tempDir, "floor.sqlite")
      const units = (client: SqlClient.SqlClient) =>
        Effect.map(on(client, ChangeCapture.pending(0)), (changes) => changes.map((c) => [c.id, c.txId]))
      yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* open(file)
        yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        yield* on(a, ChangeCapture.install)
        yield* run(a, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        expect(yield* units(a)).toEqual([[1, 1], [2, 1], [3, 1]])
        yield* on(a, ChangeCapture.prune(3))
        expect(yield* units(a)).toEqual([])
      }))
      const b = yield* open(file)
      yield* on(b, ChangeCapture.install)
      expect(yield* on(b, ChangeCapture.lastChangeId)).toBe(3)
      yield* run(b, "INSERT INTO t VALUES (4, 'd')")
      // a plain statement on the connection: captured, each row its own unit
      yield* exec(b, "INSERT INTO t VALUES (5, 'e'), (6, 'f')")
      yield* run(b, "UPDATE t SET v = upper(v) WHERE id >= 5")
      expect(yield* units(b)).toEqual([[4, 4], [5, 5], [6, 6], [7, 7], [8, 7]])
      // the ids are the log's own: no AUTOINCREMENT sequence is kept (nor written with every statement)
      const log = yield* b<{ sql: string }>`SELECT sql FROM sqlite_schema WHERE name = '_sync_changes'`
      expect(log[0]!.sql).not.toContain("AUTOINCREMENT")
      expect(yield* b`SELECT name FROM sqlite_schema WHERE name = 'sqlite_sequence'`).toEqual([])
    }))

  it.scoped("a failed transaction leaves no change rows", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
      yield* on(a, ChangeCapture.install)
      const exit = yield* on(
        a,
        ChangeCapture.transaction(
          Effect.zipRight(ChangeCapture.execute("INSERT INTO t VALUES (1, 'a')"), Effect.fail("boom" as const))
        )
      ).pipe(Effect.exit)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(yield* on(a, ChangeCapture.countPending(0))).toBe(0)
      yield* run(a, "INSERT INTO t VALUES (1, 'a')")
      expect((yield* on(a, ChangeCapture.pending(0))).map((c) => [c.id, c.txId])).toEqual([[1, 1]])
    }))

  it.scoped("DDL through execute is logged in order and new tables are captured in the same transaction", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* on(a, ChangeCapture.install)
      yield* on(
        a,
        ChangeCapture.transaction(Effect.gen(function*() {
          yield* ChangeCapture.execute("CREATE TABLE n (k TEXT PRIMARY KEY, v)")
          yield* ChangeCapture.execute("INSERT INTO n VALUES ('a', 1)")
          yield* ChangeCapture.execute("ALTER TABLE n ADD COLUMN w DEFAULT 7")
          yield* ChangeCapture.execute("UPDATE n SET w = 8")
          yield* ChangeCapture.execute("CREATE TABLE IF NOT EXISTS n (x)") // no schema change: not logged
        }))
      )
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes.map((c) => [c.kind, c.sql ?? c.table])).toEqual([
        ["ddl", "CREATE TABLE n (k TEXT PRIMARY KEY, v)"],
        ["insert", "n"],
        ["ddl", "ALTER TABLE n ADD COLUMN w DEFAULT 7"],
        ["update", "n"]
      ])
      expect(new Set(changes.map((c) => c.txId)).size).toBe(1)
      expect(changes[3]!.before).toEqual({ k: "'a'", v: "1", w: "7" })
      expect(changes[3]!.after).toEqual({ k: "'a'", v: "1", w: "8" })
    }))

  it.scoped("a schema change inside transaction not made through execute fails and rolls back", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* on(a, ChangeCapture.install)
      const error = yield* on(
        a,
        ChangeCapture.transaction(Effect.asVoid(exec(a, "CREATE TABLE sneaky (x)")))
      ).pipe(Effect.flip)
      expect(error._tag).toBe("CaptureError")
      const tables = yield* a<{ n: number }>`SELECT count(*) AS n FROM sqlite_schema WHERE name = 'sneaky'`
      expect(tables[0]!.n).toBe(0)
      // the statement text may be given to transaction instead (single-statement transactions)
      yield* on(a, ChangeCapture.transaction(Effect.asVoid(exec(a, "CREATE TABLE named (x)")), "CREATE TABLE named (x)"))
      yield* exec(a, "INSERT INTO named VALUES (1)")
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes.map((c) => [c.kind, c.sql ?? c.table])).toEqual([["ddl", "CREATE TABLE named (x)"], [
        "insert",
        "named"
      ]])
    }))

  it.scoped("a statement that failed to prepare works once its table exists (no stale prepared failure)", () =>
    Effect.gen(function*() {
      const a = yield* open()
      const missing = yield* on(a, ChangeCapture.execute("SELECT * FROM later")).pipe(Effect.flip)
      expect(missing._tag).toBe("SqlError")
      yield* on(a, ChangeCapture.execute("CREATE TABLE later (x)"))
      yield* on(a, ChangeCapture.execute("INSERT INTO later VALUES (1)"))
      const result = yield* on(a, ChangeCapture.execute("SELECT * FROM later"))
      expect(result.rows).toEqual([{ x: 1 }])
      const insert = yield* on(a, ChangeCapture.execute("INSERT INTO later VALUES (2), (3)"))
      expect([insert.changes, insert.lastInsertRowid]).toEqual([2, 3])
      expect((yield* on(a, ChangeCapture.pending(0))).map((c) => c.kind)).toEqual(["ddl", "insert", "insert", "insert"])
    }))

  it.scoped("lastInsertRowid: the statement's last inserted rowid, 0 when it inserted nothing, inside a transaction too", () =>
    Effect.gen(function*() {
      const a = yield* open()
      const run = (sql: string) =>
        Effect.map(on(a, ChangeCapture.execute(sql)), (r) => [r.changes, r.lastInsertRowid] as const)
      expect(yield* run("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")).toEqual([0, 0])
      expect(yield* run("INSERT INTO t (v) VALUES ('a'), ('b')")).toEqual([2, 2])
      expect(yield* run("UPDATE t SET v = 'c'")).toEqual([2, 0])
      expect(yield* run("WITH n(x) AS (SELECT 7) INSERT INTO t (id, v) SELECT x, 'w' FROM n")).toEqual([1, 7])
      expect(yield* run("DELETE FROM t WHERE id = 1")).toEqual([1, 0])
      expect(yield* run("INSERT OR IGNORE INTO t (id, v) VALUES (2, 'dup')")).toEqual([0, 0])
      const inTransaction = yield* on(
        a,
        ChangeCapture.transaction(
          Effect.zip(ChangeCapture.execute("INSERT INTO t (id, v) VALUES (20, 'x')"), ChangeCapture.execute("UPDATE t SET v = 'y'"))
        )
      )
      expect(inTransaction.map((r) => r.lastInsertRowid)).toEqual([20, 0])
    }))

  it.scoped("a rolled-back nested part takes its schema change, its log rows and its triggers with it", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
      yield* on(a, ChangeCapture.install)
      yield* on(
        a,
        ChangeCapture.transaction(Effect.gen(function*() {
          yield* ChangeCapture.execute("INSERT INTO t VALUES (1, 'kept')")
          yield* ChangeCapture.transaction(Effect.gen(function*() {
            yield* ChangeCapture.execute("CREATE TABLE doomed (x)")
            yield* ChangeCapture.execute("INSERT INTO doomed VALUES (1)")
            yield* ChangeCapture.execute("ALTER TABLE t ADD COLUMN extra")
            return yield* Effect.fail("nope" as const)
          })).pipe(Effect.ignore)
          yield* ChangeCapture.execute("INSERT INTO t VALUES (2, 'after')")
        }))
      )
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes.map((c) => [c.kind, c.table, c.after])).toEqual([
        ["insert", "t", { id: "1", v: "'kept'" }],
        ["insert", "t", { id: "2", v: "'after'" }]
      ])
      // triggers match the schema again: the next transaction needs no repair and captures normally
      yield* run(a, "UPDATE t SET v = 'x' WHERE id = 2")
      expect((yield* on(a, ChangeCapture.pending(2))).map((c) => c.kind)).toEqual(["update"])
    }))

  it.scoped("tables without any row identity refuse writes; virtual tables cannot be created through capture", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, `CREATE TABLE hidden (rowid, _rowid_, oid)`)
      yield* on(a, ChangeCapture.install)
      const error = yield* run(a, "INSERT INTO hidden VALUES (1, 2, 3)").pipe(Effect.flip)
      expect(String((error as { cause?: unknown }).cause)).toContain("cannot be identified for sync")
      expect(yield* a.unsafe("SELECT count(*) FROM hidden").values).toEqual([[0]])
      const fts = yield* run(a, "/* search */ CREATE VIRTUAL TABLE docs USING fts5(body)").pipe(Effect.flip)
      expect(fts._tag === "CaptureError" && fts.reason).toBe("UnsupportedDdl")
      expect(yield* a.unsafe("SELECT count(*) FROM sqlite_schema WHERE name = 'docs'").values).toEqual([[0]])
      expect(yield* on(a, ChangeCapture.countPending(0))).toBe(0)
    }))

  it.scoped("a deferred foreign-key violation fails the transaction cleanly (no connection left mid-transaction)", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE p (id INTEGER PRIMARY KEY)")
      yield* exec(a, "CREATE TABLE ch (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
      yield* on(a, ChangeCapture.install)
      // alone (autocommit: SQLite checks at the statement's end) and inside a capture transaction
      const alone = yield* run(a, "INSERT INTO ch VALUES (1, 99)").pipe(Effect.flip)
      expect(alone._tag).toBe("SqlError")
      expect(`${alone.message} ${String(alone.cause)}`).toContain("FOREIGN KEY")
      const inTx = yield* tx(a, "INSERT INTO p VALUES (5)", "INSERT INTO ch VALUES (1, 99)").pipe(Effect.flip)
      expect(inTx._tag).toBe("SqlError")
      expect(inTx.message).toContain("FOREIGN KEY")
      expect(yield* a.unsafe("SELECT count(*) FROM p").values).toEqual([[0]])
      // deferred, then fixed within the transaction: fine
      yield* tx(a, "INSERT INTO ch VALUES (2, 7)", "INSERT INTO p VALUES (7)")
      expect(yield* a.unsafe("SELECT id FROM ch").values).toEqual([[2]])
      expect((yield* on(a, ChangeCapture.pending(0))).map((c) => c.table)).toEqual(["ch", "p"])
    }))

  it.scoped("bookkeeping keeps plain numbers when the caller asks for BigInts (SafeIntegers)", () =>
    Effect.gen(function*() {
      const a = yield* open()
      const b = yield* open()
      yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
      yield* exec(b, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
      const safe = <X, Y, Z>(effect: Effect.Effect<X, Y, Z>) => Effect.provideService(effect, SqlClient.SafeIntegers, true)
      yield* safe(on(a, ChangeCapture.install))
      const inserted = yield* safe(on(a, ChangeCapture.execute("INSERT INTO t VALUES (?, ?)", [9007199254740993n, 1])))
      expect(inserted.lastInsertRowid).toBe(9007199254740993n)
      expect(inserted.changes).toBe(1)
      yield* safe(tx(a, "CREATE TABLE u (x)", "UPDATE t SET v = 2"))
      const changes = yield* safe(on(a, ChangeCapture.pending(0)))
      expect(changes.map((c) => [c.id, c.txId])).toEqual([[1, 1], [2, 2], [3, 2]])
      expect(changes[0]!.after).toEqual({ id: "9007199254740993", v: "1" })
      expect(yield* safe(on(a, ChangeCapture.lastChangeId))).toBe(3)
      const result = yield* safe(on(b, ChangeReplay.apply(changes, { mode: "push", clientId: "A" })))
      expect(result.lastChangeId).toBe(3)
      expect(yield* safe(on(b, ChangeReplay.progress("A")))).toBe(3)
      const rows = yield* safe(b.unsafe<{ id: bigint; v: bigint }>("SELECT id, v FROM t"))
      expect(rows).toEqual([{ id: 9007199254740993n, v: 2n }])
    }))

  it.scoped("VACUUM runs (outside a transaction) and is not a schema change to replicate", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
      yield* on(a, ChangeCapture.install)
      yield* run(a, "INSERT INTO t VALUES (1, randomblob(100000))")
      yield* run(a, "DELETE FROM t")
      const before = yield* a.unsafe("PRAGMA schema_version").values
      yield* run(a, "VACUUM")
      const versions = yield* a.unsafe(
        "SELECT (SELECT schema_version FROM pragma_schema_version), schema_version FROM temp._sync_session"
      ).values
      expect(versions[0]![0]).not.toEqual(before[0]![0]) // VACUUM bumps the cookie...
      expect(versions[0]![0]).toEqual(versions[0]![1]) // ...and capture knows it was not a schema change
      yield* tx(a, "INSERT INTO t VALUES (2, 'after')")
      expect((yield* on(a, ChangeCapture.pending(0))).map((c) => c.kind)).toEqual(["insert", "delete", "insert"])
      const inside = yield* tx(a, "VACUUM").pipe(Effect.flip)
      expect(inside._tag).toBe("SqlError")
    }))

  it.scoped("DDL with bound parameters is refused", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (x)")
      yield* on(a, ChangeCapture.install)
      const error = yield* on(a, ChangeCapture.execute("CREATE TABLE c AS SELECT ? AS x", [1])).pipe(Effect.flip)
      expect(error._tag === "CaptureError" && error.reason).toBe("UnsupportedDdl")
    }))

  it.scoped("tables without a primary key carry their rowid, even when a column is named rowid", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, `CREATE TABLE plain (rowid TEXT, oid INTEGER, v)`)
      yield* on(a, ChangeCapture.install)
      yield* run(a, "INSERT INTO plain VALUES ('user-rowid', 42, 'x')")
      yield* run(a, "UPDATE plain SET _rowid_ = 10")
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes[0]!.after).toEqual({ rowid: "'user-rowid'", oid: "42", v: "'x'" })
      expect(changes[0]!.rowid).toEqual({ before: null, after: "1" })
      expect(changes[1]!.rowid).toEqual({ before: "1", after: "10" })
    }))

  it.scoped("INSERT OR REPLACE eviction through a UNIQUE index is logged as a delete; OR IGNORE is not", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v)")
      yield* exec(a, "INSERT INTO u VALUES (1, 'a@x', 'old')")
      yield* on(a, ChangeCapture.install)
      yield* run(a, "INSERT OR IGNORE INTO u VALUES (5, 'a@x', 'ignored')")
      yield* run(a, "INSERT INTO u VALUES (6, 'b@x', 'plain')")
      expect((yield* on(a, ChangeCapture.pending(0))).map((c) => c.kind)).toEqual(["insert"])
      yield* run(a, "INSERT OR REPLACE INTO u VALUES (2, 'a@x', 'new')")
      yield* run(a, "UPDATE OR REPLACE u SET id = 2 WHERE id = 6")
      const changes = yield* on(a, ChangeCapture.pending(1))
      expect(changes.map((c) => [c.kind, (c.before ?? c.after)!["id"]])).toEqual([
        ["delete", "1"],
        ["insert", "2"],
        ["delete", "2"],
        ["update", "6"]
      ])
    }))

  it.scoped("eviction through a UNIQUE index with its own collation (NOCASE) is logged", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT)")
      yield* exec(a, "CREATE UNIQUE INDEX u_email ON u (email COLLATE NOCASE)")
      yield* exec(a, "INSERT INTO u VALUES (1, 'A@X')")
      yield* on(a, ChangeCapture.install)
      yield* run(a, "INSERT OR REPLACE INTO u VALUES (2, 'a@x')")
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes.map((c) => [c.kind, (c.before ?? c.after)!["id"]])).toEqual([["delete", "1"], ["insert", "2"]])
    }))

  it.scoped("wide tables (deep image expressions) are captured", () =>
    Effect.gen(function*() {
      const a = yield* open()
      const columns = Array.from({ length: 1500 }, (_, i) => `c${i}`)
      yield* exec(a, `CREATE TABLE wide (id INTEGER PRIMARY KEY, ${columns.join(", ")})`)
      yield* on(a, ChangeCapture.install)
      yield* run(a, `INSERT INTO wide (id, c0, c1499) VALUES (1, 'first', 'last')`)
      const [change] = yield* on(a, ChangeCapture.pending(0))
      expect(Object.keys(change!.after!).length).toBe(1501)
      expect(change!.after!["c1499"]).toBe("'last'")
    }))

  it.scoped("ensureChangeIdsAbove keeps new ids above what the remote acknowledged", () =>
    Effect.gen(function*() {
      const a = yield* open()
      yield* exec(a, "CREATE TABLE t (x)")
      yield* on(a, ChangeCapture.ensureChangeIdsAbove(41))
      yield* on(a, ChangeCapture.install)
      yield* run(a, "INSERT INTO t VALUES (1)")
      const changes = yield* on(a, ChangeCapture.pending(0))
      expect(changes.map((c) => c.id)).toEqual([42])
      // and install alone respects _sync_progress
      const b = yield* open()
      yield* exec(b, "CREATE TABLE _sync_progress (client_id TEXT PRIMARY KEY, change_id INTEGER NOT NULL)")
      yield* exec(b, "INSERT INTO _sync_progress VALUES ('me', 99)")
      yield* exec(b, "CREATE TABLE t (x)")
      yield* on(b, ChangeCapture.install)
      yield* run(b, "INSERT INTO t VALUES (1)")
      expect((yield* on(b, ChangeCapture.pending(0))).map((c) => c.id)).toEqual([100])
    }))
})

describe("statement classification", () => {
  it("only DML and queries skip the schema check", async () => {
    const { firstKeyword, mayChangeSchema } = await import("../src/internal/sqlite/sqlText.js")
    expect(firstKeyword("  -- note\n /* block */ insert into t values (1)")).toBe("INSERT")
    expect(firstKeyword("/* unterminated")).toBe("")
    for (const dml of ["SELECT 1", "with x as (select 1) insert into t select * from x", "REPLACE INTO t VALUES (1)", "values (1)"]) {
      expect(mayChangeSchema(dml)).toBe(false)
    }
    for (const ddl of ["CREATE TABLE t (x)", "-- c\nDROP TABLE t", "alter table t add column y", "ANALYZE", "PRAGMA x", "VACUUM", "", "; CREATE TABLE t(x)"]) {
      expect(mayChangeSchema(ddl)).toBe(true)
    }
  })
})

describe("multi-statement text", () => {
  const nasty = fc.array(fc.constantFrom(";", "'", "''", "--", "/*", "*/", "\n", "END", "BEGIN", "CASE", "a", " ", '"', "]"), {
    maxLength: 8
  }).map((parts) => parts.join(""))
  const literal = nasty.map((text) => `'${text.replaceAll("'", "''")}'`)
  // One pass of replaceAll can leave a "*/" behind ("/**//*" becomes "/*/*"): remove until none is left.
  const withoutCommentEnd = (text: string): string => text.includes("*/") ? withoutCommentEnd(text.replaceAll("*/", "")) : text
  const statement = fc.oneof(
    literal.map((l) => `INSERT INTO t (v) VALUES (${l})`),
    fc.tuple(nasty, literal).map(([name, l]) => `INSERT INTO t (v) SELECT ${l} AS "${name.replaceAll('"', '""')}"`),
    literal.map((l) => `INSERT INTO t (v) VALUES (1 /* ; ${withoutCommentEnd(l)} */ + 2) -- ;${l.replaceAll("\n", "")}\n`),
    fc.tuple(fc.integer({ min: 0, max: 1e6 }), literal).map(([n, l]) =>
      `CREATE TRIGGER tr${n} AFTER INSERT ON t WHEN NEW.v = ${l} BEGIN
         INSERT INTO log VALUES (CASE WHEN NEW.v = ';' THEN 'semi' ELSE CASE WHEN 1 THEN ${l} END END);
         UPDATE log SET x = x WHERE x = 'END;';
       END`
    )
  )

  it.scoped("a block comment ends at the first */, as in SQLite (fast-check seed -80811209)", () =>
    Effect.gen(function*() {
      // The text the generator once built: its comment ends inside '/*/*', so SQLite reads the rest as a
      // string, a comment and an unterminated comment swallowing the second statement ("incomplete input").
      const ended = "INSERT INTO t (v) VALUES (1 /* ; '/*/*' */ + 2) -- ;'/**//*'\n"
      const second = `INSERT INTO t (v) SELECT '' AS ""`
      expect(ChangeCapture.splitStatements(`${ended};${second};`)).toEqual([`${ended};${second};`.trim()])
      const c = yield* open()
      yield* exec(c, "CREATE TABLE t (v)")
      const refused = yield* Effect.exit(exec(c, ended))
      expect(Exit.isFailure(refused) && Cause.pretty(refused.cause)).toContain("incomplete input")
      // The statement the generator meant (no "*/" inside the comment) splits where SQLite splits.
      const meant = "INSERT INTO t (v) VALUES (1 /* ; '/*' */ + 2) -- ;'/**//*'\n"
      expect(ChangeCapture.splitStatements(`${meant};${second};`)).toEqual([meant.trim(), second])
      yield* exec(c, meant)
      yield* exec(c, second)
      expect(yield* c.unsafe("SELECT v FROM t ORDER BY rowid")).toEqual([{ v: 3 }, { v: "" }])
    }))

  it("property: splitStatements returns the statements that were joined", () =>
    fc.assert(fc.property(fc.array(statement, { minLength: 1, maxLength: 6 }), fc.constantFrom(";", ";\n", " ; -- x\n;"), (statements, separator) => {
      const unique = statements.map((s, i) => s.replace(/CREATE TRIGGER tr\d+/, `CREATE TRIGGER tr_${i}`))
      expect(ChangeCapture.splitStatements(unique.join(separator) + separator)).toEqual(unique.map((s) => s.trim()))
    })))

  it.scoped("execute runs every statement of a script as one captured unit (SQLite agrees on the split)", () =>
    Effect.gen(function*() {
      const samples = fc.sample(fc.array(statement, { minLength: 2, maxLength: 6 }), { numRuns: 20, seed: 42 })
      for (const statements of samples) {
        const unique = statements.map((s, i) => s.replace(/CREATE TRIGGER tr\d+/, `CREATE TRIGGER tr_${i}`))
        const a = yield* open()
        const b = yield* open()
        for (const c of [a, b]) yield* exec(c, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        for (const c of [a, b]) yield* exec(c, "CREATE TABLE log (x)")
        yield* on(a, ChangeCapture.install)
        yield* on(a, ChangeCapture.execute(unique.join(";\n")))
        for (const s of unique) yield* exec(b, s) // better-sqlite3 refuses text holding more than one statement
        expect(yield* dump(a)).toEqual(yield* dump(b))
        const changes = yield* on(a, ChangeCapture.pending(0))
        expect(new Set(changes.map((c) => c.txId)).size).toBe(1)
        expect(changes.filter((c) => c.kind === "ddl").length).toBe(unique.filter((s) => s.startsWith("CREATE")).length)
      }
      const c = yield* open()
      const error = yield* on(c, ChangeCapture.execute("SELECT ?; SELECT ?", [1, 2])).pipe(Effect.flip)
      expect(error._tag === "CaptureError" && error.reason).toBe("InvalidStatement")
    }))
})

describe("the change log's table", () => {
  it("accepts the four kinds of change and refuses any other, as the earlier form of its CHECK did", () => {
    const kinds = ["insert", "update", "delete", "ddl", "Insert", "", "insertx", "truncate"]
    const accepted = (create: string) => {
      const db = new BetterSqlite3(":memory:")
      try {
        db.exec(create)
        return kinds.filter((kind) => {
          try {
            db.prepare("INSERT INTO _sync_changes (tx_id, tbl, kind) VALUES (1, 't', ?)").run(kind)
            return true
          } catch {
            return false
          }
        })
      } finally {
        db.close()
      }
    }
    const earlier = ChangeLog.createChangesTable.replace(/CHECK \([^\n]*\),/, "CHECK (kind IN ('insert', 'update', 'delete', 'ddl')),")
    expect(earlier).not.toBe(ChangeLog.createChangesTable)
    expect(accepted(ChangeLog.createChangesTable)).toEqual(["insert", "update", "delete", "ddl"])
    expect(accepted(earlier)).toEqual(accepted(ChangeLog.createChangesTable))
  })
})
