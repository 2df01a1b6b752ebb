/**
 * Lost or damaged local files, over a real server: a lost `-info` is refused unless the app starts over;
 * a missing or damaged Synced is rebuilt from the remote keeping the pending changes; a missing Draft,
 * or one with a corrupt page after an unclean shutdown, is rebuilt from Synced; nothing "syncs" on an
 * empty file.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncError from "../src/SyncError.js"
import * as WalFrame from "../src/WalFrame.js"
import { tempDir } from "./support/engine.js"
import * as H from "./support/http.js"
import { serverProcess } from "./support/process.js"

const HOLD_CHILD = NodePath.resolve(import.meta.dirname, "support", "holdChild.ts")

const openIn = (scope: Scope.Scope, path: string, url: string, options: Partial<SyncDatabase.HttpOptions> = {}) =>
  Layer.buildWithScope(
    SyncDatabase.layer({ path, url, ...options }).pipe(Layer.provide(NodeHttpClient.layerUndici)),
    scope
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

/** Opens `path`, runs `f`, closes. */
const withDb = <A, E>(path: string, url: string, f: (db: SyncDatabase.Service) => Effect.Effect<A, E>, options: Partial<SyncDatabase.HttpOptions> = {}) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const result = yield* Effect.flatMap(openIn(scope, path, url, options), f).pipe(Effect.exit)
    yield* Scope.close(scope, Exit.void)
    return yield* result
  })

const serverKeys = (base: string) =>
  Effect.promise(async () => {
    const snapshot = await H.snapshot(base, "files")
    const db = H.open(snapshot.file)
    try {
      return (db.prepare("SELECT k FROM t ORDER BY k").all() as Array<{ k: string }>).map((r) => r.k)
    } finally {
      db.close()
    }
  })

const setup = Effect.gen(function*() {
  const dir = yield* tempDir
  const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
  const url = `${server.url}/db/files`
  yield* withDb(NodePath.join(dir, "writer"), url, (db) =>
    Effect.gen(function*() {
      yield* db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
      yield* db.execute("INSERT INTO t VALUES ('w1')")
      yield* db.push
    }))
  const path = NodePath.join(dir, "app")
  // The app: synced, then one change not pushed yet.
  yield* withDb(path, url, (db) =>
    Effect.gen(function*() {
      yield* db.pull
      yield* db.execute("INSERT INTO t VALUES ('a1')")
      yield* db.sync
      yield* db.execute("INSERT INTO t VALUES ('pending')")
    }))
  return { dir, server, url, path }
})

describe("lost or damaged local files", () => {
  it.scoped("a lost -info is refused with MetadataLost and nothing is touched; startOver makes it anew from the remote", () =>
    Effect.gen(function*() {
      const { path, server, url } = yield* setup
      Fs.rmSync(`${path}-info`)
      const before = Fs.readFileSync(`${path}-draft`)
      const error = yield* Effect.flip(withDb(path, url, (db) => db.stats))
      expect(error).toBeInstanceOf(SyncError.StorageError)
      expect(error).toMatchObject({ reason: "MetadataLost" })
      expect(Buffer.compare(Fs.readFileSync(`${path}-draft`), before)).toBe(0)
      expect(Fs.existsSync(`${path}-info`)).toBe(false)

      const keys = yield* withDb(path, url, (db) =>
        Effect.zipRight(db.pull, db.query<{ k: string }>("SELECT k FROM t ORDER BY k")), { startOver: true })
      expect(keys.map((r) => r.k)).toEqual(yield* serverKeys(server.url))
      expect(keys.map((r) => r.k)).toEqual(["a1", "w1"])
    }), 300_000)

  it.scoped("a missing Synced is rebuilt from the remote on open; the pending change is kept and pushed once", () =>
    Effect.gen(function*() {
      const { path, server, url } = yield* setup
      Fs.rmSync(`${path}-synced`)
      Fs.rmSync(`${path}-synced-wal`, { force: true })
      yield* withDb(path, url, (db) =>
        Effect.gen(function*() {
          expect((yield* db.stats).pendingChanges).toBe(1)
          expect(yield* db.sync).toBe(true)
          expect((yield* db.stats).pendingChanges).toBe(0)
          expect(yield* db.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
        }))
      expect(yield* serverKeys(server.url)).toEqual(["a1", "pending", "w1"])
    }), 300_000)

  it.scoped("a missing Draft is rebuilt from Synced", () =>
    Effect.gen(function*() {
      const { path, url } = yield* setup
      Fs.rmSync(`${path}-draft`)
      Fs.rmSync(`${path}-draft-wal`, { force: true })
      yield* withDb(path, url, (db) =>
        Effect.gen(function*() {
          expect(yield* db.query("SELECT k FROM t ORDER BY k")).toEqual([{ k: "a1" }, { k: "w1" }])
          expect(yield* db.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
          yield* db.execute("INSERT INTO t VALUES ('after')")
          expect(yield* db.sync).toBe(true)
        }))
    }), 300_000)

  it.scoped("a corrupt page in Draft after an unclean shutdown is found by the full check and Draft rebuilt from Synced", () =>
    Effect.gen(function*() {
      const { path, url } = yield* setup
      // An owner killed while it had the database open (its metadata still says in use).
      const child = ChildProcess.spawn(process.execPath, ["--import", "tsx", HOLD_CHILD, path, url], { stdio: ["ignore", "pipe", "pipe"] })
      let stderr = ""
      child.stderr.on("data", (c: Buffer) => (stderr += c.toString()))
      const exited = new Promise((resolve) => child.once("exit", resolve))
      const opened = yield* Effect.promise(() =>
        new Promise<boolean>((resolve) => {
          child.stdout.on("data", (c: Buffer) => c.toString().includes("open") && resolve(true))
          child.once("exit", () => resolve(false))
        })
      )
      expect(opened, stderr).toBe(true)
      child.kill("SIGKILL")
      yield* Effect.promise(() => exited)
      expect(JSON.parse(Fs.readFileSync(`${path}-info`, "utf8")).inUse).toBe(true)
      // Checkpoint Draft (as SQLite would on a clean close), then overwrite a b-tree page with garbage.
      const Sqlite = (yield* Effect.promise(() => import("better-sqlite3"))).default
      const draft = new Sqlite(`${path}-draft`)
      draft.pragma("wal_checkpoint(TRUNCATE)")
      const root = (draft.prepare("SELECT rootpage FROM sqlite_master WHERE name = 't'").get() as { rootpage: number }).rootpage
      draft.close()
      const fd = Fs.openSync(`${path}-draft`, "r+")
      Fs.writeSync(fd, Buffer.alloc(WalFrame.PAGE_SIZE, 0x5a), 0, WalFrame.PAGE_SIZE, (root - 1) * WalFrame.PAGE_SIZE)
      Fs.closeSync(fd)

      yield* withDb(path, url, (db) =>
        Effect.gen(function*() {
          expect(yield* db.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
          expect(yield* db.query("SELECT k FROM t ORDER BY k")).toEqual([{ k: "a1" }, { k: "w1" }])
          yield* db.sync
          expect((yield* db.stats).pendingChanges).toBe(0)
        }))
      expect(JSON.parse(Fs.readFileSync(`${path}-info`, "utf8")).inUse).toBe(false)
    }), 300_000)
})
