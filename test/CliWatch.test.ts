/**
 * `effect-sqlite-sync watch`: the real binary against a real server process, both on loopback. It prints
 * the rows at once and again when another replica's push changes them (JSON lines with `--json`, tables
 * otherwise), and SIGINT ends it with status 0 and the local database released. The other replica runs in
 * this process (a SyncDatabase over HTTP): only the command under test pays for a process of its own.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { BIN, runBin, spawnServer } from "./support/process.js"

/** Replica A, in this process: runs `sql` as one `execute` and pushes it. */
const writer = (path: string, url: string) => {
  const runtime = ManagedRuntime.make(
    SyncDatabase.layer({ path, url }).pipe(
      Layer.provide(NodeHttpClient.layerUndici),
      Layer.provide(Logger.minimumLogLevel(LogLevel.Error))
    )
  )
  return {
    write: (sql: string) =>
      runtime.runPromise(Effect.flatMap(SyncDatabase.SyncDatabase, (db) => Effect.zipRight(db.execute(sql), db.push))),
    dispose: () => runtime.dispose()
  }
}

interface Watcher {
  readonly child: ChildProcess.ChildProcess
  /** Resolves with the next stdout chunk that makes `test` hold on everything printed so far. */
  readonly until: (test: (stdout: string) => boolean, what: string) => Promise<string>
  readonly stderr: () => string
  readonly exited: Promise<number | null>
}

const watch = (args: ReadonlyArray<string>): Watcher => {
  const child = ChildProcess.spawn(process.execPath, [BIN, "watch", ...args], { stdio: ["ignore", "pipe", "pipe"] })
  let stdout = ""
  let stderr = ""
  const waiters: Array<() => void> = []
  child.stdout!.on("data", (chunk: Buffer) => {
    stdout += chunk.toString()
    for (const w of waiters.splice(0)) w()
  })
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
  const until = (test: (stdout: string) => boolean, what: string) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`watch never printed ${what}; stdout: ${stdout}; stderr: ${stderr}`)), 60_000)
      const check = () => {
        if (test(stdout)) {
          clearTimeout(timer)
          resolve(stdout)
        } else waiters.push(check)
      }
      check()
    })
  return { child, until, stderr: () => stderr, exited }
}

const ok = async (args: ReadonlyArray<string>) => {
  const result = await runBin(args)
  expect(result.stderr).toBe("")
  expect(result.code).toBe(0)
  return result
}

describe("effect-sqlite-sync watch", () => {
  it("prints JSON lines as another replica's pushes change the rows; SIGINT exits 0 and releases the database", async () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ess-watch-"))
    const server = await spawnServer(["--data", Path.join(dir, "data")])
    const url = `${server.url}/db/watched`
    const a = writer(Path.join(dir, "a"), url)
    try {
      const b = Path.join(dir, "b")
      await a.write("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO t VALUES (1, 'one')")
      const watcher = watch(["--db", b, "--url", url, "--json", "SELECT id, body FROM t WHERE id < ? ORDER BY id", "100"])
      const lines = (stdout: string) => stdout.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))
      await watcher.until((s) => lines(s).length >= 1, "the first rows")
      expect(lines(await watcher.until((s) => lines(s).length >= 1, "the first rows"))[0]).toEqual([{ id: 1, body: "one" }])
      await a.write("INSERT INTO t VALUES (2, 'two')")
      const after = lines(await watcher.until((s) => lines(s).some((rows) => rows.length === 2), "the second row"))
      expect(after.at(-1)).toEqual([{ id: 1, body: "one" }, { id: 2, body: "two" }])
      await a.write("INSERT INTO t VALUES (500, 'not selected'); INSERT INTO t VALUES (3, 'three')")
      const last = lines(await watcher.until((s) => lines(s).some((rows) => rows.length === 3), "the third row"))
      expect(last.at(-1)).toEqual([{ id: 1, body: "one" }, { id: 2, body: "two" }, { id: 3, body: "three" }])
      // Every line is one complete emission, in order: the row counts never go down.
      const counts = last.map((rows) => rows.length)
      expect(counts).toEqual([...counts].sort((x, y) => x - y))
      watcher.child.kill("SIGINT")
      expect(await watcher.exited).toBe(0)
      // Released: another command opens it at once.
      const status = await ok(["status", "--db", b, "--json"])
      expect(JSON.parse(status.stdout)).toMatchObject({ command: "status", pendingChanges: 0 })
    } finally {
      await a.dispose()
      server.child.kill("SIGKILL")
      await server.exited
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 300_000)

  it("prints tables as query does, 64-bit integers exactly; a write statement is refused, a missing --url is bad usage", async () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ess-watch-"))
    const server = await spawnServer(["--data", Path.join(dir, "data")])
    const url = `${server.url}/db/tables`
    const a = writer(Path.join(dir, "a"), url)
    try {
      await a.write("CREATE TABLE n (id INTEGER PRIMARY KEY, big INTEGER); INSERT INTO n VALUES (1, 9007199254740993)")
      const watcher = watch(["--db", Path.join(dir, "b"), "--url", url, "SELECT id, big FROM n ORDER BY id"])
      const first = await watcher.until((s) => s.includes("(1 row)"), "a one-row table")
      expect(first).toContain("9007199254740993")
      expect(first.split("\n").slice(0, 2)).toEqual(["id  big", "--  ----------------"])
      await a.write("INSERT INTO n VALUES (2, 2)")
      await watcher.until((s) => s.includes("(2 rows)"), "a two-row table")
      watcher.child.kill("SIGINT")
      expect(await watcher.exited).toBe(0)

      const refused = await runBin(["watch", "--db", Path.join(dir, "b"), "--url", url, "DELETE FROM n"])
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain("SqlStatementError")
      const usage = await runBin(["watch", "--db", Path.join(dir, "c"), "SELECT 1"])
      expect(usage.code).toBe(2)
    } finally {
      await a.dispose()
      server.child.kill("SIGKILL")
      await server.exited
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 300_000)
})
