/**
 * The real libSQL client (npm `libsql` 0.5.29, offline writes) against two `effect-sqlite-sync serve`
 * processes on one PostgreSQL database, behind a proxy that sends each request to the other server in
 * turn (test/support/alternatingProxy.ts): no sticky sessions, so a baton opened on one server is
 * continued on the other, and every check of what the servers hold goes through both.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, inject, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import Database from "libsql"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as WalFrame from "../src/WalFrame.js"
import { type ProxyLine, startProxy } from "./support/alternatingProxy.js"
import * as H from "./support/http.js"
import { expectBehindPushConflicts, expectBigTransactionStored, libsqlBesideSyncDatabase, serverDb } from "./support/interop.js"
import { freshDatabase } from "./support/postgres.js"
import { type ServerProcess, spawnServer } from "./support/process.js"

const TOKEN = "interop-pg-token"

type Client = InstanceType<typeof Database>

const open = (dir: string, file: string, url: string): Client =>
  new Database(Path.join(dir, file), { syncUrl: url, authToken: TOKEN, offline: true } as Database.Options)

const rows = (db: { prepare: (sql: string) => { all: () => Array<unknown> } }, sql: string) => db.prepare(sql).all()

/** A sync path with a baton: /db/NAME/sync/G/START/END/BATON. */
const isBatonPush = (line: ProxyLine) => line.method === "POST" && line.path.split("/").length === 8

interface World {
  readonly servers: ReadonlyArray<ServerProcess>
  readonly proxy: Awaited<ReturnType<typeof startProxy>>
  readonly clients: string
}

const world = (extra: ReadonlyArray<string> = []) =>
  Effect.acquireRelease(
    Effect.promise(async (): Promise<World> => {
      const store = await freshDatabase(inject("postgresUrl"), "interop")
      const clients = H.tempDir("interop-pg-clients")
      const args = ["--store", store, "--auth-token", TOKEN, "--log-format", "json", ...extra]
      // The second starts while the first may still be creating the schema: migrations take a lock.
      const servers = await Promise.all([spawnServer(args), spawnServer(args)])
      const proxy = await startProxy(servers.map((s) => s.url), Path.join(clients, "proxy.log"))
      return { servers, proxy, clients }
    }),
    ({ clients, proxy, servers }) =>
      Effect.promise(async () => {
        await proxy.stop()
        for (const server of servers) {
          if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill("SIGTERM")
          await server.exited
        }
        Fs.rmSync(clients, { recursive: true, force: true })
      })
  )

