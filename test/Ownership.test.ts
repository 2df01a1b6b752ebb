/**
 * One owner per local database: a second opener, in this process or another one, fails at once with
 * `DatabaseLocked` and the holder goes on untouched; the lock goes with the holder's scope or process.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncError from "../src/SyncError.js"
import { tempDir } from "./support/engine.js"
import * as H from "./support/http.js"
import { BIN, serverProcess } from "./support/process.js"

const HOLD_CHILD = NodePath.resolve(import.meta.dirname, "support", "holdChild.ts")

const openIn = (scope: Scope.Scope, path: string, url: string) =>
  Layer.buildWithScope(
    SyncDatabase.layer({ path, url }).pipe(Layer.provide(NodeHttpClient.layerUndici)),
    scope
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

const cli = (args: ReadonlyArray<string>) =>
  Effect.promise(() =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      ChildProcess.execFile(process.execPath, [BIN, ...args], { timeout: 120_000 }, (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr }))
    })
  )

const setup = (url: string, dir: string) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const writer = yield* openIn(scope, NodePath.join(dir, "writer"), url)
    yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
    yield* writer.push
    yield* Scope.close(scope, Exit.void)
  })

describe("one owner per local database", () => {
  it.scoped("a second SyncDatabase on the same path in this process fails with DatabaseLocked; the first goes on", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const url = `${server.url}/db/owned`
      yield* setup(url, dir)
      const path = NodePath.join(dir, "app")

      const first = yield* Scope.make()
      const holder = yield* openIn(first, path, url)
      yield* holder.pull
      yield* holder.execute("INSERT INTO t VALUES ('a', 1)")

      const second = yield* Scope.make()
      const refused = yield* Effect.flip(openIn(second, path, url))
      yield* Scope.close(second, Exit.void)
      expect(refused).toBeInstanceOf(SyncError.DatabaseLocked)
      expect(refused).toMatchObject({ _tag: "DatabaseLocked", reason: "InUse", path, pid: process.pid })
      expect(refused.message).toContain("in use by another process")

      // The holder is untouched: it writes, syncs, and its pending change reached the server.
      yield* holder.execute("INSERT INTO t VALUES ('b', 2)")
      expect(yield* holder.sync).toBe(true)
      expect((yield* holder.stats).pendingChanges).toBe(0)
      const snapshot = yield* Effect.promise(() => H.snapshot(server.url, "owned"))
      const remote = H.open(snapshot.file)
      expect(remote.prepare("SELECT k, n FROM t ORDER BY k").all()).toEqual([{ k: "a", n: 1 }, { k: "b", n: 2 }])
      remote.close()

      // Closed, the path can be opened again, and has everything.
      yield* Scope.close(first, Exit.void)
      const third = yield* Scope.make()
      const reopened = yield* openIn(third, path, url)
      expect(yield* reopened.query("SELECT k FROM t ORDER BY k")).toEqual([{ k: "a" }, { k: "b" }])
      yield* Scope.close(third, Exit.void)
    }), 300_000)

  it.scoped("the CLI on a path another process holds exits 1 saying it is in use; the lock goes when that process is killed", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const url = `${server.url}/db/owned`
      yield* setup(url, dir)
      const path = NodePath.join(dir, "app")

      const child = ChildProcess.spawn(process.execPath, ["--import", "tsx", HOLD_CHILD, path, url], {
        stdio: ["ignore", "pipe", "pipe"]
      })
      let stderr = ""
      child.stderr.on("data", (c: Buffer) => (stderr += c.toString()))
      const exited = new Promise((resolve) => child.once("exit", resolve))
      yield* Effect.addFinalizer(() => Effect.sync(() => child.kill("SIGKILL")))
      const opened = yield* Effect.promise(() =>
        new Promise<boolean>((resolve) => {
          child.stdout.on("data", (c: Buffer) => c.toString().includes("open") && resolve(true))
          child.once("exit", () => resolve(false))
        })
      )
      expect(opened, stderr).toBe(true)

      const refused = yield* cli(["sync", "--db", path, "--url", url])
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain(`in use by another process (pid ${child.pid})`)
      const json = yield* cli(["status", "--db", path, "--json"])
      expect(json.code).toBe(1)
      expect(JSON.parse(json.stdout).error).toMatchObject({ _tag: "DatabaseLocked", reason: "InUse" })

      // SIGKILL: the OS drops the lock; the next opener gets the path, with the child's committed write.
      child.kill("SIGKILL")
      yield* Effect.promise(() => exited)
      const after = yield* cli(["sync", "--db", path, "--url", url, "--json"])
      expect(after.code, after.stderr).toBe(0)
      expect(JSON.parse(after.stdout)).toMatchObject({ command: "sync", pushedChanges: 1, pendingChanges: 0 })
      const rows = yield* cli(["query", "--db", path, "--json", "SELECT k, n FROM t"])
      expect(JSON.parse(rows.stdout)).toEqual([{ k: "child", n: null }])
    }), 300_000)
})
