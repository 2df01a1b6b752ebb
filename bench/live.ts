/**
 * `npm run bench:live` — live sync and reactive queries against a real server process (the
 * `effect-sqlite-sync serve` binary, embedded SQLite store) on loopback.
 *
 *   npx tsx bench/live.ts [--writes 200] [--gap 30] [--idle-seconds 10] [--profile] [--latency-only]
 *
 * 1. Latency: replicas A (this process) and B (a child process), both `live: true`. A inserts `--writes` rows, one every
 *    `--gap` ms; B watches `SELECT n FROM items` through `db.reactive`. Per row: from A's `execute` returning
 *    to the first emission of B's stream that holds the row. p50, p99, max; and the CPU A, B and the server
 *    used per write meanwhile (a figure that load changes less than latency).
 * 2. Idle CPU: a live replica alone in a child process, connected and idle, over `--idle-seconds`
 *    (`process.cpuUsage`, user + system, as a share of one core).
 * 3. The same writes with the server stopped (SIGTERM) after half of them and started again on the same port
 *    and data a second later: B catches up; every row arrives exactly once (checked on B: each n once, all of
 *    them) and A has nothing pending.
 *
 * `--profile`: only 1, with every engine step, HTTP request and fsync of both replicas recorded and laid out
 * per write (bench/liveProfile.ts). `node --cpu-prof --import tsx bench/live.ts` profiles A and B's CPU.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as Profile from "./liveProfile.js"
import { startServer } from "./serverProcess.js"

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}
const WRITES = Number(flag("writes", "200"))
const GAP_MS = Number(flag("gap", "30"))
const IDLE_SECONDS = Number(flag("idle-seconds", "10"))
/** `--profile`: the latency run only, with each replica's steps recorded and laid out per write (liveProfile.ts). */
const PROFILE = process.argv.includes("--profile")
/** `--latency-only`: part 1 alone (for comparing trees run after run). */
const LATENCY_ONLY = process.argv.includes("--latency-only")

const freePort = () =>
  new Promise<number>((resolve) => {
    const probe = Net.createServer()
    probe.listen(0, "127.0.0.1", () => {
      const port = (probe.address() as Net.AddressInfo).port
      probe.close(() => resolve(port))
    })
  })

const stopServer = (child: ChildProcess.ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.removeAllListeners("exit")
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
  })

const quiet = Logger.withMinimumLogLevel(LogLevel.Error)

