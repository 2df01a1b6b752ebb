/**
 * Replay in bulk (a push's runs of changes copied from Draft's log attached to Synced, see
 * src/internal/replay/bulk.ts) against replay change by change: on real SQLite files, the same captured
 * changes replayed onto two identical targets, one with the log attached and one without, must leave the
 * same rows (compared by hex(), so storage class and bytes count), report the same conflicts and drop the
 * same changes.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import fc from "fast-check"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ChangeCapture from "../src/ChangeCapture.js"
import * as ConflictPolicy from "../src/ConflictPolicy.js"
import * as Capture from "../src/internal/capture/capture.js"
import * as Bulk from "../src/internal/replay/bulk.js"
import * as Replay from "../src/internal/replay/replay.js"
import * as Executor from "../src/internal/sqlite/executor.js"
import * as TableInfo from "../src/internal/sqlite/tableInfo.js"
import { ident, isInternalTable } from "../src/internal/sqlite/sqlText.js"
import { freshName, Harness, layerHttp, openClient, remoteQuery, tempDir } from "./support/engine.js"

type Client = SqlClient.SqlClient

const on = <A, E>(client: Client, effect: Effect.Effect<A, E, SqlClient.SqlClient>) =>
  Effect.provideService(effect, SqlClient.SqlClient, client).pipe(
    Effect.mapInputContext((context: Context.Context<never>) =>
      Context.omit(SqlClient.TransactionConnection)(context) as Context.Context<never>)
  )

const plain = (client: Client, statement: string) => client.unsafe(statement).unprepared

/** Every user table's rows, each value as typeof and hex(), sorted: equal only when storage classes and bytes are. */
const dump = (client: Client) =>
  Effect.gen(function*() {
    const tables = yield* client<{ readonly name: string }>`
      SELECT name FROM main.sqlite_schema WHERE type = 'table' ORDER BY name`.withoutTransform
    const out: Array<string> = []
    for (const { name } of tables) {
      if (isInternalTable(name)) continue
      const info = yield* on(client, TableInfo.read(name))
      const exprs = info!.columns.map((c) => `typeof(${ident(c)}) || ':' || hex(${ident(c)})`).join(" || ' ' || ")
      const rows = yield* client.unsafe(`SELECT ${exprs} AS r FROM ${ident(name)}`).values
      out.push(`${name}: ${rows.map((r) => String(r[0])).sort().join(" | ")}`)
    }
    return out.join("\n")
  })

interface Scenario {
  /** On Draft and both targets, before capture starts. */
  readonly base: ReadonlyArray<string>
  /** Captured on Draft, each entry one local transaction. */
  readonly local: ReadonlyArray<ReadonlyArray<string>>
  /** On both targets only (what other replicas pushed meanwhile). */
  readonly remote?: ReadonlyArray<string>
  readonly policy?: ConflictPolicy.Policy
}

/**
 * Replays `scenario` onto two targets, in bulk and change by change; both outcomes, and whether any run
 * went in bulk.
 */
const both = (scenario: Scenario) =>
  Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "replay-bulk-"))
    yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
    const draftPath = path.join(dir, "draft")
    const draft = yield* Executor.makeClient({ filename: draftPath })
    const bulk = yield* Executor.makeClient({ filename: path.join(dir, "bulk") })
    const single = yield* Executor.makeClient({ filename: path.join(dir, "single") })
    for (const statement of scenario.base) {
      for (const client of [draft, bulk, single]) yield* plain(client, statement)
    }
    yield* on(draft, ChangeCapture.install)
    for (const transaction of scenario.local) {
      yield* on(draft, ChangeCapture.transaction(Effect.forEach(transaction, (s) => ChangeCapture.execute(s), { discard: true })))
    }
    for (const statement of scenario.remote ?? []) {
      for (const client of [bulk, single]) yield* plain(client, statement)
    }
    const source: Replay.Source = (afterId, limit) => on(draft, Capture.pendingValues(afterId, limit))
    const options = { mode: "push" as const, clientId: "c", resolve: ConflictPolicy.resolver(scenario.policy ?? "lastPushWins") }
    yield* plain(bulk, `ATTACH DATABASE '${draftPath}' AS _sync_draft`)
    const bulkExit = yield* Effect.exit(on(bulk, Replay.applySource(source, options, "_sync_draft")))
    yield* plain(bulk, `DETACH DATABASE _sync_draft`)
    const singleExit = yield* Effect.exit(on(single, Replay.applySource(source, options)))
    return { bulk: { exit: bulkExit, rows: yield* dump(bulk) }, single: { exit: singleExit, rows: yield* dump(single) } }
  })

