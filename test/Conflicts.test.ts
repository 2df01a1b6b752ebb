/**
 * Issue 4 against the real HTTP server on loopback: conflict policies, detection and reporting, local
 * transactions as units, schema changes, and the hard cases, each with two SyncDatabase replicas.
 */
import { expect, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as NodePath from "node:path"
import * as ConflictPolicy from "../src/ConflictPolicy.js"
import { Resolution, Transformed } from "../src/ConflictPolicy.js"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncRemote from "../src/SyncRemote.js"
import { Harness, freshName, layerHttp, openClient, remoteQuery, tempDir } from "./support/engine.js"

type Db = SyncDatabase.Service

/** A fresh remote database and two replicas that both hold `schema`. */
const pair = (
  schema: string,
  a: Partial<SyncDatabase.Options> = {},
  b: Partial<SyncDatabase.Options> = {}
) =>
  Effect.gen(function*() {
    const harness = yield* Harness
    const remote = yield* harness.remote(freshName("conflicts"))
    const dir = yield* tempDir
    const dbA = yield* openClient(remote, NodePath.join(dir, "a"), a)
    const dbB = yield* openClient(remote, NodePath.join(dir, "b"), b)
    if (schema !== "") yield* dbA.execute(schema)
    yield* dbA.sync
    yield* dbB.sync
    return { remote, a: dbA, b: dbB, dir }
  })

const converge = (remote: SyncRemote.Service, a: Db, b: Db, query: string) =>
  Effect.gen(function*() {
    yield* a.sync
    yield* b.sync
    yield* a.sync
    const onA = yield* a.query(query)
    expect(yield* b.query(query)).toEqual(onA)
    expect(yield* remoteQuery(remote, query)).toEqual(onA)
    expect((yield* a.stats).pendingChanges).toBe(0)
    expect((yield* b.stats).pendingChanges).toBe(0)
    return onA
  })

const conflictEvents = (queue: Queue.Dequeue<import("../src/SyncEvents.js").SyncEvent>) =>
  Effect.map(Queue.takeAll(queue), (events) => [...events].filter((e) => e._tag === "Conflict"))

class Seen extends Context.Tag("test/Seen")<Seen, Ref.Ref<ReadonlyArray<string>>>() {}

layer(layerHttp, { excludeTestServices: true, timeout: 60_000 })("Conflicts over HTTP", (it) => {
  // ---------------------------------------------------------------------------------------------------
  // Turso's scenarios
  // ---------------------------------------------------------------------------------------------------

  it.scoped("non-overlapping keys merge", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
      yield* a.execute("INSERT INTO t VALUES ('a1', 'A'), ('a2', 'A')")
      yield* b.execute("INSERT INTO t VALUES ('b1', 'B')")
      yield* a.push
      yield* b.push
      const rows = yield* converge(remote, a, b, "SELECT id, v FROM t ORDER BY id")
      expect(rows).toEqual([{ id: "a1", v: "A" }, { id: "a2", v: "A" }, { id: "b1", v: "B" }])
      expect(yield* a.conflicts).toEqual([])
      expect(yield* b.conflicts).toEqual([])
    }))

  it.scoped("lastPushWinsRow for shared keys: reported as an event and in the conflict log, which survives pulls", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT, w TEXT)", {}, { conflicts: "lastPushWinsRow" })
      yield* a.execute("INSERT INTO t VALUES ('k', 'v0', 'w0')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE t SET v = 'from-a', w = 'w-a' WHERE id = 'k'")
      yield* b.execute("UPDATE t SET v = 'from-b' WHERE id = 'k'")
      yield* a.push
      const queue = yield* b.subscribe
      yield* b.push
      const rows = yield* converge(remote, a, b, "SELECT id, v, w FROM t")
      // last push wins per row: b's whole row (its w was still w0)
      expect(rows).toEqual([{ id: "k", v: "from-b", w: "w0" }])
      const events = yield* conflictEvents(queue)
      expect(events.length).toBe(1)
      const log = yield* b.conflicts
      expect(log.length).toBe(1)
      const entry = log[0]!
      expect(entry).toMatchObject({
        kind: "RowChanged",
        table: "t",
        key: [["id", "'k'"]],
        localBefore: { id: "'k'", v: "'v0'", w: "'w0'" },
        localAfter: { id: "'k'", v: "'from-b'", w: "'w0'" },
        remote: { id: "'k'", v: "'from-a'", w: "'w-a'" },
        decision: "Replace"
      })
      expect(entry.at).toBeGreaterThan(Date.now() - 60_000)
      expect(events[0]!._tag === "Conflict" && events[0]!.entry).toEqual(entry)
      // the log is a file of its own: pulls (which replace Draft) keep it
      yield* b.pull
      expect(yield* b.conflicts).toEqual(log)
    }))

  it.scoped("last push wins with a delete (and a remote delete racing a local update, both ways)", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
      yield* a.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
      yield* a.sync
      yield* b.sync
      // row 1: a updates, b deletes, b pushes last → deleted
      yield* a.execute("UPDATE t SET v = 'a-updated' WHERE id = 1")
      yield* b.execute("DELETE FROM t WHERE id = 1")
      // row 2: a deletes, b updates, b pushes last → re-created with b's row
      yield* a.execute("DELETE FROM t WHERE id = 2")
      yield* b.execute("UPDATE t SET v = 'b-updated' WHERE id = 2")
      yield* a.push
      yield* b.push
      expect(yield* converge(remote, a, b, "SELECT id, v FROM t ORDER BY id")).toEqual([{ id: 2, v: "b-updated" }])
      const kinds = (yield* b.conflicts).map((e) => [e.kind, e.decision])
      expect(kinds).toEqual([["RowChanged", "KeepLocal"], ["RowMissing", "KeepLocal"]])
    }))

  it.scoped("a UNIQUE constraint conflict on push fails typed, naming the statement and the local transaction; nothing changes", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
      yield* a.execute("INSERT INTO users VALUES (1, 'x@example.com')")
      yield* a.push
      yield* b.execute("INSERT INTO users VALUES (2, 'y@example.com'); INSERT INTO users VALUES (3, 'x@example.com')")
      const before = yield* remoteQuery(remote, "SELECT * FROM users ORDER BY id")
      const error = yield* Effect.flip(b.push)
      expect(error).toMatchObject({ _tag: "ConflictError", reason: "Constraint", table: "users" })
      if (error._tag !== "ConflictError") throw error
      expect(error.statement).toMatch(/INSERT INTO "users"/)
      expect(error.txId).toBeTypeOf("number")
      expect(error.message).toContain(`local transaction ${error.txId}`)
      expect(error.message).toContain("UNIQUE")
      // neither the remote nor Draft moved; the whole local transaction stays pending
      expect(yield* remoteQuery(remote, "SELECT * FROM users ORDER BY id")).toEqual(before)
      expect(yield* b.query("SELECT id FROM users ORDER BY id")).toEqual([{ id: 2 }, { id: 3 }])
      expect((yield* b.stats).pendingChanges).toBe(2)
    }))

  // ---------------------------------------------------------------------------------------------------
  // policies
  // ---------------------------------------------------------------------------------------------------

  it.scoped("mergeColumns: edits of different columns both survive; the same column falls back to last push wins", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair(
        "CREATE TABLE t (id TEXT PRIMARY KEY, title TEXT, body TEXT, n INTEGER)",
        { conflicts: "mergeColumns" },
        { conflicts: "mergeColumns" }
      )
      yield* a.execute("INSERT INTO t VALUES ('k', 't0', 'b0', 0)")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE t SET title = 'title-a', n = 1 WHERE id = 'k'")
      yield* b.execute("UPDATE t SET body = 'body-b', n = 2 WHERE id = 'k'")
      yield* a.push
      yield* b.push
      expect(yield* converge(remote, a, b, "SELECT * FROM t")).toEqual([{ id: "k", title: "title-a", body: "body-b", n: 2 }])
      expect((yield* b.conflicts).map((e) => e.decision)).toEqual(["KeepLocal"])
    }))

  it.scoped("default (lastPushWins): edits of different columns on two replicas both survive; on the same column the later push wins", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE t (id TEXT PRIMARY KEY, title TEXT, body TEXT, n INTEGER)")
      yield* a.execute("INSERT INTO t VALUES ('k', 't0', 'b0', 0)")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE t SET title = 'title-a', n = 1 WHERE id = 'k'")
      yield* b.execute("UPDATE t SET body = 'body-b', n = 2 WHERE id = 'k'")
      yield* a.push
      yield* b.push
      expect(yield* converge(remote, a, b, "SELECT * FROM t")).toEqual([{ id: "k", title: "title-a", body: "body-b", n: 2 }])
      expect((yield* b.conflicts).map((e) => [e.kind, e.decision])).toEqual([["RowChanged", "KeepLocal"]])
    }))

  it.scoped("default (lastPushWins): two offline replicas inserting with SQLite-assigned ids lose no row; the second push fails with KeyExists", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
      yield* a.execute("INSERT INTO notes (body) VALUES ('from a')")
      yield* b.execute("INSERT INTO notes (body) VALUES ('from b')")
      yield* a.push
      const error = yield* Effect.flip(b.push)
      expect(error).toMatchObject({ _tag: "ConflictError", reason: "Unresolved", kind: "KeyExists", table: "notes" })
      expect(error.message).toContain("id = 1")
      expect(error.message).toContain("another replica inserted")
      // nothing overwritten: the remote keeps a's row, b keeps its own, still pending
      expect(yield* remoteQuery(remote, "SELECT id, body FROM notes")).toEqual([{ id: 1, body: "from a" }])
      expect(yield* b.query("SELECT id, body FROM notes")).toEqual([{ id: 1, body: "from b" }])
      expect((yield* b.stats).pendingChanges).toBe(1)
      yield* b.pull
      expect((yield* b.stats).pendingChanges).toBe(1)
      expect(yield* Effect.flip(b.push)).toMatchObject({ _tag: "ConflictError", kind: "KeyExists" })
      expect(yield* remoteQuery(remote, "SELECT id, body FROM notes")).toEqual([{ id: 1, body: "from a" }])
      // an application settles it with a resolver: here, the later insert moves to a fresh key
      const rekey: ConflictPolicy.Resolver = (conflict) =>
        Effect.succeed(
          conflict.kind === "KeyExists" && conflict.change.after !== null
            ? Resolution.Replace({ row: { ...conflict.change.after, id: "100" } })
            : ConflictPolicy.builtin("lastPushWins", conflict)
        )
      const c = yield* openClient(remote, NodePath.join((yield* tempDir), "c"), { conflicts: rekey })
      yield* c.pull
      const d = yield* openClient(remote, NodePath.join((yield* tempDir), "d"))
      yield* d.pull
      yield* d.execute("INSERT INTO notes (body) VALUES ('from d')")
      yield* c.execute("INSERT INTO notes (body) VALUES ('from c')")
      yield* d.push
      yield* c.push
      expect(yield* remoteQuery(remote, "SELECT id, body FROM notes ORDER BY id")).toEqual([
        { id: 1, body: "from a" },
        { id: 2, body: "from d" },
        { id: 100, body: "from c" }
      ])
      expect((yield* c.conflicts).map((e) => [e.kind, e.decision])).toEqual([["KeyExists", "Replace"]])
    }))

  it.scoped("a resolver's Replace row is bound, never spliced: a subquery or an unquoted string fails the push naming the column", () =>
    Effect.gen(function*() {
      for (const bad of ["(SELECT group_concat(name) FROM sqlite_schema)", "plain text", "1; DROP TABLE t"]) {
        const { a, b, remote } = yield* pair("CREATE TABLE t (id TEXT PRIMARY KEY, title TEXT, body TEXT)", {}, {
          conflicts: (conflict) =>
            Effect.succeed(Resolution.Replace({ row: { ...conflict.change.after!, body: bad } }))
        })
        yield* a.execute("INSERT INTO t VALUES ('k', 't0', 'b0')")
        yield* a.sync
        yield* b.sync
        yield* a.execute("UPDATE t SET title = 'A' WHERE id = 'k'")
        yield* a.push
        yield* b.execute("UPDATE t SET body = 'B' WHERE id = 'k'")
        const error = yield* Effect.flip(b.push)
        expect(error).toMatchObject({ _tag: "SqlStatementError", reason: "Replay" })
        expect(error.message).toContain("not a SQL literal in column body")
        expect((error.cause as { readonly reason?: string }).reason).toBe("InvalidChange")
        // nothing ran: the remote keeps a's row, b's change stays pending
        expect(yield* remoteQuery(remote, "SELECT * FROM t")).toEqual([{ id: "k", title: "A", body: "b0" }])
        expect((yield* b.stats).pendingChanges).toBe(1)
      }
    }))

  it.scoped("remoteWins drops the local transaction holding a conflicting change (all of it) and reports it", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", {}, { conflicts: "remoteWins" })
      yield* a.execute("INSERT INTO t VALUES (1, 'r1'), (2, 'r2')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE t SET v = 'a' WHERE id = 1")
      yield* a.push
      // one local transaction: its second change conflicts, so neither is applied
      yield* b.execute("UPDATE t SET v = 'b' WHERE id = 2; UPDATE t SET v = 'b' WHERE id = 1")
      // another transaction without conflict goes through
      yield* b.execute("INSERT INTO t VALUES (3, 'b')")
      yield* b.push
      expect(yield* converge(remote, a, b, "SELECT id, v FROM t ORDER BY id")).toEqual([
        { id: 1, v: "a" },
        { id: 2, v: "r2" },
        { id: 3, v: "b" }
      ])
      const log = yield* b.conflicts
      expect(log.map((e) => [e.kind, e.decision, e.key])).toEqual([["RowChanged", "KeepRemote", [["id", "1"]]]])
    }))

  it.scoped("a custom resolver uses a service of the environment; Replace writes its row; Skip drops the transaction", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("resolver"))
      const dir = yield* tempDir
      const seen = yield* Ref.make<ReadonlyArray<string>>([])
      const resolver: ConflictPolicy.Resolver<Seen> = (conflict) =>
        Effect.gen(function*() {
          const log = yield* Seen
          yield* Ref.update(log, (xs) => [...xs, `${conflict.mode}:${conflict.kind}:${conflict.table}`])
          if (conflict.table === "skipped") return Resolution.Skip()
          const remoteRow = conflict.remote!
          const local = conflict.change.after!
          const merged = `${ConflictPolicy.value(remoteRow.v!)}+${ConflictPolicy.value(local.v!)}`
          return Resolution.Replace({ row: { ...local, v: ConflictPolicy.literal(merged) } })
        })
      const a = yield* openClient(remote, NodePath.join(dir, "a"))
      const b = yield* Layer.build(
        SyncDatabase.layerRemote({ path: NodePath.join(dir, "b"), conflicts: resolver }).pipe(
          Layer.provide(Layer.succeed(SyncRemote.SyncRemote, remote)),
          Layer.provide(Layer.succeed(Seen, seen))
        )
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
      yield* a.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, v TEXT); CREATE TABLE skipped (id TEXT PRIMARY KEY, v TEXT)")
      yield* a.execute("INSERT INTO notes VALUES ('n', 'base'); INSERT INTO skipped VALUES ('s', 'base')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE notes SET v = 'A' WHERE id = 'n'; UPDATE skipped SET v = 'A' WHERE id = 's'")
      yield* a.push
      yield* b.execute("UPDATE notes SET v = 'B' WHERE id = 'n'")
      yield* b.execute("INSERT INTO notes VALUES ('other', 'B'); UPDATE skipped SET v = 'B' WHERE id = 's'")
      yield* b.sync
      yield* a.sync
      expect(yield* a.query("SELECT * FROM notes ORDER BY id")).toEqual([{ id: "n", v: "A+B" }])
      expect(yield* b.query("SELECT * FROM notes ORDER BY id")).toEqual([{ id: "n", v: "A+B" }])
      expect(yield* remoteQuery(remote, "SELECT * FROM skipped")).toEqual([{ id: "s", v: "A" }])
      expect((yield* Ref.get(seen)).filter((s) => s.startsWith("push:"))).toEqual([
        "push:RowChanged:notes",
        "push:RowChanged:skipped"
      ])
      expect((yield* b.conflicts).map((e) => [e.table, e.decision])).toEqual([["notes", "Replace"], ["skipped", "Skip"]])
    }))

  it.scoped("a resolver answering Fail fails the push typed; the changes stay pending and nothing moves", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", {}, {
        conflicts: () => Effect.succeed(Resolution.Fail({ message: "needs a human" }))
      })
      yield* a.execute("INSERT INTO t VALUES (1, 'x')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE t SET v = 'a' WHERE id = 1")
      yield* a.push
      yield* b.execute("UPDATE t SET v = 'b' WHERE id = 1")
      const error = yield* Effect.flip(b.push)
      expect(error).toMatchObject({ _tag: "ConflictError", reason: "Unresolved" })
      expect(error.message).toContain("needs a human")
      expect(yield* remoteQuery(remote, "SELECT v FROM t")).toEqual([{ v: "a" }])
      expect(yield* b.query("SELECT v FROM t")).toEqual([{ v: "b" }])
      expect((yield* b.stats).pendingChanges).toBe(1)
      // a pull cannot fail on it: the unsettled transaction is left out of the copy and stays pending
      yield* b.pull
      expect(yield* b.query("SELECT v FROM t")).toEqual([{ v: "a" }])
      expect((yield* b.stats).pendingChanges).toBe(1)
      expect(yield* Effect.flip(b.push)).toMatchObject({ _tag: "ConflictError", reason: "Unresolved" })
      expect(yield* b.conflicts).toEqual([])
    }))

  it.scoped("transform: a counter's absolute value becomes an increment of the remote's value", () =>
    Effect.gen(function*() {
      const increment: ConflictPolicy.Transform = (change, current) =>
        Effect.succeed(
          change.table === "counters" && change.kind === "update" && current !== null
            ? Transformed.Rewrite({
              change: {
                ...change,
                before: current,
                after: {
                  ...change.after!,
                  n: String(BigInt(current.n!) + BigInt(change.after!.n!) - BigInt(change.before!.n!))
                }
              }
            })
            : change.table === "scratch"
            ? Transformed.Skip()
            : Transformed.Keep()
        )
      const { a, b, remote } = yield* pair(
        "CREATE TABLE counters (id TEXT PRIMARY KEY, n INTEGER NOT NULL); CREATE TABLE scratch (x)",
        { transform: increment },
        { transform: increment }
      )
      yield* a.execute("INSERT INTO counters VALUES ('c', 0)")
      yield* a.sync
      yield* b.sync
      for (let i = 0; i < 3; i++) yield* a.execute("UPDATE counters SET n = n + 1 WHERE id = 'c'")
      for (let i = 0; i < 2; i++) yield* b.execute("UPDATE counters SET n = n + 1 WHERE id = 'c'")
      yield* b.execute("INSERT INTO scratch VALUES ('local only')")
      yield* a.push
      yield* b.push
      expect(yield* converge(remote, a, b, "SELECT n FROM counters")).toEqual([{ n: 5 }])
      expect(yield* remoteQuery(remote, "SELECT count(*) AS c FROM scratch")).toEqual([{ c: 0 }])
      expect(yield* b.conflicts).toEqual([])
    }))

  // ---------------------------------------------------------------------------------------------------
  // transactions and constraints
  // ---------------------------------------------------------------------------------------------------

  it.scoped("a local transaction is a unit: a constraint in its last statement keeps all of it off the remote; remoteWins drops it whole", () =>
    Effect.gen(function*() {
      for (const policy of ["lastPushWins", "remoteWins"] as const) {
        const { a, b, remote } = yield* pair(
          "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, age INTEGER CHECK (age >= 0))",
          {},
          { conflicts: policy }
        )
        yield* a.execute("INSERT INTO users VALUES (1, 'taken', 30)")
        yield* a.push
        yield* b.execute("INSERT INTO users VALUES (10, 'fresh', 1)")
        yield* b.execute("INSERT INTO users VALUES (2, 'b2', 20); UPDATE users SET age = 21 WHERE id = 2; INSERT INTO users VALUES (3, 'taken', 40)")
        yield* b.execute("INSERT INTO users VALUES (11, 'fresh2', 1)")
        if (policy === "lastPushWins") {
          const error = yield* Effect.flip(b.push)
          expect(error).toMatchObject({ _tag: "ConflictError", reason: "Constraint" })
          expect(yield* remoteQuery(remote, "SELECT id FROM users ORDER BY id")).toEqual([{ id: 1 }])
        } else {
          yield* b.push
          expect(yield* converge(remote, a, b, "SELECT id, email FROM users ORDER BY id")).toEqual([
            { id: 1, email: "taken" },
            { id: 10, email: "fresh" },
            { id: 11, email: "fresh2" }
          ])
          expect((yield* b.conflicts).map((e) => [e.kind, e.decision])).toEqual([["Constraint", "KeepRemote"]])
        }
      }
    }))

  it.scoped("a foreign key broken by a remote delete is a Constraint conflict of the local transaction", () =>
    Effect.gen(function*() {
      const schema = "CREATE TABLE parent (id INTEGER PRIMARY KEY); " +
        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent(id))"
      for (const policy of ["lastPushWins", "remoteWins"] as const) {
        const { a, b, remote } = yield* pair(schema, {}, { conflicts: policy })
        yield* a.execute("INSERT INTO parent VALUES (1)")
        yield* a.sync
        yield* b.sync
        yield* a.execute("DELETE FROM parent WHERE id = 1")
        yield* a.push
        yield* b.execute("INSERT INTO child VALUES (7, 1)")
        if (policy === "lastPushWins") {
          const error = yield* Effect.flip(b.push)
          expect(error).toMatchObject({ _tag: "ConflictError", reason: "Constraint", statement: "PRAGMA foreign_key_check" })
        } else {
          yield* b.push
          expect(yield* converge(remote, a, b, "SELECT * FROM child")).toEqual([])
          expect((yield* b.conflicts).map((e) => [e.kind, e.decision])).toEqual([["Constraint", "KeepRemote"]])
        }
      }
    }))

  it.scoped("CHECK and NOT NULL violations met on replay are Constraint conflicts: fail by default, settled by a resolver", () =>
    Effect.gen(function*() {
      // Decrements become relative to the remote value, so two replicas taking the last unit go below 0.
      const relative: ConflictPolicy.Transform = (change, current) =>
        Effect.succeed(
          change.kind === "update" && current !== null && change.table === "stock"
            ? Transformed.Rewrite({
              change: {
                ...change,
                before: current,
                after: { ...change.after!, n: String(BigInt(current.n!) + BigInt(change.after!.n!) - BigInt(change.before!.n!)) }
              }
            })
            : change.kind === "insert" && change.table === "named" && change.after!.name === "'anonymous'"
            ? Transformed.Rewrite({ change: { ...change, after: { ...change.after!, name: "NULL" } } })
            : Transformed.Keep()
        )
      const floorAtZero: ConflictPolicy.Resolver = (conflict) =>
        Effect.succeed(
          conflict.kind === "Constraint" && conflict.table === "stock"
            ? Resolution.Replace({ row: { ...conflict.change.after!, n: "0" } })
            : conflict.kind === "Constraint"
            ? Resolution.Skip()
            : Resolution.KeepLocal()
        )
      for (const settle of [false, true]) {
        const { a, b, remote } = yield* pair(
          "CREATE TABLE stock (id TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0)); " +
            "CREATE TABLE named (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
          { transform: relative },
          { transform: relative, ...(settle ? { conflicts: floorAtZero } : {}) }
        )
        yield* a.execute("INSERT INTO stock VALUES ('s', 1)")
        yield* a.sync
        yield* b.sync
        yield* a.execute("UPDATE stock SET n = n - 1 WHERE id = 's'")
        yield* a.push
        yield* b.execute("UPDATE stock SET n = n - 1 WHERE id = 's'")
        if (!settle) {
          const check = yield* Effect.flip(b.push)
          expect(check).toMatchObject({ _tag: "ConflictError", reason: "Constraint", table: "stock" })
          expect(check.message).toContain("CHECK constraint failed")
          continue
        }
        yield* b.execute("INSERT INTO named VALUES (1, 'anonymous')")
        yield* b.push
        expect(yield* converge(remote, a, b, "SELECT n FROM stock")).toEqual([{ n: 0 }])
        expect(yield* remoteQuery(remote, "SELECT count(*) AS c FROM named")).toEqual([{ c: 0 }])
        const log = yield* b.conflicts
        expect(log.map((e) => [e.table, e.kind, e.decision])).toEqual([
          ["stock", "Constraint", "Replace"],
          ["named", "Constraint", "Skip"]
        ])
        expect(log[1]!.message).toContain("NOT NULL constraint failed")
      }
    }))

  // ---------------------------------------------------------------------------------------------------
  // schema changes
  // ---------------------------------------------------------------------------------------------------

  const schemaOf = (db: Db) =>
    db.query(
      "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sync_%' ORDER BY type, name"
    )

  it.scoped("CREATE/ALTER/DROP of tables, indexes, views and triggers reach the other replica in order with the data", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("")
      yield* a.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO s VALUES (1, 'x')")
      yield* a.execute("CREATE INDEX s_v ON s (v); CREATE VIEW sv AS SELECT id, v FROM s")
      yield* a.execute("CREATE TABLE audit (n INTEGER)")
      yield* a.execute("CREATE TRIGGER s_ins AFTER INSERT ON s BEGIN INSERT INTO audit VALUES (new.id); END")
      yield* a.execute("INSERT INTO s VALUES (2, 'y')")
      yield* a.execute("ALTER TABLE s ADD COLUMN w TEXT DEFAULT 'd'; UPDATE s SET w = 'w1' WHERE id = 1")
      yield* a.execute("ALTER TABLE s RENAME COLUMN v TO v2")
      yield* a.execute("INSERT INTO s (id, v2, w) VALUES (3, 'z', 'w3')")
      yield* a.execute("ALTER TABLE s RENAME TO s2")
      yield* a.execute("INSERT INTO s2 (id, v2) VALUES (4, 'q')")
      yield* a.push
      yield* b.pull
      expect(yield* schemaOf(b)).toEqual(yield* schemaOf(a))
      const data = "SELECT * FROM s2 ORDER BY id"
      expect(yield* b.query(data)).toEqual([
        { id: 1, v2: "x", w: "w1" },
        { id: 2, v2: "y", w: "d" },
        { id: 3, v2: "z", w: "w3" },
        { id: 4, v2: "q", w: "d" }
      ])
      expect(yield* b.query("SELECT n FROM audit ORDER BY n")).toEqual([{ n: 2 }, { n: 3 }, { n: 4 }])
      expect(yield* b.query("SELECT count(*) AS c FROM sv")).toEqual([{ c: 4 }])
      // drops, made on the other replica
      yield* b.execute("DROP TRIGGER s_ins; DROP VIEW sv; DROP INDEX s_v")
      yield* b.execute("INSERT INTO s2 (id, v2) VALUES (5, 'no trigger')")
      yield* b.execute("DROP TABLE audit")
      yield* converge(remote, a, b, data)
      expect(yield* schemaOf(a)).toEqual(yield* schemaOf(b))
      expect((yield* schemaOf(a)).map((r) => r.name)).toEqual(["s2"])
    }))

  it.scoped("schema changes replay idempotently (made on both replicas); unsupported DDL fails clearly", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("")
      yield* a.execute("CREATE TABLE both_t (id TEXT PRIMARY KEY); INSERT INTO both_t VALUES ('a')")
      yield* b.execute("CREATE TABLE both_t (id TEXT PRIMARY KEY); INSERT INTO both_t VALUES ('b')")
      yield* a.execute("ALTER TABLE both_t ADD COLUMN extra INTEGER; CREATE INDEX both_i ON both_t (extra)")
      yield* b.execute("ALTER TABLE both_t ADD COLUMN extra INTEGER; CREATE INDEX both_i ON both_t (extra)")
      yield* b.execute("UPDATE both_t SET extra = 2")
      yield* a.push
      yield* b.push
      expect(yield* converge(remote, a, b, "SELECT * FROM both_t ORDER BY id")).toEqual([
        { id: "a", extra: null },
        { id: "b", extra: 2 }
      ])
      const virtual = yield* Effect.flip(b.execute("CREATE VIRTUAL TABLE f USING fts5(x)"))
      expect(virtual).toMatchObject({ _tag: "SqlStatementError" })
      expect(virtual.message).toMatch(/virtual/i)
      const bound = yield* Effect.flip(b.execute("CREATE TABLE p AS SELECT ? AS x", [1]))
      expect(bound.message).toMatch(/bound parameters/)
      expect((yield* b.stats).pendingChanges).toBe(0)
    }))

  // ---------------------------------------------------------------------------------------------------
  // hard cases
  // ---------------------------------------------------------------------------------------------------

  it.scoped("composite primary key", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE c (k1 TEXT, k2 INTEGER, v TEXT, PRIMARY KEY (k1, k2))")
      yield* a.execute("INSERT INTO c VALUES ('x', 1, 'a'), ('x', 2, 'a')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE c SET v = 'a2' WHERE k1 = 'x' AND k2 = 1")
      yield* b.execute("UPDATE c SET v = 'b2' WHERE k1 = 'x' AND k2 = 2; INSERT INTO c VALUES ('y', 1, 'b')")
      yield* b.execute("UPDATE c SET k2 = 3 WHERE k1 = 'y'")
      expect(yield* converge(remote, a, b, "SELECT * FROM c ORDER BY k1, k2")).toEqual([
        { k1: "x", k2: 1, v: "a2" },
        { k1: "x", k2: 2, v: "b2" },
        { k1: "y", k2: 3, v: "b" }
      ])
    }))

  it.scoped("WITHOUT ROWID table", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE w (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID")
      yield* a.execute("INSERT INTO w VALUES ('a', 1), ('shared', 0)")
      yield* b.execute("INSERT INTO w VALUES ('b', 2)")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE w SET v = 10 WHERE k = 'shared'")
      yield* b.execute("DELETE FROM w WHERE k = 'a'")
      expect(yield* converge(remote, a, b, "SELECT * FROM w ORDER BY k")).toEqual([
        { k: "b", v: 2 },
        { k: "shared", v: 10 }
      ])
    }))

  it.scoped("no primary key (rowid): edits of synced rows converge; under lastPushWinsRow independent inserts colliding on a rowid are reported", () =>
    Effect.gen(function*() {
      const whole = { conflicts: "lastPushWinsRow" } as const
      const { a, b, remote } = yield* pair("CREATE TABLE n (v TEXT)", whole, whole)
      yield* a.execute("INSERT INTO n VALUES ('one'), ('two')")
      yield* a.sync
      yield* b.sync
      yield* b.execute("UPDATE n SET v = 'one-b' WHERE v = 'one'")
      yield* a.execute("DELETE FROM n WHERE v = 'two'")
      yield* converge(remote, a, b, "SELECT rowid, v FROM n ORDER BY rowid")
      expect(yield* a.query("SELECT rowid AS r, v FROM n ORDER BY rowid")).toEqual([{ r: 1, v: "one-b" }])
      // both allocate rowid 3 (max+1 over their own copies): a known hazard, never silent
      yield* a.execute("INSERT INTO n VALUES ('from-a')")
      yield* b.execute("INSERT INTO n VALUES ('from-b')")
      yield* a.push
      yield* b.push
      yield* converge(remote, a, b, "SELECT rowid, v FROM n ORDER BY rowid")
      expect((yield* b.conflicts).map((e) => e.kind)).toEqual(["KeyExists"])
    }))

  it.scoped("INTEGER PRIMARY KEY alias and AUTOINCREMENT", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair(
        "CREATE TABLE ip (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE ai (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)"
      )
      yield* a.execute("INSERT INTO ip (v) VALUES ('a1'), ('a2'); INSERT INTO ai (v) VALUES ('a1'), ('a2')")
      yield* a.execute("DELETE FROM ai WHERE id = 2")
      yield* a.sync
      yield* b.sync
      // AUTOINCREMENT never reuses 2 on b either: sqlite_sequence travelled with the replayed inserts
      yield* b.execute("INSERT INTO ai (v) VALUES ('b')")
      yield* b.execute("INSERT INTO ip (v) VALUES ('b')")
      yield* b.execute("UPDATE ip SET id = 10 WHERE id = 1")
      expect(yield* converge(remote, a, b, "SELECT id, v FROM ai ORDER BY id")).toEqual([
        { id: 1, v: "a1" },
        { id: 3, v: "b" }
      ])
      expect(yield* a.query("SELECT id, v FROM ip ORDER BY id")).toEqual([
        { id: 2, v: "a2" },
        { id: 3, v: "b" },
        { id: 10, v: "a1" }
      ])
    }))

  it.scoped("a user column named rowid", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE r (rowid TEXT, v TEXT)")
      yield* a.execute("INSERT INTO r VALUES ('user-rowid', 'a'), ('other', 'a')")
      yield* a.sync
      yield* b.sync
      yield* b.execute("UPDATE r SET rowid = 'changed', v = 'b' WHERE rowid = 'user-rowid'")
      yield* a.execute("DELETE FROM r WHERE rowid = 'other'")
      expect(yield* converge(remote, a, b, "SELECT _rowid_ AS real, rowid, v FROM r ORDER BY _rowid_")).toEqual([
        { real: 1, rowid: "changed", v: "b" }
      ])
    }))

  it.scoped("NULLs in key columns", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE nk (k1 TEXT, k2 TEXT, v TEXT, PRIMARY KEY (k1, k2))")
      yield* a.execute("INSERT INTO nk VALUES ('x', NULL, 'a'), (NULL, NULL, 'a')")
      yield* a.sync
      yield* b.sync
      yield* b.execute("UPDATE nk SET v = 'b' WHERE k1 = 'x' AND k2 IS NULL")
      yield* a.execute("DELETE FROM nk WHERE k1 IS NULL")
      yield* a.execute("INSERT INTO nk VALUES ('y', NULL, 'a')")
      expect(yield* converge(remote, a, b, "SELECT * FROM nk ORDER BY k1")).toEqual([
        { k1: "x", k2: null, v: "b" },
        { k1: "y", k2: null, v: "a" }
      ])
    }))

  it.scoped("a key-changing update, and a delete followed by a re-insert of the same key", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
      yield* a.execute("INSERT INTO t VALUES ('old', 'v'), ('again', 'first')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("UPDATE t SET id = 'new' WHERE id = 'old'")
      yield* b.execute("DELETE FROM t WHERE id = 'again'")
      yield* b.execute("INSERT INTO t VALUES ('again', 'second')")
      yield* b.execute("DELETE FROM t WHERE id = 'again'; INSERT INTO t VALUES ('again', 'third')")
      expect(yield* converge(remote, a, b, "SELECT * FROM t ORDER BY id")).toEqual([
        { id: "again", v: "third" },
        { id: "new", v: "v" }
      ])
    }))

  it.scoped("INSERT OR REPLACE evicting another row through a UNIQUE index", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v TEXT)")
      yield* a.execute("INSERT INTO u VALUES (1, 'x', 'one'), (2, 'y', 'two')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("INSERT OR REPLACE INTO u VALUES (3, 'x', 'three')")
      yield* b.execute("UPDATE u SET v = 'two-b' WHERE id = 2")
      expect(yield* converge(remote, a, b, "SELECT * FROM u ORDER BY id")).toEqual([
        { id: 2, email: "y", v: "two-b" },
        { id: 3, email: "x", v: "three" }
      ])
    }))

  it.scoped("foreign keys with ON DELETE CASCADE", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair(
        "CREATE TABLE p (id INTEGER PRIMARY KEY); " +
          "CREATE TABLE ch (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id) ON DELETE CASCADE, v TEXT)"
      )
      yield* a.execute("INSERT INTO p VALUES (1), (2); INSERT INTO ch VALUES (10, 1, 'x'), (11, 1, 'y'), (20, 2, 'z')")
      yield* a.sync
      yield* b.sync
      yield* a.execute("DELETE FROM p WHERE id = 1")
      yield* b.execute("UPDATE ch SET v = 'z-b' WHERE id = 20")
      expect(yield* converge(remote, a, b, "SELECT * FROM ch ORDER BY id")).toEqual([{ id: 20, p: 2, v: "z-b" }])
      expect(yield* b.query("SELECT id FROM p")).toEqual([{ id: 2 }])
    }))

  it.scoped("user triggers on replicated tables fire once per write, never again on replay", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair(
        "CREATE TABLE item (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE log (item INTEGER, what TEXT); " +
          "CREATE TABLE total (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO total VALUES (1, 0); " +
          "CREATE TRIGGER item_ins AFTER INSERT ON item BEGIN INSERT INTO log VALUES (new.id, 'ins'); " +
          "UPDATE total SET n = n + 1 WHERE id = 1; END; " +
          "CREATE TRIGGER item_upd AFTER UPDATE ON item BEGIN INSERT INTO log VALUES (new.id, 'upd'); END"
      )
      yield* a.execute("INSERT INTO item VALUES (1, 'a'), (2, 'a')")
      yield* a.sync
      yield* b.sync
      yield* b.execute("INSERT INTO item VALUES (3, 'b')")
      yield* b.execute("UPDATE item SET v = 'b' WHERE id = 1")
      yield* converge(remote, a, b, "SELECT * FROM log ORDER BY rowid")
      expect(yield* a.query("SELECT item, what FROM log ORDER BY item, what")).toEqual([
        { item: 1, what: "ins" },
        { item: 1, what: "upd" },
        { item: 2, what: "ins" },
        { item: 3, what: "ins" }
      ])
      expect(yield* remoteQuery(remote, "SELECT n FROM total")).toEqual([{ n: 3 }])
      expect(yield* a.query("SELECT n FROM total")).toEqual([{ n: 3 }])
    }))

  it.scoped("BLOBs and large TEXT", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair("CREATE TABLE big (id INTEGER PRIMARY KEY, data BLOB, body TEXT)")
      const blob = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 7919) % 256)
      const text = "é✓'\"".repeat(100_000)
      yield* a.execute("INSERT INTO big VALUES (?, ?, ?)", [1, blob, text])
      yield* b.execute("INSERT INTO big VALUES (2, x'00ff00', '')")
      const rows = yield* converge(remote, a, b, "SELECT id, hex(data) AS h, body FROM big ORDER BY id")
      expect(rows[0]).toEqual({ id: 1, h: Buffer.from(blob).toString("hex").toUpperCase(), body: text })
      expect(rows[1]).toEqual({ id: 2, h: "00FF00", body: "" })
    }))

  it.scoped("64-bit integers beyond 2^53, and REAL vs INTEGER affinity", () =>
    Effect.gen(function*() {
      const { a, b, remote } = yield* pair(
        "CREATE TABLE num (id INTEGER PRIMARY KEY, big INTEGER, r REAL, i INTEGER, n NUMERIC, x ANY)"
      )
      yield* a.execute(
        "INSERT INTO num VALUES (1, 9007199254740993, 1, 1.0, '2.0', 3.0), " +
          "(2, -9223372036854775808, 0.1, 2.5, '1e3', '4'), (3, 9223372036854775807, 1e300, -0.0, 'x', x'01')"
      )
      yield* b.execute("INSERT INTO num VALUES (4, 9007199254740995, 2, 2, 2, 2)")
      const columns = ["id", "big", "r", "i", "n", "x"]
      const query = `SELECT ${columns.map((c) => `quote(${c}) AS ${c}, typeof(${c}) AS t_${c}`).join(", ")} FROM num ORDER BY id`
      yield* b.sync
      yield* a.sync
      yield* a.execute("UPDATE num SET big = big - 1 WHERE id = 4")
      const rows = yield* converge(remote, a, b, query)
      expect(rows.map((r) => (r as Record<string, unknown>).big)).toEqual([
        "9007199254740993",
        "-9223372036854775808",
        "9223372036854775807",
        "9007199254740994"
      ])
      // a column declared ANY in an ordinary table has NUMERIC affinity: 3.0 is stored as 3 everywhere
      expect(rows[0]).toMatchObject({ r: "1.0", t_r: "real", t_i: "integer", t_n: "integer", t_x: "integer" })
      expect(rows[1]).toMatchObject({ t_i: "real", r: "0.1", t_n: "integer", t_x: "integer" })
      expect(rows[2]).toMatchObject({ r: "1.0e+300", t_n: "text", t_x: "blob" })
    }))
})
