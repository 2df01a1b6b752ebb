/**
 * Load: many concurrent clients on loopback pushing and pulling against `effect-sqlite-sync serve`
 * (its own process, embedded SQLite store in a temp directory) for a bounded time.
 *
 *   npm run bench:load -- [--clients 50] [--seconds 20] [--databases 10] [--pull-share 0.3]
 *                         [--large-share 0.05] [--check quick_check|integrity_check|off]
 *   (or: npx tsx bench/load.ts ...)
 *
 * Each client is a real SQLite replica (test/support/rawPusher.ts): a push is one transaction writing
 * one row (a share of them large, several requests joined by a baton); a pull fetches new frames 128 a
 * request. Clients of one database conflict with each other as real ones do; a conflicted client pulls
 * and writes its row again. At the end every database is read back and checked: every acknowledged row
 * is there exactly once, every acknowledged frame is stored byte for byte, integrity_check passes.
 * Anything but conflicts and 503 busy (a baton transaction of another client is open) counts as an
 * error. Figures go to stdout and to bench/results/load-<time>.json; the exit code is 1 on any error.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as H from "../test/support/http.js"
import { spawnServer } from "../test/support/process.js"
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
for (const [name, value] of Object.entries({ clients, seconds, databases, pullShare, largeShare })) {
  if (!Number.isFinite(value) || value < 0) throw new Error(`--${name}: not a number`)
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

/** Time the server itself spent per request (its log's `ms`), by route. */
const serverTimes = (log: string) => {
  const byRoute = new Map<string, Array<number>>()
  for (const line of Fs.readFileSync(log, "utf8").split("\n")) {
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

const main = async () => {
  const data = H.tempDir("bench-load")
  const log = Path.join(data, "server.log")
  const server = await spawnServer(["--data", data, "--log-format", "json", "--integrity-check", check], {
    stderrFile: log
  })
  try {
    const base = server.url
    const pushers = Array.from({ length: clients }, (_, i) =>
      new Pusher({
        base: () => base,
        database: `load-${i % Math.max(1, databases)}`,
        id: `c${i}`,
        largeShare,
        keepFrames: true
      })
    )
    console.log(`${clients} clients on ${databases} databases for ${seconds} s against ${base} (check: ${check})`)
    const started = performance.now()
    const deadline = started + seconds * 1000
    const pullErrors: Array<string> = []
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

    const verdicts: Record<string, Awaited<ReturnType<typeof verify>>> = {}
    for (let d = 0; d < Math.max(1, databases); d++) {
      const name = `load-${d}`
      verdicts[name] = await verify(base, name, pushers.filter((p) => p.options.database === name))
    }
    const lost = Object.values(verdicts).reduce((n, v) => n + v.missing.length + v.framesDiffering, 0)
    const duplicated = Object.values(verdicts).reduce((n, v) => n + v.duplicates.length, 0)
    const unsound = Object.entries(verdicts).filter(([, v]) => v.integrity !== "ok").map(([k]) => k)
    const unexpected = pushers.flatMap((p) => p.stats.unexpected)
    const networkErrors = sum(pushers, (p) => p.stats.networkErrors)

    const acked = sum(pushers, (p) => p.stats.acked)
    const pushRequests = pushers.flatMap((p) => p.stats.pushRequestLatencies)
    const transactions = pushers.flatMap((p) => p.stats.latencies)
    const pulls = pushers.flatMap((p) => p.stats.pullLatencies)
    const result = {
      date: new Date().toISOString(),
      command: `npx tsx bench/load.ts ${args.join(" ")}`.trim(),
      machine: { node: process.version, cpus: Os.cpus().length, cpuModel: Os.cpus()[0]?.model, loadAverageAtStart: Os.loadavg()[0] },
      options: { clients, seconds, databases, pullShare, largeShare, check },
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
        fullRereads: sum(pushers, (p) => p.stats.pulls)
      },
      errors: {
        unexpectedAnswers: unexpected.length,
        networkErrors,
        pullErrors: pullErrors.length,
        examples: [...unexpected, ...pullErrors].slice(0, 5)
      },
      verification: {
        rows: Object.values(verdicts).reduce((n, v) => n + v.rows, 0),
        lostAcknowledged: lost,
        duplicatedRows: duplicated,
        integrityFailures: unsound
      },
      serverPeakRssMb: peakRssMb(server.child.pid),
      serverSideMs: serverTimes(log)
    }

    const dir = Path.join(import.meta.dirname, "results")
    Fs.mkdirSync(dir, { recursive: true })
    const file = Path.join(dir, `load-${result.date.replace(/[:.]/g, "-")}.json`)
    Fs.writeFileSync(file, JSON.stringify(result, null, 2) + "\n")
    console.log(JSON.stringify(result, null, 2))
    console.log(
      `\n${result.pushes.perSecond} pushes/s (acknowledged transactions), push request p50 ${result.pushes.requestLatencyMs.p50} ms ` +
        `p99 ${result.pushes.requestLatencyMs.p99} ms; ${result.pulls.perSecond} pulls/s p50 ${result.pulls.latencyMs.p50} ms ` +
        `p99 ${result.pulls.latencyMs.p99} ms; ${result.pushes.conflicts} conflicts; errors ${unexpected.length + networkErrors + pullErrors.length}; ` +
        `lost ${lost}, duplicated ${duplicated}\nwritten to ${Path.relative(process.cwd(), file)}`
    )
    const failed = unexpected.length + networkErrors + pullErrors.length + lost + duplicated + unsound.length > 0
    for (const p of pushers) p.close()
    process.exitCode = failed ? 1 : 0
  } finally {
    server.child.kill("SIGTERM")
    await server.exited
    Fs.rmSync(data, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