const outcome = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.match(exit, {
    onSuccess: (result) => ({ ok: result }),
    onFailure: (cause) => {
      const error = cause._tag === "Fail" ? cause.error as { _tag?: string; reason?: string; changeId?: number } : undefined
      return { failed: error === undefined ? String(cause) : { tag: error._tag, reason: error.reason, changeId: error.changeId } }
    }
  })

const expectSame = (scenario: Scenario) =>
  Effect.gen(function*() {
    const { bulk, single } = yield* both(scenario)
    expect(outcome(bulk.exit)).toEqual(outcome(single.exit))
    expect(bulk.rows).toEqual(single.rows)
    return { bulk, single }
  })

const ROWS = 200
const ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, value REAL, payload)"
const insertItems = (from: number, to: number) =>
  `WITH RECURSIVE n(i) AS (SELECT ${from} UNION ALL SELECT i + 1 FROM n WHERE i < ${to}) ` +
  "INSERT INTO items SELECT i, 'name-' || i, i * 0.5, CASE i % 5 WHEN 0 THEN zeroblob(3) WHEN 1 THEN i WHEN 2 THEN " +
  "CAST(X'61FF00' AS TEXT) WHEN 3 THEN 9223372036854775807 ELSE NULL END FROM n"

describe("ReplayBulk", () => {
  it.scoped("runs without conflicts go in bulk, and leave what change by change leaves", () =>
    Effect.gen(function*() {
      const { bulk } = yield* expectSame({
        base: [ITEMS],
        local: [[insertItems(1, ROWS)], ["UPDATE items SET value = value + 1"], ["DELETE FROM items WHERE id % 2 = 0"]]
      })
      expect(Exit.isSuccess(bulk.exit) && bulk.exit.value.applied).toBe(ROWS * 2 + ROWS / 2)
    }))

  it("a long run goes as pieces of at most MAX_RUN changes that cover it exactly, in order", () =>
    fc.assert(fc.property(fc.integer({ min: 1, max: 10_000 }), fc.integer({ min: 0, max: 3 * Bulk.MAX_RUN + 5 }), (id, length) => {
      const start: Bulk.RunStart = { id, txId: 7, table: "items", kind: "update", cols: "[\"id\"]" }
      const runs: Array<Bulk.Run> = []
      Bulk.pieces(runs, start, id + length - 1)
      let next = id
      for (const run of runs) {
        expect(run).toMatchObject({ txId: 7, table: "items", kind: "update", id: next })
        expect(run.last - run.id + 1).toBeGreaterThan(0)
        expect(run.last - run.id + 1).toBeLessThanOrEqual(Bulk.MAX_RUN)
        next = run.last + 1
      }
      expect(next).toBe(id + length)
      expect(runs.length).toBe(Math.ceil(length / Bulk.MAX_RUN))
    })))

  /** A Draft with capture installed and a target, both holding `items`, in a directory removed afterwards. */
  const itemsPair = Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "replay-bulk-"))
    yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
    const draft = yield* Executor.makeClient({ filename: path.join(dir, "draft") })
    const target = yield* Executor.makeClient({ filename: path.join(dir, "target") })
    yield* plain(draft, ITEMS)
    yield* plain(target, ITEMS)
    yield* on(draft, ChangeCapture.install)
    return { dir, draft, target }
  })

  it.scoped("the pieces of a long run are counted exactly by the scan that finds its end, gaps in the ids and all", () =>
    Effect.gen(function*() {
      const { dir, draft, target } = yield* itemsPair
      const rows = 3 * Bulk.MAX_RUN + 700
      yield* on(draft, ChangeCapture.execute(insertItems(1, rows)))
      yield* on(draft, ChangeCapture.execute("UPDATE items SET value = 1 WHERE id <= 40"))
      // gaps in the ids of the long run (in its second and last pieces): the counts are of the changes there
      const first = Number((yield* draft.unsafe("SELECT min(id) FROM _sync_changes").values)[0]![0])
      yield* plain(draft, `DELETE FROM _sync_changes WHERE id BETWEEN ${first + Bulk.MAX_RUN + 10} AND ${first + Bulk.MAX_RUN + 19}`)
      yield* plain(draft, `DELETE FROM _sync_changes WHERE id = ${first + rows - 5}`)
      yield* plain(target, `ATTACH DATABASE '${path.join(dir, "draft")}' AS _sync_draft`)
      const exec = yield* on(target, Executor.executor)
      const runs = Bulk.readRuns(exec, "_sync_draft", 0)
      const long = runs.filter((run) => run.kind === "insert")
      expect(long.length).toBe(4)
      expect(long[long.length - 1]!.last).toBe(first + rows - 1)
      // every piece but the first was counted on the way, each count the number of its changes
      expect(long.map((run) => run.count !== undefined)).toEqual([false, true, true, true])
      for (const run of long.slice(1)) {
        const actual = Number(exec.values("SELECT count(*) FROM _sync_draft._sync_changes WHERE id BETWEEN ? AND ?", [run.id, run.last])[0]![0])
        expect(run.count).toBe(actual)
      }
      expect(long[1]!.count).toBe(Bulk.MAX_RUN - 10)
      const table = (yield* on(target, TableInfo.read("items")))!
      let written = 0
      for (const run of long) written += Bulk.attempt(exec, run, table, Bulk.eligible(run, table)!, "_sync_draft")!
      expect(written).toBe(rows - 11)
      const update = runs.find((run) => run.kind === "update")!
      expect(update).toMatchObject({ id: first + rows, last: first + rows + 39 })
      yield* plain(target, "DETACH DATABASE _sync_draft")
    }))

  it.scoped("a clean run is written by one statement; a run meeting a changed row is left to replay change by change", () =>
    Effect.gen(function*() {
      const { dir, draft, target } = yield* itemsPair
      yield* on(draft, ChangeCapture.execute(insertItems(1, 100)))
      yield* plain(target, `ATTACH DATABASE '${path.join(dir, "draft")}' AS _sync_draft`)
      const exec = yield* on(target, Executor.executor)
      const table = (yield* on(target, TableInfo.read("items")))!
      const [insertRun] = Bulk.readRuns(exec, "_sync_draft", 0)
      expect(insertRun).toMatchObject({ kind: "insert", table: "items", last: insertRun!.id + 99 })
      const keys = Bulk.eligible(insertRun!, table)!
      expect(Bulk.attempt(exec, insertRun!, table, keys, "_sync_draft")).toBe(100)
      expect(yield* dump(target)).toEqual(yield* dump(draft))
      yield* on(draft, ChangeCapture.execute("UPDATE items SET name = name || '!'"))
      // another replica changed one row meanwhile: the run is not written, nothing of it is left
      yield* plain(target, "UPDATE items SET value = -1 WHERE id = 50")
      const before = yield* dump(target)
      const [updateRun] = Bulk.readRuns(exec, "_sync_draft", insertRun!.last)
      expect(Bulk.attempt(exec, updateRun!, table, Bulk.eligible(updateRun!, table)!, "_sync_draft")).toBeUndefined()
      expect(yield* dump(target)).toEqual(before)
      // a REAL zero is never trusted as equal (0.0 and -0.0 compare equal in SQL)
      yield* plain(target, "UPDATE items SET value = 25.0 WHERE id = 50")
      yield* plain(target, "UPDATE items SET value = 0.0 WHERE id = 1")
      yield* plain(draft, "UPDATE items SET value = 0.0 WHERE id = 1")
      expect(Bulk.attempt(exec, updateRun!, table, Bulk.eligible(updateRun!, table)!, "_sync_draft")).toBeUndefined()
      yield* plain(target, "DETACH DATABASE _sync_draft")
    }))

  it.scoped("an insert run meeting another replica's row (KeyExists) and a UNIQUE clash", () =>
    Effect.gen(function*() {
      yield* expectSame({
        base: ["CREATE TABLE u (id INTEGER PRIMARY KEY, code TEXT UNIQUE, v)"],
        local: [[`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) INSERT INTO u SELECT i, 'c' || i, i FROM n`]],
        remote: ["INSERT INTO u VALUES (70, 'c70', 70)"]
      })
      yield* expectSame({
        base: ["CREATE TABLE u (id INTEGER PRIMARY KEY, code TEXT UNIQUE, v)"],
        local: [[`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) INSERT INTO u SELECT i, 'c' || i, i FROM n`]],
        remote: ["INSERT INTO u VALUES (500, 'c42', 0)"]
      })
      yield* expectSame({
        base: ["CREATE TABLE u (id INTEGER PRIMARY KEY, code TEXT UNIQUE, v)"],
        local: [[`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) INSERT INTO u SELECT i, 'c' || i, i FROM n`]],
        remote: ["INSERT INTO u VALUES (70, 'other', 1)"],
        policy: "remoteWins"
      })
    }))

  it.scoped("update and delete runs meeting rows another replica changed or deleted, under each policy", () =>
    Effect.gen(function*() {
      for (const policy of ["lastPushWins", "lastPushWinsRow", "remoteWins"] as const) {
        yield* expectSame({
          base: [ITEMS, insertItems(1, ROWS)],
          local: [["UPDATE items SET name = name || '?'"], ["DELETE FROM items WHERE id > 150"]],
          remote: ["UPDATE items SET value = 7 WHERE id = 10", "DELETE FROM items WHERE id = 20", "UPDATE items SET name = 'x' WHERE id = 160"],
          policy
        })
      }
    }))

  it.scoped("a row updated twice in one transaction, an update moving keys, and -0.0 in the before image", () =>
    Effect.gen(function*() {
      yield* expectSame({
        base: [ITEMS, insertItems(1, ROWS)],
        local: [["UPDATE items SET value = value + 1", "UPDATE items SET value = value * 2"]]
      })
      yield* expectSame({
        base: [ITEMS, insertItems(1, ROWS)],
        local: [["UPDATE items SET id = id + 1000"]]
      })
      // a column without affinity keeps -0.0 (a REAL column stores it as 0)
      yield* expectSame({
        base: [ITEMS, insertItems(1, ROWS), "UPDATE items SET payload = -0.0 WHERE id % 3 = 0"],
        local: [["UPDATE items SET name = 'n'"]],
        remote: ["UPDATE items SET payload = 0.0 WHERE id = 3"]
      })
      // an update that changes nothing, then one that does: the row ends with the second
      yield* expectSame({
        base: [ITEMS, insertItems(1, ROWS)],
        local: [["UPDATE items SET name = name", "UPDATE items SET name = 'second'"]]
      })
    }))

  it.scoped("a transaction dropped by the policy after a run of it went in bulk", () =>
    Effect.gen(function*() {
      const { bulk } = yield* expectSame({
        base: [ITEMS, insertItems(1, 10)],
        local: [[insertItems(100, 199), "UPDATE items SET name = 'mine' WHERE id = 5"], [insertItems(300, 399)]],
        remote: ["UPDATE items SET name = 'theirs' WHERE id = 5"],
        policy: "remoteWins"
      })
      expect(Exit.isSuccess(bulk.exit) && bulk.exit.value.dropped?.length).toBe(101)
    }))

  it.scoped("a text key compared without case, a composite key and a table without one", () =>
    Effect.gen(function*() {
      const keys = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60)"
      yield* expectSame({
        base: ["CREATE TABLE k (name TEXT PRIMARY KEY COLLATE NOCASE, v)", `${keys} INSERT INTO k SELECT 'Key' || i, i FROM n`],
        local: [["UPDATE k SET v = v + 1"], ["DELETE FROM k WHERE v > 30"]],
        remote: ["UPDATE k SET name = 'KEY7' WHERE name = 'key7'"]
      })
      yield* expectSame({
        base: ["CREATE TABLE c (a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID"],
        local: [[`${keys} INSERT INTO c SELECT 'a' || (i % 3), i, i FROM n`], ["UPDATE c SET v = -v"], ["DELETE FROM c WHERE b % 2 = 0"]]
      })
      yield* expectSame({
        base: ["CREATE TABLE r (v, w)"],
        local: [[`${keys} INSERT INTO r SELECT i, i FROM n`], ["UPDATE r SET w = 0"], ["DELETE FROM r WHERE v > 10"]]
      })
    }))

  it.scoped("a run of deletes removing every row goes as one table-wide delete, which frees the pages whole", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "replay-bulk-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const rows = Bulk.MAX_RUN * 2 + 100
      const draft = yield* Executor.makeClient({ filename: path.join(dir, "draft") })
      const target = yield* Executor.makeClient({ filename: path.join(dir, "target") })
      for (const client of [draft, target]) {
        yield* plain(client, ITEMS)
        yield* plain(client, insertItems(1, rows))
      }
      yield* on(draft, ChangeCapture.install)
      yield* on(draft, ChangeCapture.execute("DELETE FROM items"))
      yield* plain(target, `ATTACH DATABASE '${path.join(dir, "draft")}' AS _sync_draft`)
      const exec = yield* on(target, Executor.executor)
      const table = (yield* on(target, TableInfo.read("items")))!
      const runs = Bulk.readRuns(exec, "_sync_draft", 0)
      expect(runs.length).toBe(3)
      expect(runs.every((run) => run.runId === runs[0]!.id && run.runLast === runs[2]!.last)).toBe(true)
      const keys = Bulk.eligible(runs[0]!, table)!
      // a piece that does not start the run is never a table-wide delete
      expect(Bulk.attemptClear(exec, runs[1]!, table, keys, "_sync_draft")).toBeUndefined()
      // a row the run does not delete (another replica's): not every row goes, nothing is written
      yield* plain(target, `INSERT INTO items (id, name) VALUES (${rows + 1}, 'theirs')`)
      expect(Bulk.attemptClear(exec, runs[0]!, table, keys, "_sync_draft")).toBeUndefined()
      yield* plain(target, `DELETE FROM items WHERE id = ${rows + 1}`)
      // a row another replica changed: a conflict, left to replay change by change
      yield* plain(target, "UPDATE items SET name = 'theirs' WHERE id = 7")
      expect(Bulk.attemptClear(exec, runs[0]!, table, keys, "_sync_draft")).toBeUndefined()
      yield* plain(target, "UPDATE items SET name = 'name-7' WHERE id = 7")
      const pages = Number((yield* target.unsafe("PRAGMA page_count").values)[0]![0])
      expect(Bulk.attemptClear(exec, runs[0]!, table, keys, "_sync_draft")).toBe(rows)
      expect((yield* target.unsafe("SELECT count(*) FROM items").values)[0]![0]).toBe(0)
      // SQLite's truncate optimization: the table's pages went to the free list whole
      const free = Number((yield* target.unsafe("PRAGMA freelist_count").values)[0]![0])
      expect(free).toBeGreaterThan(pages / 2)
      yield* plain(target, "DETACH DATABASE _sync_draft")
    }))

  it.scoped("a log beginning with a long run goes a piece at a time without reading the run's end first, as change by change would", () =>
    Effect.gen(function*() {
      const long = 2 * Bulk.MAX_RUN + 100
      for (const policy of ["lastPushWins", "remoteWins"] as const) {
        // the run ends inside a piece (more changes of its transaction follow), and another transaction after it
        const { bulk } = yield* expectSame({
          base: [ITEMS],
          local: [[insertItems(1, long), "UPDATE items SET value = 1 WHERE id <= 40"], ["DELETE FROM items WHERE id % 7 = 0"]],
          policy
        })
        expect(Exit.isSuccess(bulk.exit) && bulk.exit.value.applied).toBe(long + 40 + Math.floor(long / 7))
        // another replica's row in the second piece (KeyExists), and its edits in the last piece of a run of updates
        yield* expectSame({
          base: [ITEMS],
          local: [[insertItems(1, long)]],
          remote: [`INSERT INTO items (id, name) VALUES (${Bulk.MAX_RUN + 500}, 'theirs')`],
          policy
        })
        yield* expectSame({
          base: [ITEMS, insertItems(1, long)],
          local: [["UPDATE items SET value = value + 1"]],
          remote: [`UPDATE items SET name = 'theirs' WHERE id = ${long - 3}`, `DELETE FROM items WHERE id = ${long - 1}`],
          policy
        })
      }
      // a table-wide delete that is the whole log, and one that another replica's row keeps from being one
      yield* expectSame({ base: [ITEMS, insertItems(1, long)], local: [["DELETE FROM items"]] })
      yield* expectSame({ base: [ITEMS, insertItems(1, long)], local: [["DELETE FROM items"]], remote: ["INSERT INTO items (id) VALUES (0)"] })
    }), 120_000)

  it.scoped("a piece tried without knowing its run: written whole when every id is a change of the run (gaps counted), else nothing", () =>
    Effect.gen(function*() {
      const { dir, draft, target } = yield* itemsPair
      const rows = Bulk.MAX_RUN + 300
      yield* on(draft, ChangeCapture.execute(insertItems(1, rows)))
      yield* on(draft, ChangeCapture.execute("UPDATE items SET value = 2 WHERE id <= 10"))
      const first = Number((yield* draft.unsafe("SELECT min(id) FROM _sync_changes").values)[0]![0])
      // a gap in the ids of the run
      yield* plain(draft, `DELETE FROM _sync_changes WHERE id BETWEEN ${first + 100} AND ${first + 104}`)
      yield* plain(target, `ATTACH DATABASE '${path.join(dir, "draft")}' AS _sync_draft`)
      const exec = yield* on(target, Executor.executor)
      const long = Bulk.longStart(exec, "_sync_draft", 0)!
      expect(long.start).toMatchObject({ id: first, kind: "insert" })
      expect(long.maxId).toBe(first + rows + 9)
      const table = (yield* on(target, TableInfo.read("items")))!
      const keys = Bulk.eligible({ ...long.start, last: long.maxId, runId: long.start.id, runLast: long.maxId }, table)!
      const count = () => Number(exec.values("SELECT count(*) FROM items")[0]![0])
      // a piece reaching into the updates that follow the run: nothing written
      expect(Bulk.attemptPiece(exec, long.start, first + rows - 50, first + rows + 5, table, keys, "_sync_draft")).toBeUndefined()
      expect(count()).toBe(0)
      // a piece with the gap: its 195 changes
      expect(Bulk.attemptPiece(exec, long.start, first, first + 199, table, keys, "_sync_draft")).toBe(195)
      expect(count()).toBe(195)
      // a piece one of whose rows another replica holds: nothing written
      yield* plain(target, `INSERT INTO items (id, name) VALUES (250, 'theirs')`)
      expect(Bulk.attemptPiece(exec, long.start, first + 200, first + 299, table, keys, "_sync_draft")).toBeUndefined()
      expect(count()).toBe(196)
      yield* plain(target, "DELETE FROM items WHERE id = 250")
      expect(Bulk.attemptPiece(exec, long.start, first + 200, first + 299, table, keys, "_sync_draft")).toBe(100)
      expect(count()).toBe(295)
      // a log beginning with a short run is read run by run
      expect(Bulk.longStart(exec, "_sync_draft", first + rows - 1)).toBeUndefined()
      yield* plain(target, "DETACH DATABASE _sync_draft")
    }))

  it.scoped("table-wide deletes leave what deletes by key leave: every row or all but some, conflicts, triggers, AUTOINCREMENT", () =>
    Effect.gen(function*() {
      const all = Bulk.MAX_RUN + 50
      const rows = `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${all})`
      for (const policy of ["lastPushWins", "remoteWins"] as const) {
        // every row; then more rows in the same transaction after it
        yield* expectSame({
          base: [ITEMS, insertItems(1, all)],
          local: [["DELETE FROM items"], [insertItems(1, 40), "DELETE FROM items", insertItems(5, 60)]],
          policy
        })
        // another replica added, changed or deleted a row meanwhile
        for (const remote of [`INSERT INTO items (id) VALUES (${all + 1})`, "UPDATE items SET value = 9 WHERE id = 3", "DELETE FROM items WHERE id = 3"]) {
          yield* expectSame({ base: [ITEMS, insertItems(1, all)], local: [["DELETE FROM items"]], remote: [remote], policy })
        }
      }
      // a transaction the policy drops after its table-wide delete: the rows come back, its changes are dropped
      const dropped = yield* expectSame({
        base: [ITEMS, insertItems(1, all), "CREATE TABLE o (id INTEGER PRIMARY KEY, v)", "INSERT INTO o VALUES (1, 'base')"],
        local: [["DELETE FROM items", "UPDATE o SET v = 'mine' WHERE id = 1"]],
        remote: ["UPDATE o SET v = 'theirs' WHERE id = 1"],
        policy: "remoteWins"
      })
      expect(Exit.isSuccess(dropped.bulk.exit) && dropped.bulk.exit.value.dropped?.length).toBe(all + 1)
      expect(dropped.bulk.rows).toContain("text:7468656972") // 'theirs'
      // AUTOINCREMENT keeps its counter; a user trigger of the target does not fire
      const { bulk } = yield* expectSame({
        base: [
          "CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
          `${rows} INSERT INTO a (v) SELECT i FROM n`,
          "CREATE TABLE audit (n)",
          "CREATE TRIGGER a_del AFTER DELETE ON a BEGIN INSERT INTO audit VALUES (old.id); END"
        ],
        local: [["DELETE FROM audit", "DELETE FROM a", "INSERT INTO a (v) VALUES ('after')"]]
      })
      // (hex() of an integer is the hex of its decimal text)
      const a = `a: integer:${Buffer.from(String(all + 1)).toString("hex").toUpperCase()} text:${Buffer.from("after").toString("hex").toUpperCase()}`
      expect(bulk.rows.split("\n")[0]).toBe(a)
      expect(bulk.rows.split("\n")[1]!.split(" | ").length).toBe(all)
      // a composite key, a text key without case, a table without rowid
      yield* expectSame({
        base: ["CREATE TABLE c (a TEXT COLLATE NOCASE, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID", `${rows} INSERT INTO c SELECT 'K' || (i % 7), i, i FROM n`],
        local: [["DELETE FROM c"]],
        remote: ["UPDATE c SET v = -1 WHERE b = 9"]
      })
    }), 120_000)

  it.scoped("deletes of every row, or all but a few, over random remote edits leave what change by change leaves (property)", () =>
    Effect.gen(function*() {
      const value = fc.constantFrom("NULL", "0.0", "-0.0", "1", "1.0", "'a'", "CAST(X'FF61' AS TEXT)", "X'00'")
      const property = fc.asyncProperty(
        fc.integer({ min: Bulk.MIN_RUN, max: 90 }),
        fc.array(value, { minLength: 1, maxLength: 90 }),
        fc.constantFrom("p (id INTEGER PRIMARY KEY, v)", "p (id TEXT PRIMARY KEY COLLATE NOCASE, v) WITHOUT ROWID", "p (id, v, PRIMARY KEY (id, v))"),
        fc.array(fc.integer({ min: 1, max: 100 }), { maxLength: 2 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 100 }), value, fc.constantFrom("insert", "update", "delete")), { maxLength: 3 }),
        fc.constantFrom("lastPushWins", "remoteWins", "lastPushWinsRow") as fc.Arbitrary<ConflictPolicy.Policy>,
        async (rows, values, shape, kept, remote, policy) => {
          const id = (i: number) => shape.includes("TEXT") ? `'k${i}'` : String(i)
          const scenario: Scenario = {
            base: [
              `CREATE TABLE ${shape}`,
              `INSERT INTO p (id, v) VALUES ${Array.from({ length: rows }, (_, i) => `(${id(i + 1)}, ${values[i % values.length]})`).join(", ")}`
            ],
            local: [[kept.length === 0 ? "DELETE FROM p" : `DELETE FROM p WHERE id NOT IN (${kept.map(id).join(", ")})`]],
            remote: remote.map(([i, v, kind]) =>
              kind === "delete"
                ? `DELETE FROM p WHERE id = ${id(i)}`
                : kind === "update"
                ? `UPDATE p SET v = ${v} WHERE id = ${id(i)}`
                : `INSERT OR IGNORE INTO p (id, v) VALUES (${id(i + 100)}, ${v})`
            ),
            policy
          }
          await Effect.runPromise(Effect.scoped(expectSame(scenario)))
        }
      )
      yield* Effect.promise(() => fc.assert(property, { numRuns: 15 }))
    }), 120_000)

  it.scoped("random runs of exact values over random remote edits (property)", () =>
    Effect.gen(function*() {
      const value = fc.oneof(
        fc.constant("NULL"),
        fc.constantFrom("0.0", "-0.0", "1e308", "5e-324", "9223372036854775807", "-9223372036854775808", "1", "1.0"),
        fc.constantFrom("'a'", "'A'", "CAST(X'00' AS TEXT)", "CAST(X'FF61' AS TEXT)", "X''", "X'00FF'", "'x'")
      )
      const property = fc.asyncProperty(
        fc.array(value, { minLength: 40, maxLength: 80 }),
        fc.array(value, { minLength: 1, maxLength: 40 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 80 }), value, fc.boolean()), { maxLength: 4 }),
        async (inserted, updated, remote) => {
          const scenario: Scenario = {
            base: ["CREATE TABLE p (id INTEGER PRIMARY KEY, v, w REAL)"],
            local: [
              [`INSERT INTO p (id, v, w) VALUES ${inserted.map((v, i) => `(${i + 1}, ${v}, ${i % 2 === 0 ? v : "NULL"})`).join(", ")}`],
              updated.map((v, i) => `UPDATE p SET v = ${v} WHERE id = ${i + 1}`),
              [`UPDATE p SET w = 2.5`],
              [`DELETE FROM p WHERE id % 3 = 0`]
            ],
            remote: remote.map(([id, v, del]) =>
              del ? `DELETE FROM p WHERE id = ${id}` : `INSERT INTO p (id, v) VALUES (${id}, ${v}) ON CONFLICT DO UPDATE SET v = excluded.v`)
          }
          await Effect.runPromise(Effect.scoped(expectSame(scenario)))
        }
      )
      yield* Effect.promise(() => fc.assert(property, { numRuns: 12 }))
    }), 120_000)
})

