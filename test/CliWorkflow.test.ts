/**
 * A scripted sync workflow driven through the command line alone: every step is a
 * `node bin/effect-sqlite-sync.js ...` child process, as a shell script would run it.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import { BIN, freePort, serverProcess } from "./support/process.js"

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const cleanEnv = () => {
  const env = { ...process.env }
  for (const key of Object.keys(env)) if (key.startsWith("EFFECT_SQLITE_SYNC_")) delete env[key]
  return env
}

const cli = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.promise(() =>
    new Promise<Run>((resolve) => {
      ChildProcess.execFile(
        process.execPath,
        [BIN, ...args],
        { timeout: 120_000, env: { ...cleanEnv(), ...env } },
        (error, stdout, stderr) =>
          resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr })
      )
    })
  )

/** Runs the CLI and expects exit status 0 and exactly one JSON document on stdout. */
const json = (args: ReadonlyArray<string>) =>
  Effect.map(cli([...args, "--json"]), (run) => {
    expect(run.code, `${args.join(" ")}\n${run.stderr}`).toBe(0)
    expect(run.stdout.trim().split("\n")).toHaveLength(1)
    return { value: JSON.parse(run.stdout) as any, raw: run.stdout }
  })

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-cli-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

const filesOf = (dir: string) => Fs.readdirSync(dir).sort()

const ISO_DATE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

