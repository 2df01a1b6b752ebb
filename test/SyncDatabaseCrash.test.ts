/**
 * Crash recovery: a child process syncs and is SIGKILLed at each durable step of push, pull, copy and
 * generation roll; reopening the same files must finish or undo what was under way, and the next sync
 * must converge with every local change on the remote exactly once.
 */
import { expect, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as Engine from "../src/internal/engine/engine.js"
import * as WalFrame from "../src/WalFrame.js"
import { bundleScript } from "./support/bundle.js"
import { Harness, freshName, layerHttp, openClient, remoteQuery, tempDir } from "./support/engine.js"

/**
 * The child script, bundled once for the whole file with its packages: run through tsx, each of the 24
 * children compiled the sources again, which on a loaded machine was most of each test's time.
 */
class CrashChild extends Context.Tag("test/SyncDatabaseCrash/CrashChild")<CrashChild, string>() {}

const runChild = (args: ReadonlyArray<string>) =>
  Effect.flatMap(CrashChild, (script) => Effect.promise(() =>
    new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
      const child = ChildProcess.spawn(process.execPath, [script, ...args], {
        stdio: ["ignore", "ignore", "pipe"]
      })
      let stderr = ""
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
      child.once("exit", (code, signal) => resolve({ code, signal, stderr }))
    })
  ))

const layerCrashChild = Layer.scoped(
  CrashChild,
  bundleScript(NodePath.resolve(import.meta.dirname, "support", "crashChild.ts"), { inlinePackages: true })
)

/** A writer whose first push gave the remote table `t` and its row w-0. */
const seededWriter = (remote: Parameters<typeof openClient>[0], dir: string) =>
  Effect.gen(function*() {
    const writer = yield* openClient(remote, NodePath.join(dir, "writer"))
    yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
    yield* writer.execute("INSERT INTO t VALUES ('w-0', 1)")
    yield* writer.push
    return writer
  })

layer(Layer.merge(layerHttp, layerCrashChild), { excludeTestServices: true, timeout: 120_000 })("SyncDatabase crash recovery", (it) => {
  for (const crashAt of Engine.steps) {
    it.scoped(`killed at ${crashAt}: reopening converges, every change exactly once`, () =>
      Effect.gen(function*() {
        const harness = yield* Harness
        const rolling = crashAt.startsWith("roll:")
        const name = freshName("crash")
        const remote = yield* harness.remote(name, { rolling })
        const url = harness.url(name, { rolling })!
        const dir = yield* tempDir
        const path = NodePath.join(dir, "victim")

        const writer = yield* seededWriter(remote, dir)

        const first = yield* runChild([path, url, "none"])
        expect(first.code, first.stderr).toBe(0)
        // The remote moves on (rolling generations on the rolling server) while the victim has changes.
        for (let i = 1; i <= 4; i++) {
          yield* writer.execute("INSERT INTO t VALUES (?, ?)", [`w-${i}`, i])
          yield* writer.execute("UPDATE t SET n = n + 1 WHERE k = 'w-0'")
          yield* writer.push
        }
        const killed = yield* runChild([path, url, crashAt, "v-1", "v-2"])
        expect(killed.signal, killed.stderr).toBe("SIGKILL")

        const victim = yield* openClient(remote, path)
        const metadataFile = JSON.parse(Fs.readFileSync(`${path}-info`, "utf8"))
        expect(metadataFile.copyInProgress).toBe(false)
        expect(metadataFile.rollInProgress).toBe(false)
        expect(Fs.existsSync(`${path}-draft.new`)).toBe(false)
        expect(metadataFile.foldInProgress ?? false).toBe(false)
        expect(Fs.existsSync(`${path}-draft-wal.next`)).toBe(false)
        expect(Fs.existsSync(`${path}-synced-wal.next`)).toBe(false)
        expect(Fs.statSync(`${path}-synced-wal`, { throwIfNoEntry: false })?.size ?? 0).toBeLessThanOrEqual(
          WalFrame.walSize(metadataFile.syncedFrame)
        )
        expect(yield* victim.query("SELECT k FROM t WHERE k LIKE 'v-%' ORDER BY k")).toEqual([{ k: "v-1" }, { k: "v-2" }])
        yield* victim.execute("INSERT INTO t VALUES ('v-3', 1)")
        yield* victim.sync
        yield* writer.sync
        const expected = [
          { k: "v-1", n: 1 }, { k: "v-2", n: 1 }, { k: "v-3", n: 1 },
          { k: "w-0", n: 5 }, { k: "w-1", n: 1 }, { k: "w-2", n: 2 }, { k: "w-3", n: 3 }, { k: "w-4", n: 4 }
        ]
        expect(yield* remoteQuery(remote, "SELECT k, n FROM t ORDER BY k")).toEqual(expected)
        expect(yield* victim.query("SELECT k, n FROM t ORDER BY k")).toEqual(expected)
        expect(yield* writer.query("SELECT k, n FROM t ORDER BY k")).toEqual(expected)
        expect(yield* victim.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
        expect((yield* victim.stats).pendingChanges).toBe(0)
      }))
  }

  for (const crashAt of Engine.bootstrapSteps) {
    it.scoped(`killed at ${crashAt}: the next open bootstraps again and is a replica like any other`, () =>
      Effect.gen(function*() {
        const harness = yield* Harness
        const name = freshName("crash-boot")
        const remote = yield* harness.remote(name)
        const url = harness.url(name)!
        const dir = yield* tempDir
        const path = NodePath.join(dir, "victim")
        const writer = yield* seededWriter(remote, dir)

        const killed = yield* runChild([path, url, crashAt])
        expect(killed.signal, killed.stderr).toBe("SIGKILL")
        // Killed with the copies on disk and no metadata: not a database whose metadata was lost.
        expect(Fs.existsSync(`${path}-synced`)).toBe(true)
        expect(Fs.existsSync(`${path}-info`)).toBe(false)
        // The same files with a Draft that differs from Synced may hold local changes: still refused.
        const other = NodePath.join(dir, "other")
        Fs.copyFileSync(`${path}-synced`, `${other}-synced`)
        const draft = Fs.readFileSync(`${path}-draft`)
        draft[draft.length - 1] ^= 1
        Fs.writeFileSync(`${other}-draft`, draft)
        expect(yield* Effect.flip(openClient(remote, other))).toMatchObject({ _tag: "StorageError", reason: "MetadataLost" })

        yield* writer.execute("INSERT INTO t VALUES ('w-1', 1)")
        yield* writer.push
        // The metadata the kill cut short before its rename is left as a temp file beside the copies...
        const temps = () => Fs.readdirSync(dir).filter((f) => f.startsWith("victim-info.tmp-"))
        expect(temps().length).toBeLessThanOrEqual(1)
        const victim = yield* openClient(remote, path)
        // ...which the next open's bootstrap removes.
        expect(temps()).toEqual([])
        expect(yield* victim.query("SELECT k, n FROM t ORDER BY k")).toEqual([{ k: "w-0", n: 1 }, { k: "w-1", n: 1 }])
        yield* victim.execute("INSERT INTO t VALUES ('v-1', 1)")
        yield* victim.sync
        yield* writer.sync
        const expected = [{ k: "v-1", n: 1 }, { k: "w-0", n: 1 }, { k: "w-1", n: 1 }]
        expect(yield* remoteQuery(remote, "SELECT k, n FROM t ORDER BY k")).toEqual(expected)
        expect(yield* writer.query("SELECT k, n FROM t ORDER BY k")).toEqual(expected)
        expect(yield* victim.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
      }))
  }
})
