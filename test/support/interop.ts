/**
 * Scenarios the interop suites run against more than one deployment of the server (one process with
 * its embedded store; two processes on PostgreSQL behind an alternating proxy).
 */
import { expect } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type * as SyncDatabase from "../../src/SyncDatabase.js"

interface LibsqlClient {
  readonly exec: (sql: string) => unknown
  readonly sync: () => unknown
  readonly prepare: (sql: string) => { all: () => Array<unknown> }
}

/**
 * A libSQL client that has created `t (id TEXT PRIMARY KEY, who TEXT)` with the row ('l-1', 'libsql')
 * and synced, and a fresh SyncDatabase on the same database: both write, push and pull, and end up
 * with the same four rows.
 */
export const libsqlBesideSyncDatabase = (libsql: LibsqlClient, db: SyncDatabase.SyncDatabase["Type"]) =>
  Effect.gen(function*() {
    // A fresh SyncDatabase opens on the remote's head snapshot: libSQL's row is there at once, nothing is left to pull.
    expect(yield* db.query("SELECT id, who FROM t")).toEqual([{ id: "l-1", who: "libsql" }])
    expect(yield* db.pull).toBe(false)
    expect(yield* db.query("SELECT id, who FROM t")).toEqual([{ id: "l-1", who: "libsql" }])

    yield* db.execute("INSERT INTO t VALUES (?, ?)", ["s-1", "sync"])
    yield* db.execute("UPDATE t SET who = 'libsql, seen' WHERE id = 'l-1'")
    expect(yield* db.push).toBe(true)

    libsql.sync()
    expect(libsql.prepare("SELECT id, who FROM t ORDER BY id").all()).toEqual([
      { id: "l-1", who: "libsql, seen" },
      { id: "s-1", who: "sync" }
    ])
    libsql.exec("INSERT INTO t VALUES ('l-2', 'libsql')")
    libsql.sync()

    yield* db.execute("INSERT INTO t VALUES ('s-2', 'sync')")
    yield* db.sync
    const expected = [
      { id: "l-1", who: "libsql, seen" },
      { id: "l-2", who: "libsql" },
      { id: "s-1", who: "sync" },
      { id: "s-2", who: "sync" }
    ]
    expect(yield* db.query("SELECT id, who FROM t ORDER BY id")).toEqual(expected)
    libsql.sync()
    expect(libsql.prepare("SELECT id, who FROM t ORDER BY id").all()).toEqual(expected)
  })