describe("effect-sqlite-sync CLI workflow", () => {
  it.scoped("two local databases converge through exec, push, pull, sync and query", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const url = `${server.url}/db/workflow`
      const a = ["--db", NodePath.join(dir, "a.db"), "--url", url]
      const b = ["--db", NodePath.join(dir, "b.db"), "--url", url]

      // a: created from the server by its first command, then a table and a row with every kind of value.
      const created = yield* json(["exec", ...a, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, big INTEGER, data BLOB)"])
      expect(created.value).toMatchObject({ command: "exec" })
      const inserted = yield* json(["exec", ...a, "INSERT INTO items VALUES (?, ?, ?, ?, ?)", "1", "apple", "3", "9007199254740993", "X'00ff'"])
      expect(inserted.value).toEqual({ command: "exec", changes: 1, lastInsertRowid: 1 })
      const pendingA = yield* json(["status", ...a])
      expect(pendingA.value.pendingChanges).toBe(2)

      const syncedA = yield* json(["sync", ...a])
      expect(syncedA.value).toMatchObject({ command: "sync", pushedChanges: 2, pendingChanges: 0 })

      // b: bootstraps on its first sync at the remote's head, so it opens with a's rows and the sync itself
      // has nothing left to bring.
      const firstB = yield* cli(["sync", ...b, "--json", "--progress", "always"])
      expect(firstB.code, firstB.stderr).toBe(0)
      expect(JSON.parse(firstB.stdout)).toMatchObject({ command: "sync", changed: false, pendingChanges: 0 })
      expect(firstB.stderr).toContain("bootstrap (head of generation 1, frame ")
      expect((yield* json(["query", ...b, "SELECT name FROM items"])).value).toEqual([{ name: "apple" }])

      // b writes (text that looks like a number stays text when quoted; the smallest 64-bit integer; NULL).
      yield* json(["exec", ...b, "INSERT INTO items VALUES (?, ?, ?, ?, ?)", "2", "'007'", "NULL", "-9223372036854775808", "X''"])
      yield* json(["exec", ...b, "UPDATE items SET qty = qty + ? WHERE id = ?", "4", "1"])
      const pushedB = yield* json(["push", ...b])
      expect(pushedB.value).toMatchObject({ command: "push", pushed: true, pushedChanges: 2, pendingChanges: 0 })
      // push alone leaves b's local copy as it was written (the seed's semantics), a pull is what brings rows in.
      const pulledA = yield* json(["pull", ...a])
      expect(pulledA.value).toMatchObject({ command: "pull", changed: true })

      // a writes again while b is idle, then both sync.
      yield* json(["exec", ...a, "DELETE FROM items WHERE name = ?", "'007'"])
      yield* json(["exec", ...a, "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", "3", "pear", "-1.5"])
      yield* json(["sync", ...a])
      // Frames arrive here: the progress bar, forced on (stderr not a TTY), runs to 100%.
      const syncB = yield* cli(["sync", ...b, "--json", "--progress", "always"])
      expect(syncB.code, syncB.stderr).toBe(0)
      expect(JSON.parse(syncB.stdout)).toMatchObject({ changed: true, pendingChanges: 0 })
      expect(syncB.stderr).toMatch(/sync \[#+\] 100%/)

      const select = "SELECT id, name, qty, big, data FROM items ORDER BY id"
      const [rowsA, rowsB] = yield* Effect.all([json(["query", ...a, select]), json(["query", ...b, select])], {
        concurrency: 2
      })
      expect(rowsA.raw).toBe(rowsB.raw)
      // 2^53 + 1 is printed exactly (JSON.parse below rounds it; the text does not).
      expect(rowsA.raw).toContain(`"big":9007199254740993`)
      expect(rowsA.value).toEqual([
        { id: 1, name: "apple", qty: 7, big: 9007199254740993, data: { $blob: "00ff" } },
        { id: 3, name: "pear", qty: -1.5, big: null, data: null }
      ])

      // Parameters bind as documented: the quoted '007' stayed text, and went away with the delete.
      const filtered = yield* json(["query", ...a, "SELECT count(*) AS n FROM items WHERE qty > ? AND name <> ?", "0", "'x'"])
      expect(filtered.value).toEqual([{ n: 1 }])

      const [statusA, statusB] = yield* Effect.all([json(["status", ...a]), json(["status", ...b])], { concurrency: 2 })
      for (const s of [statusA.value, statusB.value]) {
        expect(s).toMatchObject({ pendingChanges: 0, remote: { checked: true, reachable: true, framesToPull: 0 } })
      }
      expect(statusA.value.syncedFrame).toBe(statusB.value.syncedFrame)
      expect(statusA.value.clientId).not.toBe(statusB.value.clientId)

      // The human forms: a table for query, a one-line summary for the rest.
      const table = yield* cli(["query", ...a, "SELECT id, name FROM items ORDER BY id"])
      expect(table.code).toBe(0)
      expect(table.stdout).toBe("id  name\n--  -----\n1   apple\n3   pear\n(2 rows)\n")
      const human = yield* cli(["push", ...a])
      expect(human).toMatchObject({ code: 0, stdout: "push: nothing to push\n" })

      // No conflict so far.
      const none = yield* json(["conflicts", "--db", NodePath.join(dir, "a.db")])
      expect(none.value).toEqual({ command: "conflicts", conflicts: [] })

      // Both edit the same column of one row; a pushes first, so b's push meets a row changed remotely: the
      // default (last push wins, column by column) keeps b's change as captured, and b's conflict log says so.
      yield* Effect.all([
        json(["exec", ...a, "UPDATE items SET name = ? WHERE id = ?", "apple (a)", "1"]),
        json(["exec", ...b, "UPDATE items SET name = ? WHERE id = ?", "apple (b)", "1"])
      ], { concurrency: 2 })
      yield* json(["push", ...a])
      yield* json(["sync", ...b])
      yield* json(["pull", ...a])
      const logged = yield* json(["conflicts", "--db", NodePath.join(dir, "b.db")])
      expect(logged.value.conflicts).toHaveLength(1)
      expect(logged.value.conflicts[0]).toMatchObject({ kind: "RowChanged", table: "items", decision: "KeepLocal" })
      // Times are ISO dates, in JSON as in the table, as `status` prints its times.
      expect(logged.value.conflicts[0].at).toMatch(ISO_DATE)
      expect(new Date(logged.value.conflicts[0].at).getTime()).toBeGreaterThan(Date.now() - 3_600_000)
      const humanLog = yield* cli(["conflicts", "--db", NodePath.join(dir, "b.db")])
      expect(humanLog.stdout).toMatch(/RowChanged\s+items\s+\{"id":"1"\}\s+KeepLocal/)
      expect(humanLog.stdout).toContain(logged.value.conflicts[0].at)
      const names = yield* Effect.all([
        json(["query", ...a, "SELECT name FROM items WHERE id = 1"]),
        json(["query", ...b, "SELECT name FROM items WHERE id = 1"])
      ], { concurrency: 2 })
      expect(names.map((n) => n.value)).toEqual([[{ name: "apple (b)" }], [{ name: "apple (b)" }]])
    }), { timeout: 420_000 })

  it.scoped("exit status 1 when the server is down or the URL unreachable; local work goes on and syncs later", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const data = NodePath.join(dir, "server")
      const first = yield* serverProcess(["--data", data])
      const db = NodePath.join(dir, "a.db")
      yield* json(["exec", "--db", db, "--url", `${first.url}/db/down`, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
      yield* json(["sync", "--db", db, "--url", `${first.url}/db/down`])
      first.child.kill("SIGTERM")
      expect(yield* Effect.promise(() => first.exited)).toEqual({ code: 0, signal: null })

      // Server down: local writes and reads still work, push fails with status 1 and says why.
      yield* json(["exec", "--db", db, "INSERT INTO t VALUES (?, ?)", "1", "written offline"])
      const human = yield* cli(["push", "--db", db, "--url", `${first.url}/db/down`, "--retries", "0"])
      expect(human.code).toBe(1)
      expect(human.stdout).toBe("")
      expect(human.stderr).toMatch(/^error: NetworkError \(Transport\): /)
      const asJson = yield* cli(["sync", "--db", db, "--url", `${first.url}/db/down`, "--retries", "1", "--json"])
      expect(asJson.code).toBe(1)
      expect(JSON.parse(asJson.stdout).error).toMatchObject({ _tag: "NetworkError", reason: "Transport" })
      const status = yield* json(["status", "--db", db, "--url", `${first.url}/db/down`, "--retries", "0"])
      expect(status.value).toMatchObject({ pendingChanges: 1, remote: { checked: true, reachable: false } })

      // A new database cannot be created from an unreachable URL: status 1, and no file is left behind.
      const fresh = NodePath.join(dir, "fresh")
      Fs.mkdirSync(fresh)
      const bootstrap = yield* cli(["pull", "--db", NodePath.join(fresh, "x.db"), "--url", "http://127.0.0.1:1/db/x", "--retries", "0"])
      expect(bootstrap.code).toBe(1)
      expect(bootstrap.stderr).toContain("BootstrapError")
      expect(filesOf(fresh)).toEqual([])

      // The server is back (on another port, same data): the offline write goes through, once. The local
      // databases record their server's URL, so they are told it moved.
      const second = yield* serverProcess(["--data", data])
      const synced = yield* json(["sync", "--db", db, "--url", `${second.url}/db/down`, "--allow-url-change"])
      expect(synced.value).toMatchObject({ pushedChanges: 1, pendingChanges: 0 })
      const other = yield* json(["query", "--db", NodePath.join(dir, "b.db"), "--url", `${second.url}/db/down`, "--allow-url-change", "SELECT 1"])
      expect(other.value).toEqual([{ 1: 1 }])
      yield* json(["pull", "--db", NodePath.join(dir, "b.db"), "--url", `${second.url}/db/down`])
      const rows = yield* json(["query", "--db", NodePath.join(dir, "b.db"), "SELECT * FROM t"])
      expect(rows.value).toEqual([{ id: 1, v: "written offline" }])
    }), { timeout: 420_000 })

  it.scoped("messages a user reads: lastInsertRowid, query refusing a write, capture refusals, transport causes", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const db = ["--db", NodePath.join(dir, "a.db")]
      const url = `${server.url}/db/messages`

      // lastInsertRowid is the inserted row's, and 0 after a statement that inserted nothing.
      const rowids = []
      for (
        const sql of [
          "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
          "INSERT INTO t (v) VALUES ('a'), ('b')",
          "UPDATE t SET v = 'c' WHERE id = 1",
          "DELETE FROM t WHERE id = 2",
          "INSERT OR IGNORE INTO t (id, v) VALUES (1, 'again')",
          "CREATE INDEX t_v ON t (v)",
          "INSERT INTO t (id, v) VALUES (40, 'd')"
        ]
      ) {
        const run = yield* json(["exec", ...db, "--url", url, sql])
        rowids.push([run.value.changes, run.value.lastInsertRowid])
      }
      expect(rowids).toEqual([[0, 0], [2, 2], [1, 0], [1, 0], [0, 0], [0, 0], [1, 40]])
      const human = yield* cli(["exec", ...db, "UPDATE t SET v = 'e'"])
      expect(human.stdout).toBe("ok: 2 rows changed, last insert rowid 0\n")

      // query refuses a write and names the command that runs it.
      const write = yield* cli(["query", ...db, "DELETE FROM t"])
      expect(write.code).toBe(1)
      expect(write.stderr).toContain("run writes with `effect-sqlite-sync exec`")
      expect(write.stderr).not.toContain("use execute")

      // A statement change capture refuses: the reason, without an error class name in front of it.
      const virtual = yield* cli(["exec", ...db, "CREATE VIRTUAL TABLE v USING fts5(x)"])
      expect(virtual.code).toBe(1)
      expect(virtual.stderr).toMatch(/^error: SqlStatementError \(Statement\): virtual tables cannot be captured/)
      expect(virtual.stderr).not.toMatch(/CaptureError|Error:/)

      // Transport failures name their cause, once each, with the URL once.
      const closedPort = yield* Effect.promise(freePort)
      // The local database records its server's URL; --allow-url-change lets it try these others.
      const refused = yield* cli(["push", ...db, "--url", `http://127.0.0.1:${closedPort}/db/messages`, "--retries", "0", "--allow-url-change"])
      const tls = yield* cli(["push", ...db, "--url", url.replace("http://", "https://"), "--retries", "0", "--allow-url-change"])
      expect(refused.code).toBe(1)
      expect(tls.code).toBe(1)
      expect(refused.stderr).toContain("connection refused")
      expect(tls.stderr).toContain("TLS handshake failed: the server does not speak https")
      for (const [run, target] of [[refused, `127.0.0.1:${closedPort}`], [tls, url.replace("http://", "https://")]] as const) {
        expect(run.stderr.split(target).length - 1, run.stderr).toBe(1)
        expect(run.stderr).not.toContain("Transport error (")
      }
    }), { timeout: 420_000 })

  it.scoped("exit status 2 on bad usage, with a message on stderr, nothing on stdout and no file created", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const db = NodePath.join(dir, "never.db")
      const url = "http://127.0.0.1:1/db/never"
      const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
        [["frobnicate"], "Invalid subcommand"],
        [["pull", "--url", url], "--db"],
        [["push", "--db", db], "--url"],
        [["sync", "--db", db, "--url", url, "--retries", "many"], "integer"],
        [["pull", "--db", db, "--url", "ftp://example/db/x"], "--url must be an http://"],
        [["query", "--db", db, "SELECT 1"], "give --url to create it"],
        [["exec", "--db", db, "--url", url, "SELECT ?", "99999999999999999999"], "64-bit integer range"],
        [["exec", "--db", db, "--url", url, "SELECT ?", "X'abc'"], "odd number of hex digits"],
        [["pull", "--db", NodePath.join(dir, "missing", "x.db"), "--url", url], "does not exist"],
        [["status", "--db", db, "--progress", "sometimes"], "always"],
        [["exec", "--db", db, "--url", url], "sql"]
      ]
      const runs = yield* Effect.all(cases.map(([args]) => cli([...args, "--json"])), { concurrency: 2 })
      runs.forEach((run, i) => {
        const [args, message] = cases[i]
        expect(run.code, `${args.join(" ")}: ${run.stderr}`).toBe(2)
        expect(run.stdout, args.join(" ")).toBe("")
        expect(run.stderr, args.join(" ")).toContain(message)
      })
      expect(filesOf(dir)).toEqual([])
    }), { timeout: 420_000 })
})
