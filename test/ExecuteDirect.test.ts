/**
 * `execute` and `query` run one DML statement (a known read) synchronously on the copy's connection, with
 * no permit taken: these tests hold them to what the gated path guarantees, against the real HTTP server on
 * loopback and a second replica.
 */
import { describe, expect, it as plainIt, layer } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import fc from "fast-check"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as NodePath from "node:path"
import { refusedStatement } from "../src/internal/engine/local.js"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { Harness, freshName, layerHttp, openClient, openSqlReplica, remoteQuery, tempDir } from "./support/engine.js"

const realSleep = (ms: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, ms)))

layer(layerHttp, { timeout: 60_000 })("execute and query on the direct path", (it) => {
  it.scoped("every row one statement logs shares the txId of its first, evictions and a failed statement included", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("direct-units"))
      const dir = yield* tempDir
      const db = yield* openClient(remote, NodePath.join(dir, "a"))
      yield* db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, u UNIQUE)")
      yield* db.execute("INSERT INTO t VALUES (1, 'a')")
      yield* db.push
      const units = db.query<{ id: number; tx_id: number; kind: string }>("SELECT id, tx_id, kind FROM _sync_changes ORDER BY id")
      // (the first statements took the gated path; these run on the direct one)
      yield* db.execute("INSERT INTO t VALUES (?, ?)", [2, "b"])
      yield* db.execute("INSERT INTO t VALUES (3, 'c'), (4, 'd')")
      yield* db.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", [5, "a"])
      expect(yield* Effect.flip(db.execute("INSERT INTO t VALUES (6, 'e'), (7, 'b')"))).toBeDefined()
      yield* db.execute("UPDATE t SET u = u || '!' WHERE id >= 4")
      const logged = yield* units
      const first = logged[0]!.id
      expect(logged.map((r) => [r.id - first, r.tx_id - first, r.kind])).toEqual([
        [0, 0, "insert"],
        [1, 1, "insert"], [2, 1, "insert"],
        [3, 3, "delete"], [4, 3, "insert"],
        [5, 5, "update"], [6, 5, "update"]
      ])
      expect(yield* db.push).toBe(true)
      expect(yield* remoteQuery(remote, "SELECT id, u FROM t ORDER BY id")).toEqual([
        { id: 2, u: "b" }, { id: 3, u: "c" }, { id: 4, u: "d!" }, { id: 5, u: "a!" }
      ])
    }))

  it.scoped("a write and a read from another fiber during an open transaction wait for it; its rollback takes only its own rows", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("direct-tx"))
      const dir = yield* tempDir
      const context = yield* openSqlReplica(remote, NodePath.join(dir, "a"))
      const db = Context.get(context, SyncDatabase.SyncDatabase)
      const sql = Context.get(context, SqlClient.SqlClient)
      yield* db.execute("CREATE TABLE t (id TEXT PRIMARY KEY)")
      yield* db.execute("INSERT INTO t VALUES ('before')")
      // Both statements are on the direct path by now (a known read, capture installed).
      expect(yield* db.query("SELECT id FROM t ORDER BY id")).toEqual([{ id: "before" }])

      // The transaction runs in a fiber of its own: the read and the write below are not part of it.
      const opened = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const transaction = yield* Effect.fork(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO t VALUES ('inside')`
        yield* Deferred.succeed(opened, undefined)
        yield* Deferred.await(release)
        return yield* Effect.fail("rolled back" as const)
      })))
      yield* Deferred.await(opened)
      const write = yield* Effect.fork(db.execute("INSERT INTO t VALUES ('outside')"))
      const read = yield* Effect.fork(db.query<{ id: string }>("SELECT id FROM t ORDER BY id"))
      yield* realSleep(50)
      // Neither ran inside the open transaction: they wait for it.
      expect(Option.isNone(yield* Fiber.poll(write))).toBe(true)
      expect(Option.isNone(yield* Fiber.poll(read))).toBe(true)
      yield* Deferred.succeed(release, undefined)
      expect(yield* Effect.flip(Fiber.join(transaction))).toBe("rolled back")
      expect((yield* Fiber.join(write)).changes).toBe(1)
      expect((yield* Fiber.join(read)).map((r) => r.id)).not.toContain("inside")
      expect(yield* db.query("SELECT id FROM t ORDER BY id")).toEqual([{ id: "before" }, { id: "outside" }])

      // Captured exactly: the remote and a second replica get the rows the writer kept, and only those.
      expect(yield* db.push).toBe(true)
      expect(yield* remoteQuery(remote, "SELECT id FROM t ORDER BY id")).toEqual([{ id: "before" }, { id: "outside" }])
      const b = yield* openClient(remote, NodePath.join(dir, "b"))
      expect(yield* b.query("SELECT id FROM t ORDER BY id")).toEqual([{ id: "before" }, { id: "outside" }])
    }))

  it.scoped("more statement texts than the statement cache holds: every write captured once, results as SQLite reports them", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("direct-cache"))
      const dir = yield* tempDir
      const db = yield* openClient(remote, NodePath.join(dir, "a"))
      yield* db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
      // 600 distinct texts (the cache keeps 500), then the first ones again after they were dropped.
      const texts = Array.from({ length: 600 }, (_, i) => `INSERT INTO t (id, v) VALUES (?, 'text ${i}')`)
      for (let i = 0; i < texts.length; i++) {
        const result = yield* db.execute(texts[i]!, [i + 1])
        expect(result).toEqual({ changes: 1, lastInsertRowid: i + 1 })
      }
      for (let i = 0; i < 10; i++) {
        expect(yield* db.execute(texts[i]!, [1000 + i])).toEqual({ changes: 1, lastInsertRowid: 1000 + i })
      }
      // After a statement that inserted nothing, 0 (SQLite would still report the last insert's rowid).
      expect(yield* db.execute("UPDATE t SET v = 'u' WHERE id = ?", [1])).toEqual({ changes: 1, lastInsertRowid: 0 })
      expect(yield* db.execute("INSERT OR IGNORE INTO t (id, v) VALUES (?, 'x')", [1])).toEqual({ changes: 0, lastInsertRowid: 0 })
      expect(yield* db.execute("DELETE FROM t WHERE id = ?", [2])).toEqual({ changes: 1, lastInsertRowid: 0 })

      const stats = yield* db.stats
      // CREATE, 610 inserts, the update, the delete (the ignored insert captured nothing)
      expect(stats.pendingChanges).toBe(613)
      expect(yield* db.push).toBe(true)
      const b = yield* openClient(remote, NodePath.join(dir, "b"))
      expect(yield* b.query("SELECT count(*) AS n, sum(id) AS s FROM t")).toEqual(
        yield* db.query("SELECT count(*) AS n, sum(id) AS s FROM t")
      )
      expect(yield* b.query("SELECT v FROM t WHERE id = 1")).toEqual([{ v: "u" }])
    }))

  it.scoped("a statement that would let SQLite checkpoint or leave WAL mode on its own is refused with a typed error and changes nothing", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("direct-pragma"))
      const dir = yield* tempDir
      const context = yield* openSqlReplica(remote, NodePath.join(dir, "a"))
      const db = Context.get(context, SyncDatabase.SyncDatabase)
      const sql = Context.get(context, SqlClient.SqlClient)
      yield* db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
      yield* db.execute("INSERT INTO t VALUES (1, 'a')")
      const walBytes = (yield* db.stats).draftWalBytes
      expect(walBytes).toBeGreaterThan(0)
      const settings = Effect.all([
        db.query("PRAGMA wal_autocheckpoint"),
        db.query("SELECT (SELECT journal_mode FROM pragma_journal_mode) AS mode, (SELECT locking_mode FROM pragma_locking_mode) AS locking")
      ])
      const before = yield* settings
      expect(before).toEqual([[{ wal_autocheckpoint: 0 }], [{ mode: "wal", locking: "normal" }]])
      // SQLite calls this one a read (read-only, returns a row): only the refusal keeps `query` from running it
      const settingRead = yield* Effect.flip(db.query("PRAGMA wal_autocheckpoint = 1000"))
      expect(settingRead.message).toMatch(/^PRAGMA wal_autocheckpoint is refused/)
      const refused = [
        "PRAGMA wal_autocheckpoint = 1000",
        "pragma WAL_AUTOCHECKPOINT(1)",
        "PRAGMA wal_checkpoint",
        "PRAGMA main.wal_checkpoint(TRUNCATE)",
        "/* settings */ PRAGMA \"main\".journal_mode = DELETE",
        "PRAGMA locking_mode = EXCLUSIVE",
        "INSERT INTO t VALUES (2, 'b'); PRAGMA wal_checkpoint(RESTART)"
      ]
      for (const statement of refused) {
        const error = yield* Effect.flip(db.execute(statement))
        expect(error._tag).toBe("SqlStatementError")
        expect(error.reason).toBe("Statement")
        expect(error.message).toMatch(/^PRAGMA (wal_autocheckpoint|wal_checkpoint|journal_mode|locking_mode) is refused/)
        expect(error.sql).toBe(statement)
        // `query` refuses what SQLite does not call one read as before; what it calls one, as a checkpointing pragma
        const read = yield* Effect.flip(db.query(statement))
        expect(read._tag).toBe("SqlStatementError")
        expect(read.message).toMatch(/is refused|reads only|more than one statement/)
        expect(read.sql).toBe(statement)
        // nor does a reactive query's look at the tables it reads (its EXPLAIN prepares the statement)
        const reactive = yield* Effect.flip(Stream.runHead(db.reactive(statement)))
        expect(reactive._tag).toBe("SqlStatementError")
        expect(reactive.message).toMatch(/is refused|more than one statement/)
        // through the SqlClient, outside and inside a transaction (which it rolls back)
        expect((yield* Effect.flip(sql.unsafe(statement))).message).toContain("is refused")
        const inside = yield* Effect.flip(sql.withTransaction(Effect.zipRight(
          sql`INSERT INTO t VALUES (3, 'c')`,
          sql.unsafe(statement)
        )))
        expect(inside.message).toContain("is refused")
      }
      // Nothing changed: the settings, the WAL (no checkpoint ran), the rows, the pending changes.
      expect(yield* settings).toEqual(before)
      expect((yield* db.stats).draftWalBytes).toBe(walBytes)
      expect(yield* db.query("SELECT id, v FROM t ORDER BY id")).toEqual([{ id: 1, v: "a" }])
      expect((yield* db.stats).pendingChanges).toBe(2)
      // Reading the settings stays allowed, and the copy syncs as before.
      expect(yield* db.query("PRAGMA wal_autocheckpoint")).toEqual([{ wal_autocheckpoint: 0 }])
      expect(Exit.isSuccess(yield* Effect.exit(db.execute("PRAGMA journal_mode")))).toBe(true)
      yield* db.execute("INSERT INTO t VALUES (4, 'd')")
      expect(yield* db.push).toBe(true)
      const b = yield* openClient(remote, NodePath.join(dir, "b"))
      expect(yield* b.query("SELECT id, v FROM t ORDER BY id")).toEqual([{ id: 1, v: "a" }, { id: 4, v: "d" }])
    }))
})

describe("the statements refused for letting SQLite checkpoint on its own", () => {
  const names = ["wal_checkpoint", "wal_autocheckpoint", "journal_mode", "locking_mode", "user_version", "cache_size", "synchronous"]
  const values: Record<string, ReadonlyArray<string>> = {
    wal_checkpoint: ["PASSIVE", "FULL", "RESTART", "TRUNCATE"],
    wal_autocheckpoint: ["0", "1", "1000"],
    journal_mode: ["WAL", "DELETE", "TRUNCATE", "MEMORY", "OFF", "PERSIST"],
    locking_mode: ["NORMAL", "EXCLUSIVE"],
    user_version: ["3"],
    cache_size: ["-2000"],
    synchronous: ["FULL", "NORMAL"]
  }
  const pragma = fc.record({
    name: fc.constantFrom(...names),
    form: fc.constantFrom("bare", "=", "()"),
    schema: fc.constantFrom("", "main.", "\"main\".", "[main] . "),
    comment: fc.constantFrom("", "/* c */ ", "-- c\n"),
    upper: fc.boolean(),
    pick: fc.nat()
  }).map(({ comment, form, name, pick, schema, upper }) => {
    const value = values[name]![pick % values[name]!.length]!
    const spelled = upper ? name.toUpperCase() : name
    const text = `${comment}PRAGMA ${comment}${schema}${spelled}${form === "bare" ? "" : form === "=" ? ` = ${value}` : `(${value})`}`
    return { name, form, text }
  })

  plainIt("property: a pragma is refused when it checkpoints or sets a checkpoint or journal setting; SQLite agrees nothing let through does", () => {
    const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-pragma-"))
    try {
      let n = 0
      fc.assert(fc.property(pragma, fc.boolean(), ({ form, name, text }, after) => {
        const statement = after ? `INSERT INTO t VALUES (1); ${text}` : text
        const refused = refusedStatement(statement)
        const expected = name === "wal_checkpoint" ||
          (["wal_autocheckpoint", "journal_mode", "locking_mode"].includes(name) && form !== "bare")
        expect(refused !== undefined).toBe(expected)
        if (refused !== undefined) expect(refused.sql).toBe(statement)
        // What SQLite does with the pragma on a copy as the engine keeps it (WAL, no autocheckpoint, frames
        // in the WAL): anything it checkpoints or changes of these settings must have been refused.
        const file = NodePath.join(dir, `db-${n++}`)
        const db = new BetterSqlite3(file)
        try {
          db.pragma("journal_mode = WAL")
          db.pragma("wal_autocheckpoint = 0")
          db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (0)")
          const fileBefore = Fs.readFileSync(file)
          try {
            db.exec(text)
          } catch {
            return // a form SQLite refuses itself changes nothing
          }
          const changed = !Fs.readFileSync(file).equals(fileBefore) ||
            db.pragma("wal_autocheckpoint", { simple: true }) !== 0 ||
            db.pragma("journal_mode", { simple: true }) !== "wal" ||
            db.pragma("locking_mode", { simple: true }) !== "normal"
          if (changed) expect(refused).toBeDefined()
        } finally {
          db.close()
        }
      }), { numRuns: 150 })
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
