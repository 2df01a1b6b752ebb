/**
 * Scenarios the interop suites run against more than one deployment of the server (one process with
 * its embedded store; two processes on PostgreSQL behind an alternating proxy).
 */
import { expect } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type * as SyncDatabase from "../../src/SyncDatabase.js"
import * as H from "./http.js"

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

const rows = (db: { prepare: (sql: string) => { all: () => Array<unknown> } }, sql: string) => db.prepare(sql).all()

/** The server's current database (its head snapshot), opened with better-sqlite3. */
export const serverDb = (base: string, name: string, token: string) =>
  Effect.promise(async () => {
    const snap = await H.snapshot(base, name, token)
    return { ...snap, db: H.open(snap.file), digest: H.digestOf(snap) }
  })

/**
 * `writer` pushed `big`, 500 rows of 4000 bytes in one transaction (several baton requests): the server
 * holds all of it, byte for byte, in a database SQLite calls sound. Answers the server's state after it.
 */
export const expectBigTransactionStored = (base: string, name: string, token: string, writer: LibsqlClient) =>
  Effect.gen(function*() {
    const after = yield* serverDb(base, name, token)
    expect(rows(after.db, "SELECT count(*) AS n, sum(length(data)) AS bytes FROM big")).toEqual([{ n: 500, bytes: 2_000_000 }])
    expect(rows(after.db, "SELECT hex(data) AS h FROM big WHERE id = 250")).toEqual(
      rows(writer, "SELECT hex(data) AS h FROM big WHERE id = 250")
    )
    expect(after.db.pragma("integrity_check", { simple: true })).toBe("ok")
    after.db.close()
    return after
  })

/**
 * `behind` has not pulled the server's newest transaction and writes row 4 of `t`: its push is refused
 * as a conflict (the libSQL client fails with `InvalidPushFrameConflict`) and the server is unchanged.
 */
export const expectBehindPushConflicts = (base: string, name: string, token: string, behind: LibsqlClient, digest: string) =>
  Effect.gen(function*() {
    behind.exec("INSERT INTO t VALUES (4, 'b', 'written while behind')")
    let failure: unknown
    try {
      behind.sync()
    } catch (error) {
      failure = error
    }
    expect(String(failure)).toMatch(/InvalidPushFrameConflict/)
    const after = yield* serverDb(base, name, token)
    expect(after.digest).toBe(digest)
    expect(rows(after.db, "SELECT count(*) AS n FROM t WHERE id = 4")).toEqual([{ n: 0 }])
    expect(after.db.pragma("integrity_check", { simple: true })).toBe("ok")
    after.db.close()
  })
