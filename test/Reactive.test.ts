/**
 * Reactive queries: `db.reactive` emits at once and after every local write or pull that changes a table the
 * query reads, and not for writes to other tables; the tables come from SQLite's plan (views, joins,
 * subqueries, CTEs); layerSqlClient's `sql.reactive` and its Reactivity hear the same changes. Replicas
 * sync through the real HTTP server on loopback.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it, layer } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import * as NodePath from "node:path"
import * as Changes from "../src/internal/live/changes.js"
import * as Reactive from "../src/internal/live/reactive.js"
import * as Executor from "../src/internal/sqlite/executor.js"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncRemote from "../src/SyncRemote.js"
import { freshName, Harness, layerHttp, openClient, openSqlReplica, tempDir } from "./support/engine.js"

/** Every emission of `stream`, in order, in a queue the test takes from. */
const collect = <A, E>(stream: Stream.Stream<A, E>) =>
  Effect.gen(function*() {
    const queue = yield* Queue.unbounded<A>()
    const fiber = yield* Effect.forkScoped(Stream.runForEach(stream, (a) => Queue.offer(queue, a)))
    return { queue, fiber }
  })

/** The next emission, waiting at most 20 s (a loaded machine). */
const next = <A>(queue: Queue.Queue<A>) =>
  Queue.take(queue).pipe(Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("no emission") }))

/** Nothing emitted during `ms` (a missing emission is what it checks; a slow machine only makes it weaker). */
const quiet = <A>(queue: Queue.Queue<A>, ms = 400) =>
  Effect.gen(function*() {
    yield* Effect.sleep(ms)
    expect(yield* Queue.poll(queue)).toEqual(Option.none())
  })

const ids = (rows: ReadonlyArray<{ readonly id: unknown }>) => rows.map((r) => Number(r.id))

describe("tablesRead", () => {
  const db = new BetterSqlite3(":memory:")
  db.exec(`
    CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT);
    CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER, y TEXT);
    CREATE TABLE "Mixed Case" (id INTEGER PRIMARY KEY);
    CREATE TABLE w (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
    CREATE INDEX b_y ON b (y);
    CREATE VIEW ab AS SELECT a.id, b.y FROM a JOIN b ON b.a_id = a.id;
    CREATE TEMP TABLE scratch (id INTEGER);
  `)
  const exec = Executor.fromHandle(db)
  const tables = (sql: string, params: ReadonlyArray<unknown> = []) => Reactive.tablesRead(exec, sql, params)

  const cases: ReadonlyArray<readonly [string, ReadonlyArray<string>]> = [
    ["SELECT * FROM a", ["a"]],
    ["SELECT * FROM a WHERE id = ?", ["a"]],
    ["SELECT a.x, b.y FROM a JOIN b ON b.a_id = a.id", ["a", "b"]],
    ["SELECT * FROM ab", ["a", "b"]],
    ["SELECT x FROM a WHERE id IN (SELECT a_id FROM b)", ["a", "b"]],
    ["SELECT (SELECT count(*) FROM b) AS n", ["b"]],
    ["WITH r AS (SELECT a_id FROM b WHERE y = 'k') SELECT * FROM a, r WHERE a.id = r.a_id", ["a", "b"]],
    ["WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT i FROM n", []],
    ["SELECT y FROM b WHERE y > 'a'", ["b"]],
    ["SELECT * FROM \"Mixed Case\"", ["mixed case"]],
    ["SELECT v FROM w WHERE k = 'x'", ["w"]],
    ["SELECT 1 + 1", []],
    ["SELECT name FROM sqlite_schema", ["sqlite_schema"]],
    ["SELECT * FROM scratch", [Changes.ANY]],
    ["SELECT value FROM a, json_each(a.x)", [Changes.ANY, "a"].sort()]
  ]
  for (const [sql, expected] of cases) {
    it(sql, () => {
      expect(tables(sql, sql.includes("?") ? [1] : [])).toEqual(expected)
    })
  }
})

const open = (remote: SyncRemote.Service, path: string) => openClient(remote, path)