describe("the real libSQL client against two servers on one PostgreSQL, requests alternating", () => {
  it.scoped("bootstrap, push, a second client, pull, a large transaction whose batons cross servers, a conflict, and SyncDatabase beside libSQL", () =>
    Effect.gen(function*() {
      const { clients, proxy } = yield* world()
      const url = `${proxy.url}/db/shared`

      const a = open(clients, "a.db", url)
      a.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, v TEXT)")
      a.exec("INSERT INTO t VALUES (1, 'a', 'first'), (2, 'a', 'second')")
      a.sync()
      const afterA = yield* serverDb(proxy.url, "shared", TOKEN)
      expect(rows(afterA.db, "SELECT id, who, v FROM t ORDER BY id")).toEqual([
        { id: 1, who: "a", v: "first" },
        { id: 2, who: "a", v: "second" }
      ])
      afterA.db.close()

      const b = open(clients, "b.db", url)
      b.sync()
      expect(rows(b, "SELECT id, who FROM t ORDER BY id")).toEqual([{ id: 1, who: "a" }, { id: 2, who: "a" }])
      b.exec("INSERT INTO t VALUES (3, 'b', 'from b')")
      b.sync()
      a.sync()
      expect(rows(a, "SELECT id FROM t ORDER BY id")).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }])

      // ~2 MB in one transaction: many requests of 128 frames chained by batons, alternating servers.
      const before = proxy.lines().length
      a.exec("CREATE TABLE big(id INTEGER PRIMARY KEY, data BLOB)")
      a.exec(
        "BEGIN; WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 500) INSERT INTO big SELECT x, randomblob(4000) FROM s; COMMIT;"
      )
      a.sync()
      const pushes = proxy.lines().slice(before).filter((l) => l.method === "POST")
      expect(pushes.length).toBeGreaterThan(3)
      expect(pushes.every((l) => l.status === 200)).toBe(true)
      // The baton requests went to both servers: the transaction was continued wherever it landed.
      expect(new Set(pushes.filter(isBatonPush).map((l) => l.backend))).toEqual(new Set([0, 1]))
      const afterBig = yield* expectBigTransactionStored(proxy.url, "shared", TOKEN, a)

      // B wrote while behind: its push conflicts, on whichever server it lands.
      yield* expectBehindPushConflicts(proxy.url, "shared", TOKEN, b, afterBig.digest)

      const c = open(clients, "c.db", url)
      c.sync()
      expect(rows(c, "SELECT count(*) AS n FROM big")).toEqual([{ n: 500 }])
      expect(rows(c, "SELECT id FROM t ORDER BY id")).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }])
      // This project's SyncDatabase over HTTP and the libSQL client see each other's writes.
      const mixedUrl = `${proxy.url}/db/mixed`
      const libsql = open(clients, "libsql.db", mixedUrl)
      yield* Effect.addFinalizer(() => Effect.sync(() => libsql.close()))
      libsql.exec("CREATE TABLE t (id TEXT PRIMARY KEY, who TEXT)")
      libsql.exec("INSERT INTO t VALUES ('l-1', 'libsql')")
      libsql.sync()
      const db = yield* Layer.build(
        SyncDatabase.layer({ path: Path.join(clients, "ours"), url: mixedUrl, authToken: TOKEN, clientName: "interop" }).pipe(
          Layer.provide(NodeHttpClient.layerUndici)
        )
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
      yield* libsqlBesideSyncDatabase(libsql, db)
      // Every kind of request reached both servers.
      const all = proxy.lines()
      for (const method of ["GET", "POST"]) {
        expect(new Set(all.filter((l) => l.method === method).map((l) => l.backend))).toEqual(new Set([0, 1]))
      }
      for (const client of [a, b, c]) client.close()
    }), 180_000)

  it.scoped("clients follow a generation roll made once, whichever server made it", () =>
    Effect.gen(function*() {
      const { clients, proxy } = yield* world(["--generation-frames", "8"])
      const url = `${proxy.url}/db/rolling`
      const a = open(clients, "a.db", url)
      const b = open(clients, "b.db", url)
      a.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
      a.exec(
        "BEGIN; WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 12) INSERT INTO t SELECT x, randomblob(3000) FROM s; COMMIT;"
      )
      a.sync()
      for (let i = 0; i < 2; i++) {
        expect(yield* Effect.promise(() => H.currentGeneration(proxy.url, "rolling", TOKEN))).toBe(2)
      }
      const base1 = yield* Effect.promise(() => H.exportBase(proxy.url, "rolling", 1, TOKEN))
      const frames1 = yield* Effect.promise(() => H.pullAll(proxy.url, "rolling", 1, TOKEN))
      const base2 = yield* Effect.promise(() => H.exportBase(proxy.url, "rolling", 2, TOKEN))
      expect(frames1.length).toBeGreaterThan(8)
      expect(Buffer.compare(Buffer.from(WalFrame.applyFrames(base1, frames1)), Buffer.from(base2))).toBe(0)
      // Both servers agree there is no generation 3.
      for (let i = 0; i < 2; i++) {
        const res = yield* Effect.promise(() => H.request(proxy.url, { path: "/db/rolling/export/3", headers: H.auth(TOKEN) }))
        expect(res.status).toBe(404)
      }

      b.sync()
      expect(rows(b, "SELECT count(*) AS n FROM t")).toEqual([{ n: 12 }])
      a.sync()
      a.exec("INSERT INTO t VALUES (100, x'00')")
      a.sync()
      b.sync()
      expect(rows(b, "SELECT id FROM t WHERE id = 100")).toEqual([{ id: 100 }])
      const c = open(clients, "c.db", url)
      c.sync()
      expect(rows(c, "SELECT count(*) AS n FROM t")).toEqual([{ n: 13 }])
      const snap = yield* serverDb(proxy.url, "rolling", TOKEN)
      expect(snap.generation).toBe(2)
      expect(rows(snap.db, "SELECT count(*) AS n FROM t")).toEqual([{ n: 13 }])
      snap.db.close()
      for (const client of [a, b, c]) client.close()
    }), 180_000)

  it.scoped("kill -9 of one server in the middle of a baton push: nothing partial is visible, the client finishes on the other", () =>
    Effect.gen(function*() {
      const { clients, proxy, servers } = yield* world()
      const url = `${proxy.url}/db/crash`
      const a = open(clients, "a.db", url)
      a.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
      a.exec("INSERT INTO t VALUES (1, 'before the crash')")
      a.sync()
      const before = yield* serverDb(proxy.url, "crash", TOKEN)
      before.db.close()

      // ~1200 frames in one transaction; server 0 is killed once the proxy has passed a baton request.
      a.exec(
        "BEGIN; CREATE TABLE big(id INTEGER PRIMARY KEY, data BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 1200) INSERT INTO big SELECT x, randomblob(4000) FROM s; COMMIT;"
      )
      const log = Path.join(clients, "proxy.log")
      ChildProcess.spawn(
        "sh",
        ["-c", `while ! grep -qE '"path":"/db/crash/sync/[0-9]+/[0-9]+/[0-9]+/[^"]+"' '${log}'; do sleep 0.005; done; kill -9 ${servers[0].child.pid}`],
        { stdio: "ignore" }
      )
      try {
        a.sync()
      } catch {
        // This sync may fail (its request reached the killed server); the next one goes to the survivor.
      }
      expect(yield* Effect.promise(() => servers[0].exited)).toEqual({ code: null, signal: "SIGKILL" })
      const mid = yield* serverDb(proxy.url, "crash", TOKEN)
      // Either the whole transaction or none of it: never a part.
      const tables = rows(mid.db, "SELECT name FROM sqlite_schema WHERE name = 'big'")
      if (tables.length === 0) expect(mid.digest).toBe(before.digest)
      else expect(rows(mid.db, "SELECT count(*) AS n FROM big")).toEqual([{ n: 1200 }])
      mid.db.close()

      let synced = false
      for (let attempt = 0; attempt < 5 && !synced; attempt++) {
        try {
          a.sync()
          synced = true
        } catch {
          // the proxy learns that server 0 is gone from the request that fails
        }
      }
      expect(synced).toBe(true)
      const after = yield* serverDb(proxy.url, "crash", TOKEN)
      expect(rows(after.db, "SELECT count(*) AS n, sum(length(data)) AS bytes FROM big")).toEqual([{ n: 1200, bytes: 4_800_000 }])
      expect(rows(after.db, "SELECT v FROM t")).toEqual([{ v: "before the crash" }])
      expect(after.db.pragma("integrity_check", { simple: true })).toBe("ok")
      after.db.close()
      // Only the survivor answers now.
      expect(proxy.lines().slice(-3).every((l) => l.backend === 1)).toBe(true)
      a.close()
    }), 180_000)
})
