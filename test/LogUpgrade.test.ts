/**
 * A local database whose pending changes were captured by an earlier version (the change log held JSON
 * objects of `quote()` literals) opens after an upgrade, its log rewritten in place, and its changes push;
 * a log that cannot be read fails the open with a typed error naming the migration step, files untouched.
 * Real server process, real files.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { tempDir } from "./support/engine.js"
import { serverProcess } from "./support/process.js"

/** The change log as versions before 0.2 created it. */
const FIRST_FORMAT = `CREATE TABLE main._sync_changes (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  tx_id INTEGER NOT NULL,
  tbl TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('insert', 'update', 'delete', 'ddl')),
  before TEXT,
  after TEXT,
  before_rowid TEXT,
  after_rowid TEXT,
  sql TEXT
)`

const open = (path: string, url: string) =>
  Layer.build(
    SyncDatabase.layer({ path, url, clientName: NodePath.basename(path) }).pipe(Layer.provide(NodeHttpClient.layerUndici))
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

/** The last change id a log handed out (its highest id, the floor, or an earlier version's sequence). */
const lastId = (db: BetterSqlite3.Database): number => {
  const has = (name: string) =>
    db.prepare(`SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?`).get(name) !== undefined
  return Math.max(
    db.prepare(`SELECT coalesce(max(id), 0) FROM main._sync_changes`).pluck().get() as number,
    has("_sync_change_floor") ? db.prepare(`SELECT floor FROM main._sync_change_floor`).pluck().get() as number : 0,
    has("sqlite_sequence")
      ? (db.prepare(`SELECT seq FROM sqlite_sequence WHERE name = '_sync_changes'`).pluck().get() as number | undefined) ?? 0
      : 0
  )
}

/**
 * Rewrites Draft's log into the first format, as the earlier version would have left it: the same changes,
 * their images as JSON objects of quote() literals (computed by SQLite from the rows the changes describe).
 */
const downgrade = (draft: string, changes: ReadonlyArray<{
  readonly kind: "insert" | "update" | "delete"
  readonly before?: string
  readonly after?: string
}>) => {
  const db = new BetterSqlite3(draft)
  try {
    db.transaction(() => {
      const seq = lastId(db)
      // the pending changes keep their ids and transactions (acknowledged ones were pruned)
      const ids = db.prepare(`SELECT id, tx_id FROM main._sync_changes ORDER BY id`).raw().all() as Array<[number, number]>
      expect(ids.length).toBe(changes.length)
      db.exec(`DROP TABLE main._sync_changes`)
      db.exec(`DROP TABLE IF EXISTS main._sync_change_floor`)
      db.exec(FIRST_FORMAT)
      const insert = db.prepare(
        `INSERT INTO main._sync_changes (id, tx_id, tbl, kind, before, after) VALUES (?, ?, 'notes', ?, ?, ?)`
      )
      changes.forEach((change, i) => insert.run(ids[i]![0], ids[i]![1], change.kind, change.before ?? null, change.after ?? null))
      db.prepare(`UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = '_sync_changes'`).run(seq)
    })()
  } finally {
    db.close()
  }
}

/**
 * Rewrites Draft's log as versions 0.2 left it: the same rows and columns, its ids AUTOINCREMENT (the id
 * sequence in sqlite_sequence, no floor table).
 */
const withAutoincrement = (draft: string) => {
  const db = new BetterSqlite3(draft)
  try {
    db.transaction(() => {
      const seq = lastId(db)
      const sql = db.prepare(`SELECT sql FROM sqlite_schema WHERE name = '_sync_changes'`).pluck().get() as string
      expect(sql).not.toContain("AUTOINCREMENT")
      db.exec(`ALTER TABLE main._sync_changes RENAME TO old_changes`)
      db.exec(sql.replace(/CREATE TABLE "?_sync_changes"?/, "CREATE TABLE main._sync_changes")
        .replace("id INTEGER PRIMARY KEY,", "id INTEGER PRIMARY KEY AUTOINCREMENT,"))
      db.exec(`INSERT INTO main._sync_changes SELECT * FROM old_changes`)
      db.exec(`DROP TABLE old_changes`)
      db.exec(`DROP TABLE IF EXISTS main._sync_change_floor`)
      db.prepare(`INSERT INTO sqlite_sequence (name, seq) SELECT '_sync_changes', 0
        WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '_sync_changes')`).run()
      db.prepare(`UPDATE sqlite_sequence SET seq = ? WHERE name = '_sync_changes'`).run(seq)
    })()
  } finally {
    db.close()
  }
}

describe("a change log of the earlier format", () => {
  it.scoped("is rewritten on open and its pending changes push exactly", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data])
      const url = `${server.url}/db/upgrade`
      const path = NodePath.join(dir, "a")
      yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* open(path, url)
        yield* a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, n REAL)")
        yield* a.execute("INSERT INTO notes VALUES (1, 'kept', 1.5), (2, 'to change', 2.0), (3, 'to delete', 3)")
        yield* a.push
        // the pending writes, as the earlier version captured them
        yield* a.execute("INSERT INTO notes VALUES (4, 'it''s new', 0.1)")
        yield* a.execute("UPDATE notes SET body = 'changed', n = 9223372036854775807 WHERE id = 2")
        yield* a.execute("DELETE FROM notes WHERE id = 3")
      }))
      downgrade(`${path}-draft`, [
        { kind: "insert", after: `{"id":"4","body":"'it''s new'","n":"0.1"}` },
        {
          kind: "update",
          before: `{"id":"2","body":"'to change'","n":"2.0"}`,
          after: `{"id":"2","body":"'changed'","n":"9.2233720368547758e+18"}`
        },
        { kind: "delete", before: `{"id":"3","body":"'to delete'","n":"3.0"}` }
      ])

      const a = yield* open(path, url)
      expect((yield* a.stats).pendingChanges).toBe(3)
      expect(yield* a.push).toBe(true)
      const b = yield* open(NodePath.join(dir, "b"), url)
      yield* b.pull
      const rows = "SELECT id, body, typeof(n) AS t, n FROM notes ORDER BY id"
      const expected = [
        { id: 1, body: "kept", t: "real", n: 1.5 },
        { id: 2, body: "changed", t: "real", n: 9223372036854775807 },
        { id: 4, body: "it's new", t: "real", n: 0.1 }
      ]
      expect(yield* b.query(rows)).toEqual(expected)
      yield* a.pull
      expect(yield* a.query(rows)).toEqual(expected)
      expect((yield* a.stats).pendingChanges).toBe(0)
      // capture goes on in the new format, ids above the old ones
      yield* a.execute("INSERT INTO notes VALUES (5, ?, -0.0)", ["a\0b"])
      expect(yield* a.push).toBe(true)
      yield* b.pull
      expect(yield* b.query("SELECT hex(body) AS h FROM notes WHERE id = 5")).toEqual([{ h: "610062" }])
    }), { timeout: 120_000 })

  it.scoped("with AUTOINCREMENT ids is rebuilt with plain ids on open: pending changes push, ids stay above the sequence", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data])
      const url = `${server.url}/db/autoincrement`
      const path = NodePath.join(dir, "a")
      let pushedUpTo = 0
      yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* open(path, url)
        yield* a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT UNIQUE, n)")
        yield* a.execute("INSERT INTO notes VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)")
        yield* a.push
        pushedUpTo = Number((yield* a.query<{ m: number }>("SELECT max(id) AS m FROM _sync_changes"))[0]!.m ?? 0)
        // pending: one statement of two rows (one unit), an eviction through the UNIQUE index
        yield* a.execute("UPDATE notes SET n = n * 10 WHERE id <= 2")
        yield* a.execute("INSERT OR REPLACE INTO notes VALUES (4, 'three', 4)")
      }))
      withAutoincrement(`${path}-draft`)
      const before = new BetterSqlite3(`${path}-draft`, { readonly: true })
      const pending = before.prepare(`SELECT id, tx_id, kind FROM _sync_changes ORDER BY id`).raw().all() as Array<[number, number, string]>
      const sequence = before.prepare(`SELECT seq FROM sqlite_sequence WHERE name = '_sync_changes'`).pluck().get() as number
      before.close()
      expect(pending.map(([, , kind]) => kind)).toEqual(["update", "update", "delete", "insert"])
      expect(pending[0]![0]).toBeGreaterThan(pushedUpTo)

      const a = yield* open(path, url)
      expect((yield* a.stats).pendingChanges).toBe(4)
      expect(yield* a.query("SELECT id, tx_id, kind FROM _sync_changes ORDER BY id")).toEqual(
        pending.map(([id, tx_id, kind]) => ({ id, tx_id, kind }))
      )
      expect(yield* a.push).toBe(true)
      const b = yield* open(NodePath.join(dir, "b"), url)
      yield* b.pull
      const rows = "SELECT id, body, n FROM notes ORDER BY id"
      const expected = [{ id: 1, body: "one", n: 10 }, { id: 2, body: "two", n: 20 }, { id: 4, body: "three", n: 4 }]
      expect(yield* b.query(rows)).toEqual(expected)
      // the log was pruned after the push: the next ids go on above the old sequence, a statement one unit
      yield* a.execute("INSERT INTO notes VALUES (5, 'five', 5), (6, 'six', 6)")
      const next = yield* a.query<{ id: number; tx_id: number }>("SELECT id, tx_id FROM _sync_changes ORDER BY id")
      expect(next).toEqual([{ id: sequence + 1, tx_id: sequence + 1 }, { id: sequence + 2, tx_id: sequence + 1 }])
      expect(yield* a.push).toBe(true)
      yield* b.pull
      expect((yield* b.query<{ n: number }>("SELECT count(*) AS n FROM notes"))[0]!.n).toBe(5)
    }), { timeout: 120_000 })

  it.scoped("that cannot be read fails the open with a typed error naming the migration step, changing nothing", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data])
      const url = `${server.url}/db/broken`
      const path = NodePath.join(dir, "a")
      yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* open(path, url)
        yield* a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, n REAL)")
        yield* a.push
        yield* a.execute("INSERT INTO notes VALUES (1, 'x', 1)")
      }))
      downgrade(`${path}-draft`, [{ kind: "insert", after: `{"id":"1","body":"(SELECT 'x')","n":"1"}` }])
      const error = yield* Effect.flip(open(path, url))
      expect(error._tag).toBe("SqlStatementError")
      expect(error.message).toContain("migration step")
      expect(error.message).toContain("_sync_changes")
      const draft = new BetterSqlite3(`${path}-draft`, { readonly: true })
      yield* Effect.addFinalizer(() => Effect.sync(() => draft.close()))
      const columns = draft.prepare(`SELECT name FROM pragma_table_info('_sync_changes')`).pluck().all()
      expect(columns).toContain("before")
      expect(draft.prepare(`SELECT after FROM _sync_changes`).pluck().all()).toEqual([`{"id":"1","body":"(SELECT 'x')","n":"1"}`])
    }), { timeout: 120_000 })
})
