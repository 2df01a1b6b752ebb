/**
 * Issue 6, process kills (client side): child processes (test/support/killChild.ts) write, push, pull and
 * sync in a loop against a real `serve` process and are SIGKILLed at random moments, `CLIENT_KILLS` times
 * in all (default 100), each restarted on the same files. A kill lands 20–400 ms after the child starts
 * opening, so some land during the open (recovery of the previous kill) and the rest in the loop.
 *
 * In the end: every write a child reported (after its commit returned) is on the server exactly once and
 * on a fresh replica; a write committed but unreported (killed in between) is there at most once, at most
 * one per kill; each client's counter is between its reported increments and those plus its kills; the
 * local files pass integrity_check.
 *
 * Runs alone with `npx vitest run test/ClientKill.test.ts`; CLIENT_KILLS and SEED may be set.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { bundleScript } from "./support/bundle.js"
import * as H from "./support/http.js"
import { type ServerProcess, spawnServer } from "./support/process.js"

const KILLS = Number(process.env.CLIENT_KILLS ?? 100)
const SEED = Number(process.env.SEED ?? Date.now() % 100_000)
const LANES = ["A", "B"] as const

const mulberry32 = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Spawned {
  readonly child: ChildProcess.ChildProcess
  readonly opened: Promise<boolean>
  readonly readyP: Promise<boolean>
  readonly ready: () => boolean
  readonly stdout: () => string
  readonly stderr: () => string
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

const spawnChild = (script: string, args: ReadonlyArray<string>): Spawned => {
  const child = ChildProcess.spawn(process.execPath, [script, ...args], {
    cwd: Path.resolve(import.meta.dirname, ".."),
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  let ready = false
  let markOpened: (opened: boolean) => void = () => {}
  const opened = new Promise<boolean>((resolve) => (markOpened = resolve))
  let markReady: (ready: boolean) => void = () => {}
  const readyP = new Promise<boolean>((resolve) => (markReady = resolve))
  child.stdout!.on("data", (chunk: Buffer) => {
    stdout += chunk.toString()
    if (stdout.includes("open\n")) markOpened(true)
    if (stdout.includes("ready\n")) {
      ready = true
      markReady(true)
    }
  })
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      markOpened(false)
      markReady(false)
      resolve({ code, signal })
    })
  )
  return { child, opened, readyP, ready: () => ready, stdout: () => stdout, stderr: () => stderr, exited }
}

/** The complete lines of a report file (a line cut by a kill counts as unreported). */
const reportLines = (file: string): Array<string> => {
  if (!Fs.existsSync(file)) return []
  const text = Fs.readFileSync(file, "utf8")
  const lines = text.split("\n")
  lines.pop()
  return lines
}