const openLive = (scope: Scope.Scope, path: string, url: string, profile?: ReturnType<typeof Profile.make>) =>
  Layer.buildWithScope(
    SyncDatabase.layer({
      path,
      url,
      live: { maxBackoff: "1 second" },
      retrySchedule: Schedule.intersect(Schedule.spaced(100), Schedule.recurs(2))
    }).pipe(Layer.provide(NodeHttpClient.layerUndici), Layer.provide(profile?.layer ?? Layer.empty)),
    scope
  ).pipe(
    Effect.map(Context.get(SyncDatabase.SyncDatabase)),
    quiet,
    (e) => (profile ? profile.withTracer(e) : e),
    Effect.runPromise
  )

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Waits until `f()` holds, checking every 20 ms, for at most `ms`. */
const until = async (f: () => boolean, ms: number, what: string) => {
  const deadline = Date.now() + ms
  while (!f()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

interface Run {
  readonly latencies: ReadonlyArray<number>
  readonly missing: number
  readonly duplicated: number
  readonly rowsOnB: number
  readonly pendingOnA: number
  /** CPU (user + system) over the writes: A and the server until B held every row, B until told to finish. */
  readonly cpuMs: { readonly a: number; readonly b: number; readonly server: number }
  readonly catchUpMs?: number | undefined
  readonly downMs?: number | undefined
  readonly writtenWhileDown?: number | undefined
}

/** CPU (user + system) a child process used so far, from /proc (Linux); NaN elsewhere. */
const serverCpuMs = (child: ChildProcess.ChildProcess): number => {
  try {
    const fields = Fs.readFileSync(`/proc/${child.pid}/stat`, "utf8").replace(/^.*\) /, "").split(" ")
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name; in clock ticks (100 per second).
    return (Number(fields[11]) + Number(fields[12])) * 10
  } catch {
    return NaN
  }
}

/** Wall-clock milliseconds, comparable between the processes of this machine. */
const now = () => performance.timeOrigin + performance.now()

/** Starts the watching replica B in a child process; its first-seen times come back as JSON lines. */
const startWatcher = (url: string, path: string) => {
  // A CPU profile asked of this process (`node --cpu-prof`) is taken of B too.
  const cpuProf = process.execArgv.filter((a) => a.startsWith("--cpu-prof"))
  const child = ChildProcess.spawn(process.execPath, [...cpuProf, "--import", "tsx", import.meta.filename, "--watch-child", url, path, ...(PROFILE ? ["--profile"] : [])], {
    stdio: ["pipe", "pipe", "inherit"]
  })
  const seen = new Map<number, number>()
  let ready = false
  let result: { rows: number; missing: number; duplicated: number; cpuMs: number } | undefined
  let profile: Array<Profile.Event> = []
  let buffer = ""
  child.stdout!.on("data", (chunk: Buffer) => {
    buffer += chunk.toString()
    let i: number
    while ((i = buffer.indexOf("\n")) >= 0) {
      const line = JSON.parse(buffer.slice(0, i))
      buffer = buffer.slice(i + 1)
      if (line.ready) ready = true
      else if (line.result) result = line.result
      else if (line.profile) profile = line.profile
      else for (const n of line.ns) if (!seen.has(n)) seen.set(n, line.at)
    }
  })
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  return { child, seen, ready: () => ready, result: () => result, profile: () => profile, exited }
}

/** The child B: a live replica watching `SELECT n FROM items`; prints the new rows of each emission with the time. */
const watchChild = async (url: string, path: string) => {
  const scope = Effect.runSync(Scope.make())
  const profile = PROFILE ? Profile.make("B") : undefined
  const db = await openLive(scope, path, url, profile)
  await Effect.runPromise(
    db.reactive("SELECT name FROM sqlite_schema WHERE name = 'items'").pipe(
      Stream.filter((rows) => rows.length === 1),
      Stream.take(1),
      Stream.runDrain
    )
  )
  const known = new Set<number>()
  const cpuAtReady = process.cpuUsage()
  const fiber = Effect.runFork(
    db.reactive<{ n: number }>("SELECT n FROM items ORDER BY n").pipe(
      Stream.runForEach((rows) =>
        Effect.sync(() => {
          const at = now()
          const ns = rows.map((r) => Number(r.n)).filter((n) => !known.has(n))
          for (const n of ns) known.add(n)
          if (ns.length > 0) process.stdout.write(`${JSON.stringify({ at, ns })}\n`)
        })
      )
    )
  )
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`)
  // Told to finish on stdin's end (the parent has seen every row): settle, count, report.
  await new Promise((resolve) => process.stdin.on("end", resolve).resume())
  const cpu = process.cpuUsage(cpuAtReady)
  await sleep(500)
  const rows = await Effect.runPromise(db.query<{ n: number; c: number }>("SELECT n, count(*) AS c FROM items GROUP BY n"))
  const expected = Number(process.env.BENCH_WRITES)
  const present = new Set(rows.map((r) => Number(r.n)))
  // Before the result: the parent stops this process once it has the result.
  if (profile) process.stdout.write(`${JSON.stringify({ profile: profile.events.filter((e) => Number.isFinite(e.end)) })}\n`)
  process.stdout.write(`${JSON.stringify({
    result: {
      rows: rows.reduce((sum, r) => sum + Number(r.c), 0),
      missing: Array.from({ length: expected }, (_, i) => i + 1).filter((n) => !present.has(n)).length,
      duplicated: rows.filter((r) => Number(r.c) > 1).length,
      cpuMs: (cpu.user + cpu.system) / 1000
    }
  })}\n`)
  await Effect.runPromise(Fiber.interrupt(fiber))
  await Effect.runPromise(Scope.close(scope, Exit.void))
}

/**
 * Replica A here, B in a child process (another device); `writes` rows on A, B watching; `restart` stops the
 * server halfway and starts it again a second later.
 */
const measure = async (work: string, name: string, restart: boolean): Promise<Run & { profile?: () => void }> => {
  const data = NodePath.join(work, "server")
  const port = await freePort()
  let server = await startServer(data, port)
  const url = `${server.url}/db/${name}`
  const scope = Effect.runSync(Scope.make())
  let watcher: ReturnType<typeof startWatcher> | undefined
  const profile = PROFILE ? Profile.make("A") : undefined
  try {
    const a = await openLive(scope, NodePath.join(work, `${name}-a`), url, profile)
    await Effect.runPromise(a.execute("CREATE TABLE items (n INTEGER NOT NULL, body TEXT)"))
    const b = startWatcher(url, NodePath.join(work, `${name}-b`))
    watcher = b
    await until(b.ready, 120_000, "B to open and see the table")
    await sleep(500)
    const cpuA = process.cpuUsage()
    let cpuServer = -serverCpuMs(server.child)
    const written = new Map<number, number>()
    let downMs: number | undefined
    let restartedAt: number | undefined
    let writtenByRestart = 0
    let restarting: Promise<void> = Promise.resolve()
    for (let n = 1; n <= WRITES; n++) {
      if (restart && n === Math.floor(WRITES / 2) + 1) {
        // Stopped; A keeps writing while it is away; started again on the same port and data a second later.
        const down = now()
        cpuServer += serverCpuMs(server.child)
        await stopServer(server.child)
        restarting = sleep(1000).then(() => startServer(data, port)).then((started) => {
          server = started
          cpuServer -= serverCpuMs(started.child)
          restartedAt = now()
          downMs = restartedAt - down
          writtenByRestart = written.size
        })
      }
      const insert = a.execute("INSERT INTO items VALUES (?, ?)", [n, `row ${n}`])
      await Effect.runPromise(profile ? profile.withTracer(insert) : insert)
      written.set(n, now())
      await sleep(GAP_MS)
    }
    await restarting
    await until(() => b.seen.size >= WRITES, 300_000, `B to see all ${WRITES} rows`)
    const usedA = process.cpuUsage(cpuA)
    cpuServer += serverCpuMs(server.child)
    // Caught up: B holds every row written before the server was back.
    const caughtUp = Math.max(...Array.from({ length: writtenByRestart }, (_, i) => b.seen.get(i + 1) ?? NaN))
    b.child.stdin?.end()
    await until(() => b.result() !== undefined, 60_000, "B's count")
    const counted = b.result()!
    const stats = await Effect.runPromise(a.stats)
    const latencies = [...written].map(([n, at]) => (b.seen.get(n) ?? NaN) - at).sort((x, y) => x - y)
    const events = [...(profile?.events ?? []), ...b.profile()]
    return {
      ...(profile
        ? { profile: () => Profile.report(events, [...written].map(([n, t0]) => ({ n, t0, t1: b.seen.get(n) ?? NaN }))) }
        : {}),
      latencies,
      missing: counted.missing,
      duplicated: counted.duplicated,
      rowsOnB: counted.rows,
      pendingOnA: stats.pendingChanges,
      cpuMs: { a: (usedA.user + usedA.system) / 1000, b: counted.cpuMs, server: cpuServer },
      ...(restart ? { catchUpMs: caughtUp - (restartedAt ?? NaN), downMs, writtenWhileDown: writtenByRestart - Math.floor(WRITES / 2) } : {})
    }
  } finally {
    // B ends by itself once it reported (a CPU profile of it is written then); stopped if it does not.
    if (watcher !== undefined) {
      await Promise.race([watcher.exited, sleep(watcher.result() === undefined ? 0 : 5000)])
      watcher.child.kill("SIGTERM")
      await watcher.exited
    }
    await Effect.runPromise(Scope.close(scope, Exit.void))
    await stopServer(server.child)
  }
}

/** The child of the idle measurement: one live replica, connected, then idle; prints its CPU share. */
const idleChild = async (url: string, path: string) => {
  const scope = Effect.runSync(Scope.make())
  const db = await openLive(scope, path, url)
  await Effect.runPromise(
    db.status.changes.pipe(Stream.filter((s) => s.live === "connected"), Stream.take(1), Stream.runDrain)
  )
  await sleep(2000)
  const before = process.cpuUsage()
  const started = performance.now()
  await sleep(IDLE_SECONDS * 1000)
  const used = process.cpuUsage(before)
  const wallMs = performance.now() - started
  const status = await Effect.runPromise(db.status.get)
  console.log(JSON.stringify({ cpuMs: (used.user + used.system) / 1000, wallMs, live: status.live }))
  await Effect.runPromise(Scope.close(scope, Exit.void))
}

const measureIdle = async (work: string) => {
  const port = await freePort()
  const server = await startServer(NodePath.join(work, "idle-server"), port)
  try {
    const output = await new Promise<string>((resolve, reject) => {
      ChildProcess.execFile(
        process.execPath,
        ["--import", "tsx", import.meta.filename, "--idle-child", `${server.url}/db/idle`, NodePath.join(work, "idle"), "--idle-seconds", String(IDLE_SECONDS)],
        { timeout: 120_000 },
        (error, stdout) => (error ? reject(error) : resolve(stdout))
      )
    })
    const line = output.trim().split("\n").at(-1)!
    return JSON.parse(line) as { cpuMs: number; wallMs: number; live: string }
  } finally {
    await stopServer(server.child)
  }
}

const main = async () => {
  const childAt = process.argv.indexOf("--idle-child")
  if (childAt >= 0) return idleChild(process.argv[childAt + 1], process.argv[childAt + 2])
  const watchAt = process.argv.indexOf("--watch-child")
  if (watchAt >= 0) return watchChild(process.argv[watchAt + 1], process.argv[watchAt + 2])
  process.env.BENCH_WRITES = String(WRITES)
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bench-live-"))
  try {
    console.log(`node ${process.version}, ${Os.cpus().length} cpus, load ${Os.loadavg().map((l) => l.toFixed(1)).join(" ")}`)
    const plain = await measure(work, "latency", false)
    const cpu = (run: Run, who: keyof Run["cpuMs"]) => `${(run.cpuMs[who] / WRITES).toFixed(2)} ms`
    const ms = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? "n/a" : `${x.toFixed(1)} ms`)
    console.log(
      `latency, A's execute to B's emission, ${WRITES} writes ${GAP_MS} ms apart: p50 ${ms(percentile(plain.latencies, 50))}, ` +
        `p99 ${ms(percentile(plain.latencies, 99))}, max ${ms(plain.latencies.at(-1))} ` +
        `(rows on B ${plain.rowsOnB}, missing ${plain.missing}, duplicated ${plain.duplicated}, pending on A ${plain.pendingOnA})`
    )
    console.log(`CPU per write meanwhile: A ${cpu(plain, "a")}, B ${cpu(plain, "b")}, server ${cpu(plain, "server")}`)
    if (plain.profile) return plain.profile()
    if (LATENCY_ONLY) return
    const idle = await measureIdle(work)
    console.log(
      `idle live replica: ${idle.cpuMs.toFixed(1)} ms CPU over ${(idle.wallMs / 1000).toFixed(1)} s = ` +
        `${((100 * idle.cpuMs) / idle.wallMs).toFixed(2)}% of one core (status ${idle.live})`
    )
    const restarted = await measure(work, "restart", true)
    console.log(
      `server stopped after write ${Math.floor(WRITES / 2)}, down ${ms(restarted.downMs)} (${restarted.writtenWhileDown} writes on A meanwhile): ` +
        `B held every row written so far ${ms(restarted.catchUpMs)} after the restart; latency p50 ${ms(percentile(restarted.latencies, 50))}, p99 ${
        ms(percentile(restarted.latencies, 99))
      }; rows on B ${restarted.rowsOnB} of ${WRITES}, missing ${restarted.missing}, duplicated ${restarted.duplicated}, pending on A ${restarted.pendingOnA}`
    )
    const ok = [plain, restarted].every((r) => r.missing === 0 && r.duplicated === 0 && r.rowsOnB === WRITES && r.pendingOnA === 0)
    console.log(ok ? "check: every row arrived exactly once" : "check FAILED: rows missing or duplicated")
    if (!ok) process.exitCode = 1
  } finally {
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

main().then(() => process.exit(process.exitCode ?? 0), (error) => {
  console.error(error)
  process.exit(1)
})