layer(layerHttp, { excludeTestServices: true, timeout: 120_000 })("ReplayBulk over HTTP", (it) => {
  it.scoped("large pushes over another replica's edits converge as change by change would have them", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("bulk"))
      const dir = yield* tempDir
      const a = yield* openClient(remote, path.join(dir, "a"))
      const b = yield* openClient(remote, path.join(dir, "b"))
      yield* a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, w INTEGER)")
      yield* a.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) INSERT INTO t SELECT i, 'a' || i, 0 FROM n")
      yield* a.push
      yield* b.pull
      // B edits a few rows; A then rewrites every row's v and deletes some: A's runs meet B's rows
      yield* b.execute("UPDATE t SET w = 7 WHERE id IN (10, 250)")
      yield* b.execute("DELETE FROM t WHERE id = 400")
      yield* b.push
      yield* a.execute("UPDATE t SET v = v || '!'")
      yield* a.execute("DELETE FROM t WHERE id > 450")
      yield* a.push
      yield* a.pull
      yield* b.pull
      const query = "SELECT id, v, w FROM t ORDER BY id"
      const rows = yield* a.query(query)
      expect(yield* b.query(query)).toEqual(rows)
      expect(yield* remoteQuery(remote, query)).toEqual(rows)
      expect(rows.length).toBe(450)
      // column-level: B's w survives A's update of v; A's update of the row B deleted writes it again
      expect(rows.find((row) => row.id === 10)).toEqual({ id: 10, v: "a10!", w: 7 })
      expect(rows.find((row) => row.id === 400)).toEqual({ id: 400, v: "a400!", w: 0 })
      expect((yield* a.conflicts).map((c) => c.kind).sort()).toEqual(["RowChanged", "RowChanged", "RowMissing"])
    }))
})