describe("client SIGKILL while writing, pushing, pulling and syncing", () => {
  it.live(`${KILLS} kills: every reported write exactly once on the server and a fresh replica (SEED=${SEED})`, () =>
    Effect.gen(function*() {
      const started = Date.now()
      const random = mulberry32(SEED)
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => H.tempDir("client-kill")),
        (d) => Effect.sync(() => Fs.rmSync(d, { recursive: true, force: true }))
      )
      const data = Path.join(dir, "server")
      Fs.mkdirSync(data)
      // Bundled once: each of the restarts costs a Node start, not a TypeScript compile.
      const script = yield* bundleScript(Path.resolve(import.meta.dirname, "support", "killChild.ts"))

      const server: ServerProcess = yield* Effect.promise(() => spawnServer(["--data", data]))
      yield* Effect.addFinalizer(() =>
        Effect.promise(async () => {
          if (server.child.exitCode === null && server.child.signalCode === null) {
            server.child.kill("SIGKILL")
            await server.exited
          }
        })
      )
      const url = `${server.url}/db/kills`

      const open = (path: string) =>
        Layer.build(
          SyncDatabase.layer({ path, url, clientName: "checker" }).pipe(Layer.provide(NodeHttpClient.layerUndici))
        ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

      const setup = yield* open(Path.join(dir, "setup"))
      yield* setup.execute("CREATE TABLE w (id INTEGER PRIMARY KEY, client TEXT NOT NULL, key TEXT NOT NULL)")
      yield* setup.execute("CREATE TABLE c (client TEXT PRIMARY KEY, n INTEGER NOT NULL)")
      for (const lane of LANES) yield* setup.execute("INSERT INTO c VALUES (?, 0)", [lane])
      expect(yield* setup.push).toBe(true)

      const paths = Object.fromEntries(LANES.map((lane) => [lane, Path.join(dir, `client-${lane}`)]))
      const reports = Object.fromEntries(LANES.map((lane) => [lane, Path.join(dir, `report-${lane}.txt`)]))
      const kills: Record<string, number> = { A: 0, B: 0 }
      const duringOpen: Record<string, number> = { A: 0, B: 0 }
      const unexpectedExits: Array<string> = []
      const killedDuring: Record<string, number> = {}

      // Two clients at once, so their pushes also conflict; each is killed and restarted KILLS / 2 times.
      const lane = async (name: string, count: number) => {
        for (let k = 0; k < count; k++) {
          const child = spawnChild(script, [paths[name], url, name, reports[name]])
          // A third of the kills land while the child opens (recovering from the previous kill), the
          // rest 50–400 ms into its loop of writes, pushes, pulls and syncs.
          const whileOpening = random() < 1 / 3
          const delay = whileOpening ? 20 + random() * 380 : 50 + random() * 350
          if (await (whileOpening ? child.opened : child.readyP)) await sleep(delay)
          if (child.child.exitCode !== null || child.child.signalCode !== null) {
            unexpectedExits.push(`${name}: exited ${child.child.exitCode}: ${child.stderr()}`)
          }
          if (!child.ready()) duringOpen[name]++
          else {
            const doing = /> (\w+)\n(?![\s\S]*> )/.exec(child.stdout())?.[1] ?? "ready"
            killedDuring[doing] = (killedDuring[doing] ?? 0) + 1
          }
          child.child.kill("SIGKILL")
          const exit = await child.exited
          if (exit.signal === "SIGKILL") kills[name]++
          else unexpectedExits.push(`${name}: ${exit.code} ${exit.signal}: ${child.stderr()}`)
        }
      }
      yield* Effect.promise(() =>
        Promise.all(LANES.map((name, i) => lane(name, Math.floor(KILLS / 2) + (i < KILLS % 2 ? 1 : 0))))
      )
      const killSeconds = (Date.now() - started) / 1000
      expect(unexpectedExits).toEqual([])
      expect(kills.A + kills.B).toBe(KILLS)

      // Each client once more, not killed: it recovers, syncs until that succeeds, and checks its files.
      for (const name of LANES) {
        const child = spawnChild(script, [paths[name], url, name, reports[name], "final"])
        const exit = yield* Effect.promise(() => child.exited)
        expect(exit.code, child.stderr()).toBe(0)
        const result = JSON.parse(child.stdout().split("\n").find((l) => l.startsWith("{"))!)
        expect(result.integrity).toEqual([{ integrity_check: "ok" }])
        expect(result.pending).toBe(0)
      }
      // The first client's final sync ran before the second's; pull the rest into it for the file check.
      const finalA = spawnChild(script, [paths.A, url, "A", reports.A, "final"])
      expect((yield* Effect.promise(() => finalA.exited)).code, finalA.stderr()).toBe(0)

      // The server's database, materialized.
      const snapshot = yield* Effect.promise(() => H.snapshot(server.url, "kills"))
      const db = H.open(snapshot.file)
      expect(db.pragma("integrity_check", { simple: true })).toBe("ok")
      const serverKeys = (db.prepare("SELECT key FROM w").all() as Array<{ key: string }>).map((r) => r.key)
      const counters = Object.fromEntries(
        (db.prepare("SELECT client, n FROM c").all() as Array<{ client: string; n: number }>).map((r) => [r.client, r.n])
      )
      db.close()
      const onServer = new Map<string, number>()
      for (const key of serverKeys) onServer.set(key, (onServer.get(key) ?? 0) + 1)
      expect([...onServer].filter(([, n]) => n > 1)).toEqual([])

      const figures: Record<string, unknown> = { seed: SEED, kills: KILLS, killSeconds }
      for (const name of LANES) {
        const lines = reportLines(reports[name])
        const reported = lines.filter((l) => l.startsWith("w ")).map((l) => l.slice(2))
        const increments = lines.filter((l) => l === "c").length
        expect(reported.filter((key) => onServer.get(key) !== 1), `${name}: reported writes missing`).toEqual([])
        const unreported = serverKeys.filter((key) => key.startsWith(`${name}:`) && !reported.includes(key))
        // Committed, then killed before the report line: at most one such write per kill.
        expect(unreported.length).toBeLessThanOrEqual(kills[name])
        expect(counters[name]).toBeGreaterThanOrEqual(increments)
        expect(counters[name]).toBeLessThanOrEqual(increments + kills[name])
        figures[name] = {
          kills: kills[name],
          killedWhileOpening: duringOpen[name],
          reportedWrites: reported.length,
          unreportedButCommitted: unreported.length,
          reportedIncrements: increments,
          counter: counters[name]
        }
        // Draft and Synced of the client pass integrity_check (read-only: nothing is changed).
        for (const file of [`${paths[name]}-draft`, `${paths[name]}-synced`]) {
          const local = new BetterSqlite3(file, { readonly: true })
          expect(local.pragma("integrity_check", { simple: true }), file).toBe("ok")
          local.close()
        }
      }
      const totalReported = LANES.reduce((n, name) => n + (figures[name] as { reportedWrites: number }).reportedWrites, 0)
      expect(totalReported).toBeGreaterThan(0)

      // A fresh replica pulls exactly the server's rows.
      const fresh = yield* open(Path.join(dir, "fresh"))
      yield* fresh.pull
      const freshKeys = (yield* fresh.query<{ key: string }>("SELECT key FROM w")).map((r) => r.key).sort()
      expect(freshKeys).toEqual([...serverKeys].sort())
      expect(yield* fresh.query("SELECT client, n FROM c ORDER BY client")).toEqual(
        LANES.map((name) => ({ client: name, n: counters[name] }))
      )
      expect(yield* fresh.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])

      figures.killedDuring = killedDuring
      figures.serverRows = serverKeys.length
      figures.seconds = (Date.now() - started) / 1000
      console.log(`ClientKill report ${JSON.stringify(figures)}`)
    }).pipe(Effect.scoped), { timeout: 900_000 })
})
