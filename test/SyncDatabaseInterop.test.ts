/**
 * A SyncDatabase (public HTTP layer) and the real libSQL offline client on the same server database see
 * each other's writes. The libSQL client blocks this thread during its HTTP calls, so the server runs in
 * its own process (the `effect-sqlite-sync serve` binary with its embedded SQLite store).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import Database from "libsql"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { tempDir } from "./support/engine.js"
import { serverProcess } from "./support/process.js"

const TOKEN = "engine-interop"

describe("SyncDatabase with the real libSQL client", () => {
  it.scoped("both write, push and pull on the same server database and see each other's rows", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data, "--auth-token", TOKEN])
      const url = `${server.url}/db/mixed`

      const libsql = new Database(NodePath.join(dir, "libsql.db"), { syncUrl: url, authToken: TOKEN, offline: true } as Database.Options)
      yield* Effect.addFinalizer(() => Effect.sync(() => libsql.close()))
      libsql.exec("CREATE TABLE t (id TEXT PRIMARY KEY, who TEXT)")
      libsql.exec("INSERT INTO t VALUES ('l-1', 'libsql')")
      libsql.sync()

      const db = yield* Layer.build(
        SyncDatabase.layer({ path: NodePath.join(dir, "ours"), url, authToken: TOKEN, clientName: "interop" }).pipe(
          Layer.provide(NodeHttpClient.layerUndici)
        )
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
      expect(yield* db.pull).toBe(true)
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
    }))
})
