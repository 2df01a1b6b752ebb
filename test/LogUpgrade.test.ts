/**
 * A local database whose pending changes were captured by an earlier version opens after an upgrade, its
 * log rewritten in place, and its changes push: the first format (JSON objects of `quote()` literals) and
 * the second (typed values under an AUTOINCREMENT id, whose sequence becomes the id floor). A log that
 * cannot be read fails the open with a typed error naming the migration step, files untouched.
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

/** The change log as versions 0.2 to 0.4 created it (typed values, AUTOINCREMENT ids). */
const SECOND_FORMAT = (width: number) => `CREATE TABLE main._sync_changes (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  tx_id INTEGER NOT NULL,
  tbl TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('insert', 'update', 'delete', 'ddl')),
  cols TEXT,
  before_rowid,
  after_rowid,
  sql TEXT,
  ${Array.from({ length: width }, (_, i) => `v${i}`).join(", ")}
)`

/** The last id the current log handed out (its largest, or its floor once pruned). */
const lastId = (db: BetterSqlite3.Database) =>
  db.prepare(
    `SELECT max(coalesce((SELECT max(id) FROM main._sync_changes), 0), coalesce((SELECT seq FROM main._sync_changes_floor), 0))`
  ).pluck().get() as number

/**
 * Rewrites Draft's log into the second format, as that version would have left it: the same rows, ids and
 * values, and an AUTOINCREMENT sequence `above` the last id (raised past ids of other clients, as a pull did).
 */
const downgradeToSecond = (draft: string, above: number) => {
  const db = new BetterSqlite3(draft)
  try {
    db.transaction(() => {
      const seq = lastId(db) + above
      const width = db.prepare(`SELECT count(*) FROM pragma_table_info('_sync_changes') WHERE name GLOB 'v[0-9]*'`).pluck().get() as number
      const columns = ["id", "tx_id", "tbl", "kind", "cols", "before_rowid", "after_rowid", "sql", ...Array.from({ length: width }, (_, i) => `v${i}`)]
      db.exec(`ALTER TABLE main._sync_changes RENAME TO current_log`)
      db.exec(SECOND_FORMAT(width))
      db.exec(`INSERT INTO main._sync_changes (${columns.join(", ")}) SELECT ${columns.join(", ")} FROM current_log`)
      db.exec(`DROP TABLE current_log`)
      db.exec(`DROP TABLE main._sync_changes_floor`)
      db.prepare(`INSERT INTO sqlite_sequence (name, seq) SELECT '_sync_changes', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '_sync_changes')`).run()
      db.prepare(`UPDATE sqlite_sequence SET seq = ? WHERE name = '_sync_changes'`).run(seq)
    })()
  } finally {
    db.close()
  }
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
      db.exec(`DROP TABLE main._sync_changes_floor`)
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
 * A server, and a local database whose three notes were pushed and which then wrote `pending` (closed
 * again): the files an earlier version would have left.
 */
const pushedNotes = (name: string, pending: (a: SyncDatabase.SyncDatabase["Type"]) => Effect.Effect<unknown, unknown>) =>
  Effect.gen(function*() {
    const data = yield* tempDir
    const dir = yield* tempDir
    const server = yield* serverProcess(["--data", data])
    const url = `${server.url}/db/${name}`
    const path = NodePath.join(dir, "a")
    yield* Effect.scoped(Effect.gen(function*() {
      const a = yield* open(path, url)
      yield* a.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, n REAL)")
      yield* a.execute("INSERT INTO notes VALUES (1, 'kept', 1.5), (2, 'to change', 2.0), (3, 'to delete', 3)")
      yield* a.push
      yield* pending(a)
    }))
    return { dir, url, path }
  })

describe("a change log of the earlier format", () => {
  it.scoped("is rewritten on open and its pending changes push exactly", () =>
    Effect.gen(function*() {
      // the pending writes, as the earlier version captured them
      const { dir, path, url } = yield* pushedNotes("upgrade", (a) =>
        Effect.gen(function*() {
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

  it.scoped("of the second format (AUTOINCREMENT ids) is rebuilt on open: its pending changes push, new ids stay above its sequence", () =>
    Effect.gen(function*() {
      // pending: a statement of two rows (one transaction), an update, a delete
      const { dir, path, url } = yield* pushedNotes("second", (a) =>
        Effect.gen(function*() {
          yield* a.execute("INSERT INTO notes VALUES (4, ?, 0.1), (5, 'five', -0.0)", ["a\0b"])
          yield* a.execute("UPDATE notes SET body = 'changed', n = 9223372036854775807 WHERE id = 2")
          yield* a.execute("DELETE FROM notes WHERE id = 3")
        }))
      const draft = `${path}-draft`
      const before = (() => {
        const db = new BetterSqlite3(draft, { readonly: true })
        try {
          return {
            last: lastId(db),
            rows: db.prepare(`SELECT id, tx_id, kind FROM _sync_changes ORDER BY id`).raw().all() as Array<[number, number, string]>
          }
        } finally {
          db.close()
        }
      })()
      expect(before.rows.map(([, , kind]) => kind)).toEqual(["insert", "insert", "update", "delete"])
      expect(before.rows[0]![1]).toBe(before.rows[1]![1])
      downgradeToSecond(draft, 40)

      const a = yield* open(path, url)
      expect((yield* a.stats).pendingChanges).toBe(4)
      // the rows keep their ids and transactions; the sequence is the floor of new ids
      expect(yield* a.query("SELECT id, tx_id, kind FROM _sync_changes ORDER BY id")).toEqual(
        before.rows.map(([id, tx_id, kind]) => ({ id, tx_id, kind }))
      )
      yield* a.execute("INSERT INTO notes VALUES (6, 'six', 6)")
      const [added] = yield* a.query<{ id: number; tx_id: number }>("SELECT id, tx_id FROM _sync_changes WHERE id > ?", [before.rows[3]![0]])
      expect(added).toEqual({ id: before.last + 41, tx_id: before.last + 41 })
      expect(yield* a.push).toBe(true)
      const b = yield* open(NodePath.join(dir, "b"), url)
      yield* b.pull
      const rows = "SELECT id, hex(body) AS h, typeof(n) AS t, n FROM notes ORDER BY id"
      const expected = yield* a.query(rows)
      expect(expected.map((r) => r["id"])).toEqual([1, 2, 4, 5, 6])
      expect(yield* b.query(rows)).toEqual(expected)
      expect(yield* b.query("SELECT quote(n) AS q FROM notes WHERE id = 5")).toEqual(yield* a.query("SELECT quote(n) AS q FROM notes WHERE id = 5"))
      expect((yield* a.stats).pendingChanges).toBe(0)
      // after the push emptied the log, ids go on above the last one
      yield* a.execute("DELETE FROM notes WHERE id = 6")
      expect(yield* a.query("SELECT id FROM _sync_changes")).toEqual([{ id: before.last + 42 }])
    }), { timeout: 120_000 })
})