layer(layerHttp, { excludeTestServices: true, timeout: 120_000 })("db.reactive over a real server", (it) => {
  it.scoped("emits at once, after each own write to a table it reads, never for other tables", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("reactive"))
      const dir = yield* tempDir
      const db = yield* open(remote, NodePath.join(dir, "a"))
      yield* db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
      yield* db.execute("CREATE TABLE other (id INTEGER PRIMARY KEY)")
      yield* db.execute("INSERT INTO notes VALUES (1, 'one')")
      const { queue } = yield* collect(db.reactive<{ id: number; body: string }>("SELECT id, body FROM notes ORDER BY id"))
      expect(ids(yield* next(queue))).toEqual([1])
      yield* db.execute("INSERT INTO notes VALUES (2, 'two')")
      expect(ids(yield* next(queue))).toEqual([1, 2])
      // A write to another table: no emission; the next one is the next write to notes.
      yield* db.execute("INSERT INTO other VALUES (1)")
      yield* quiet(queue)
      // An update that leaves the rows as they were still changed the table: it emits.
      yield* db.execute("UPDATE notes SET body = body WHERE id = 1")
      expect(ids(yield* next(queue))).toEqual([1, 2])
      yield* db.execute("DELETE FROM notes WHERE id = 1")
      expect(ids(yield* next(queue))).toEqual([2])
      // A burst: the last state is always emitted.
      for (let i = 10; i < 60; i++) yield* db.execute("INSERT INTO notes VALUES (?, 'burst')", [i])
      let last: ReadonlyArray<{ id: number }> = []
      while (last.length !== 51) last = yield* next(queue)
      expect(ids(last)).toEqual([2, ...Array.from({ length: 50 }, (_, i) => 10 + i)])
    }), 120_000)

  it.scoped("views and joins: a write to any table under them emits; a schema change is followed", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("reactive-view"))
      const dir = yield* tempDir
      const db = yield* open(remote, NodePath.join(dir, "a"))
      yield* db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT)")
      yield* db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER, y TEXT)")
      yield* db.execute("CREATE TABLE c (id INTEGER PRIMARY KEY)")
      yield* db.execute("CREATE VIEW ab AS SELECT a.id, a.x, b.y FROM a JOIN b ON b.a_id = a.id")
      const { queue } = yield* collect(db.reactive<{ id: number; x: string; y: string }>("SELECT * FROM ab ORDER BY id"))
      expect(yield* next(queue)).toEqual([])
      yield* db.execute("INSERT INTO a VALUES (1, 'x1')")
      expect(yield* next(queue)).toEqual([])
      yield* db.execute("INSERT INTO b VALUES (1, 1, 'y1')")
      expect(yield* next(queue)).toEqual([{ id: 1, x: "x1", y: "y1" }])
      yield* db.execute("INSERT INTO c VALUES (1)")
      yield* quiet(queue)
      // The view now reads c as well: the query follows it.
      yield* db.execute("DROP VIEW ab")
      yield* db.execute("CREATE VIEW ab AS SELECT c.id, 'c' AS x, 'c' AS y FROM c")
      let rows = yield* next(queue)
      while (rows.length === 0 || rows[0].x !== "c") rows = yield* next(queue)
      expect(rows).toEqual([{ id: 1, x: "c", y: "c" }])
      yield* db.execute("INSERT INTO c VALUES (2)")
      expect(ids(yield* next(queue))).toEqual([1, 2])
    }), 120_000)

  it.scoped("a pull that changes a table it reads emits; one that changes other tables does not", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("reactive-pull"))
      const dir = yield* tempDir
      const a = yield* open(remote, NodePath.join(dir, "a"))
      yield* a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
      yield* a.execute("CREATE TABLE other (id INTEGER PRIMARY KEY)")
      yield* a.push
      const b = yield* open(remote, NodePath.join(dir, "b"))
      const { queue } = yield* collect(b.reactive<{ id: number; body: string }>("SELECT * FROM notes ORDER BY id"))
      expect(yield* next(queue)).toEqual([])
      yield* a.execute("INSERT INTO notes VALUES (1, 'from a')")
      yield* a.push
      expect(yield* b.pull).toBe(true)
      expect(yield* next(queue)).toEqual([{ id: 1, body: "from a" }])
      yield* a.execute("INSERT INTO other VALUES (1)")
      yield* a.push
      expect(yield* b.pull).toBe(true)
      yield* quiet(queue)
      // A pull that brings nothing: nothing either.
      expect(yield* b.pull).toBe(false)
      yield* quiet(queue, 200)
      // B's own pending write and a pull on top: both show, in order.
      yield* b.execute("INSERT INTO notes VALUES (2, 'from b')")
      expect(ids(yield* next(queue))).toEqual([1, 2])
      yield* a.execute("INSERT INTO notes VALUES (3, 'from a again')")
      yield* a.push
      yield* b.pull
      expect(ids(yield* next(queue))).toEqual([1, 2, 3])
    }), 120_000)

  it.scoped("the stream ends with the query's error; a closed subscriber stops costing reads", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("reactive-error"))
      const dir = yield* tempDir
      const db = yield* open(remote, NodePath.join(dir, "a"))
      const failed = yield* Stream.runCollect(db.reactive("SELECT * FROM missing")).pipe(Effect.flip)
      expect(failed._tag).toBe("SqlStatementError")
      yield* db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      const written = yield* Stream.runCollect(db.reactive("DELETE FROM t")).pipe(Effect.flip)
      expect(written._tag).toBe("SqlStatementError")
      const first = yield* db.reactive("SELECT count(*) AS n FROM t").pipe(Stream.take(1), Stream.runCollect)
      expect(Array.from(first)).toEqual([[{ n: 0 }]])
      const tracker = (db as unknown as Reactive.Source).tracker
      expect(tracker.watchers).toBe(0)
    }), 120_000)

  it.scoped("layerSqlClient: sql.reactive and the app's Reactivity hear writes and pulls by table name", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("reactive-sql"))
      const dir = yield* tempDir
      const context = yield* openSqlReplica(remote, NodePath.join(dir, "a"))
      const db = Context.get(context, SyncDatabase.SyncDatabase)
      const sql = Context.get(context, SqlClient.SqlClient)
      const reactivity = Context.get(context, Reactivity.Reactivity)
      yield* sql`CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)`
      yield* sql`CREATE TABLE pets (id INTEGER PRIMARY KEY)`
      const people = yield* collect(sql.reactive(["People"], sql<{ id: number; name: string }>`SELECT * FROM people ORDER BY id`))
      const byApp = yield* collect(reactivity.stream(["people"], sql<{ n: number }>`SELECT count(*) AS n FROM people`))
      expect(yield* next(people.queue)).toEqual([])
      expect(yield* next(byApp.queue)).toEqual([{ n: 0 }])
      yield* sql`INSERT INTO people ${sql.insert({ id: 1, name: "ada" })}`
      expect(yield* next(people.queue)).toEqual([{ id: 1, name: "ada" }])
      expect(yield* next(byApp.queue)).toEqual([{ n: 1 }])
      yield* sql.withTransaction(Effect.zipRight(
        sql`INSERT INTO people ${sql.insert({ id: 2, name: "bob" })}`,
        sql`INSERT INTO people ${sql.insert({ id: 3, name: "cy" })}`
      ))
      expect(ids(yield* next(people.queue))).toEqual([1, 2, 3])
      yield* db.execute("INSERT INTO pets VALUES (1)")
      yield* quiet(people.queue)
      // Another replica's write arrives by a pull.
      yield* db.push
      const other = yield* open(remote, NodePath.join(dir, "b"))
      yield* other.execute("INSERT INTO people VALUES (4, 'dee')")
      yield* other.push
      yield* db.pull
      let rows = yield* next(people.queue)
      while (rows.length < 4) rows = yield* next(people.queue)
      expect(ids(rows)).toEqual([1, 2, 3, 4])
      yield* Fiber.interrupt(people.fiber)
    }), 120_000)
})
