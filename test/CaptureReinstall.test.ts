/**
 * Capture installed again on a connection opened over a schema seen before (Draft reopened after every
 * pull's copy) makes the triggers from their remembered text: they must be exactly the ones made from the
 * tables, and a changed schema must get its own.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as ChangeCapture from "../src/ChangeCapture.js"
import { dump, exec, on, open, run } from "./support/changeSync.js"
import type * as SqlClient from "@effect/sql/SqlClient"

const triggers = (client: SqlClient.SqlClient) =>
  client<{ name: string; sql: string }>`SELECT name, sql FROM temp.sqlite_schema WHERE type = 'trigger' ORDER BY name`
    .withoutTransform

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-reinstall-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

describe("capture installed on a reopened connection", () => {
  it.scoped("an unchanged schema gets the same triggers, which capture; a changed one gets its own", () =>
    Effect.gen(function*() {
      const file = NodePath.join(yield* tempDir, "db.sqlite")
      const first = yield* open(file)
      // A wide table (the log is widened for it) and a partial unique index (evictions staged by BEFORE triggers).
      yield* exec(first, `CREATE TABLE wide (id INTEGER PRIMARY KEY, ${Array.from({ length: 40 }, (_, i) => `c${i}`).join(", ")})`)
      yield* exec(first, "CREATE TABLE u (id INTEGER PRIMARY KEY, k TEXT, live INTEGER)")
      yield* exec(first, "CREATE UNIQUE INDEX u_k ON u (k) WHERE live = 1")
      yield* on(first, ChangeCapture.install)
      const made = yield* triggers(first)
      expect(made.length).toBeGreaterThanOrEqual(8)

      // Opened again (the schema as the first install left it): the same triggers, and they capture.
      const second = yield* open(file)
      yield* on(second, ChangeCapture.install)
      expect(yield* triggers(second)).toEqual(made)
      yield* run(second, "INSERT INTO u (k, live) VALUES ('a', 1)")
      yield* run(second, "INSERT OR REPLACE INTO u (k, live) VALUES ('a', 1)")
      const logged = yield* second<{ tbl: string; kind: string }>`SELECT tbl, kind FROM _sync_changes ORDER BY id`
        .withoutTransform
      expect(logged.map((r) => `${r.tbl} ${r.kind}`)).toEqual(["u insert", "u delete", "u insert"])

      // The schema changes: a connection opened then gets triggers for the new table too.
      yield* exec(second, "CREATE TABLE later (id INTEGER PRIMARY KEY, v)")
      const third = yield* open(file)
      yield* on(third, ChangeCapture.install)
      const now = yield* triggers(third)
      expect(now.filter((t) => t.sql.includes(`ON main."later"`)).length).toBeGreaterThanOrEqual(3)
      expect(now.filter((t) => !t.sql.includes(`ON main."later"`))).toEqual(made)
      yield* run(third, "INSERT INTO later (v) VALUES (1)")
      expect(yield* dump(third)).toContain("later")
    }))

  it.scoped("a database without the log gets it as wide as its tables need at once; a copy of it installs the same", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const columns = Array.from({ length: 40 }, (_, i) => `c${i}`)
      const schema = `CREATE TABLE wide (id INTEGER PRIMARY KEY, ${columns.join(", ")})`
      const logColumns = (client: SqlClient.SqlClient) =>
        Effect.map(
          client<{ name: string }>`SELECT name FROM pragma_table_info('_sync_changes') WHERE name GLOB 'v[0-9]*'`.withoutTransform,
          (rows) => rows.length
        )
      const logText = (client: SqlClient.SqlClient) =>
        client<{ sql: string }>`SELECT sql FROM main.sqlite_schema WHERE name = '_sync_changes'`.withoutTransform
      const fresh = (name: string) =>
        Effect.gen(function*() {
          const client = yield* open(NodePath.join(dir, name))
          yield* exec(client, schema)
          yield* on(client, ChangeCapture.install)
          return client
        })
      const version = (client: SqlClient.SqlClient) =>
        Effect.map(client<{ schema_version: number }>`PRAGMA main.schema_version`.withoutTransform, (rows) => rows[0].schema_version)
      const first = yield* open(NodePath.join(dir, "a.sqlite"))
      yield* exec(first, schema)
      const before = yield* version(first)
      yield* on(first, ChangeCapture.install)
      // One change of main's schema, the log's creation: not a narrow log renamed, copied and dropped.
      expect((yield* version(first)) - before).toBe(1)
      // Both images of an update of the 41 columns, in one row of the log.
      expect(yield* logColumns(first)).toBe(82)
      expect((yield* first<{ name: string }>`SELECT name FROM main.sqlite_schema`.withoutTransform).map((r) => r.name))
        .not.toContain("_sync_changes_narrow")
      // Another new database of the same schema: the same log, the same triggers, and they capture.
      const second = yield* fresh("b.sqlite")
      expect(yield* logText(second)).toEqual(yield* logText(first))
      expect(yield* triggers(second)).toEqual(yield* triggers(first))
      yield* run(second, `INSERT INTO wide (id, ${columns.join(", ")}) VALUES (1, ${columns.map((_, i) => i).join(", ")})`)
      yield* run(second, "UPDATE wide SET c39 = 'last' WHERE id = 1")
      const logged = yield* second<{ kind: string; v40: unknown; v81: unknown }>`
        SELECT kind, v40, v81 FROM _sync_changes ORDER BY id`.withoutTransform
      expect(logged).toEqual([{ kind: "insert", v40: 39, v81: null }, { kind: "update", v40: 39, v81: "last" }])
    }))
})
