/**
 * A fresh replica of the same server database, this client against the real libSQL client (called by
 * `bench/run.ts`; also runs alone, with its own server and rows):
 *
 *   npx tsx bench/bootstrap.ts [--rows 10000] [--repeat 5] [--warmup 3] [--steps] [--before DIR]
 *
 * Both sides start from nothing on disk and end holding the server's `rows` rows, counted by a query:
 * - this client: `SyncDatabase.layer` built on a new path (bootstrap: the head snapshot, both local
 *   copies, the metadata, the copies opened with capture installed), then `pull`, then the count, then the
 *   layer's scope closed (both copies closed, the clean close recorded);
 * - libSQL: `new Database(path, { syncUrl, offline: true })`, `sync()`, the count, `close()`.
 * After `--warmup` rounds (default 3) whose figures are dropped, each round runs every side once, the order
 * rotated round by round (each side goes first equally often), with a short pause between runs; each
 * side's median is reported, with the CPU time of ours.
 * `--before DIR`: the same client from another checkout of this repository (say, a commit before a change)
 * runs in the rotation too, on the same server, so that both figures come from one sitting. `--steps` adds
 * one more run of ours through a counting proxy: the time of each engine step (its span) and every HTTP
 * request either client makes.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import type { HttpClient } from "@effect/platform/HttpClient"
import Database from "libsql"
import * as ChildProcess from "node:child_process"
import * as Http from "node:http"
import * as NodePath from "node:path"
import * as Url from "node:url"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { bulkInsert, CREATE } from "./rows.js"
import * as ServerProcess from "./serverProcess.js"
import type { Line } from "./storage.js"

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

/** What run.ts shares with this section. */
export interface Bench {
  readonly serverUrl: string
  readonly http: Context.Context<HttpClient>
  readonly work: string
  /** A server database already holding `rows` rows of `items` (bench/rows.ts). */
  readonly rowsDatabase: string
  readonly rows: number
  readonly repeat: number
  /** Rounds run before the counted ones, whose figures are dropped. */
  readonly warmup: number
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** A spans' recorder wrapping the current tracer: every span's name, start and duration. */
const recorder = () => {
  const spans: Array<{ name: string; depth: number; start: number; ms: number }> = []
  const depthOf = new WeakMap<object, number>()
  const wrap = (inner: Tracer.Tracer) =>
    Tracer.make({
      context: (f, fiber) => inner.context(f, fiber),
      span: (name, parent, context, links, startTime, kind, options) => {
        const span = inner.span(name, parent, context, links, startTime, kind, options)
        const depth = parent._tag === "Some" ? (depthOf.get(parent.value) ?? -1) + 1 : 0
        depthOf.set(span, depth)
        const entry = { name, depth, start: Number(startTime) / 1e6, ms: NaN }
        spans.push(entry)
        const end = span.end.bind(span)
        span.end = (endTime, exit) => {
          entry.ms = Number(endTime - startTime) / 1e6
          end(endTime, exit)
        }
        return span
      }
    })
  return { spans, wrap }
}

/** A proxy in front of `target` counting the requests that pass (method and path). */
const countingProxy = (target: string) =>
  new Promise<{ url: string; requests: Array<string>; close: () => void }>((resolve) => {
    const to = new URL(target)
    const requests: Array<string> = []
    const server = Http.createServer((req, res) => {
      const started = performance.now()
      const upstream = Http.request(
        { host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers)
          answer.pipe(res)
          answer.on("end", () =>
            requests.push(`${req.method} ${req.url} -> ${answer.statusCode} (${(performance.now() - started).toFixed(1)} ms)`))
        }
      )
      req.pipe(upstream)
    })
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port
      resolve({ url: `http://127.0.0.1:${port}`, requests, close: () => server.close() })
    })
  })

/** Ours: a new local database on `name`, then `pull`, then the count, then the close. */
const freshOurs = async (
  bench: Bench,
  url: string,
  name: string,
  tracer?: (t: Tracer.Tracer) => Tracer.Tracer,
  module: typeof SyncDatabase = SyncDatabase
) => {
  const scope = await Effect.runPromise(Scope.make(ExecutionStrategy.sequential))
  const program = Effect.gen(function*() {
    const db = yield* Layer.buildWithScope(
      module.layer({ path: NodePath.join(bench.work, name), url: `${url}/db/${bench.rowsDatabase}` }).pipe(
        Layer.provide(Layer.succeedContext(bench.http))
      ),
      scope
    ).pipe(Effect.map(Context.get(module.SyncDatabase as typeof SyncDatabase.SyncDatabase)))
    yield* db.pull
    const rows = yield* db.query<{ c: number }>("SELECT count(*) AS c FROM items")
    if (rows[0].c !== bench.rows) return yield* Effect.dieMessage(`pulled ${rows[0].c} rows`)
  })
  // Closed inside the timing, as libSQL's figure includes its close(): both copies closed and the clean
  // close recorded in the metadata.
  const closed = Effect.ensuring(program, Scope.close(scope, Exit.void))
  const cpu = process.cpuUsage()
  const start = performance.now()
  await Effect.runPromise(
    tracer === undefined ? closed : Effect.flatMap(Effect.tracer, (t) => Effect.withTracer(closed, tracer(t)))
  )
  const ms = performance.now() - start
  const used = process.cpuUsage(cpu)
  return { ms, cpuMs: (used.user + used.system) / 1000 }
}

/** Theirs: the libSQL client's bootstrap and sync on a new path, then the count, then close. */
const freshLibsql = (bench: Bench, url: string, name: string) => {
  const cpu = process.cpuUsage()
  const start = performance.now()
  const lib = new Database(NodePath.join(bench.work, name), { syncUrl: `${url}/db/${bench.rowsDatabase}`, offline: true } as Database.Options)
  lib.sync()
  const [{ c }] = lib.prepare("SELECT count(*) AS c FROM items").all() as Array<{ c: number }>
  lib.close()
  const ms = performance.now() - start
  const used = process.cpuUsage(cpu)
  if (c !== bench.rows) throw new Error(`libsql pulled ${c} rows`)
  return { ms, cpuMs: (used.user + used.system) / 1000 }
}

/**
 * The fresh-replica figures (and, with `steps`, the per-step breakdown), appended to `lines`. `before`: the
 * `SyncDatabase` module of another checkout, measured in the same rotation.
 */
export const bootstrapBench = async (bench: Bench, lines: Array<Line>, steps = false, before?: typeof SyncDatabase) => {
  const ours: Array<{ ms: number; cpuMs: number }> = []
  const earlier: Array<{ ms: number; cpuMs: number }> = []
  const theirs: Array<{ ms: number; cpuMs: number }> = []
  const sides: Array<(i: number) => Promise<void>> = [
    async (i) => void ours.push(await freshOurs(bench, bench.serverUrl, `boot-ours-${i}`)),
    async (i) => void theirs.push(freshLibsql(bench, bench.serverUrl, `boot-libsql-${i}.db`)),
    ...(before === undefined ? [] : [async (i: number) => void earlier.push(await freshOurs(bench, bench.serverUrl, `boot-before-${i}`, undefined, before))])
  ]
  // Warm-up rounds first, not counted (the JIT's first compilations of either client's JavaScript, the
  // server's caches); then each round runs every side once, the order rotated each round so that each goes
  // first, second (and third) equally often, with a pause between runs so that none pays for what the run
  // before it left behind (the server still logging it, the disk still writing back its files).
  const pause = () => new Promise((resolve) => setTimeout(resolve, 10))
  for (let i = -bench.warmup; i < bench.repeat; i++) {
    const first = ((i % sides.length) + sides.length) % sides.length
    for (let k = 0; k < sides.length; k++) {
      await sides[(first + k) % sides.length](i)
      await pause()
    }
    if (i < 0) {
      ours.length = 0
      earlier.length = 0
      theirs.length = 0
    }
  }
  const libsql = median(theirs.map((r) => r.ms))
  // Each round's ratio too: runs of one round are seconds apart at most, so a load that changes over the
  // sitting moves both sides of a ratio alike.
  const line = (what: string, runs: ReadonlyArray<{ ms: number; cpuMs: number }>): Line => ({
    what,
    ms: median(runs.map((r) => r.ms)),
    note: `${(median(runs.map((r) => r.ms)) / libsql).toFixed(2)}x the libsql client (${libsql.toFixed(1)} ms); ` +
      `median of the rounds' ratios ${median(runs.map((r, i) => r.ms / theirs[i].ms)).toFixed(2)}x; ` +
      `CPU ${median(runs.map((r) => r.cpuMs)).toFixed(1)} ms (libsql ${median(theirs.map((r) => r.cpuMs)).toFixed(1)} ms); ` +
      `medians of ${bench.repeat}`
  })
  lines.push(line(`fresh replica: bootstrap + first pull of ${bench.rows} rows (same server database as libsql)`, ours))
  if (before !== undefined) {
    lines.push(line("  the same, --before checkout", earlier))
    lines.push({
      what: "  this checkout / the --before checkout",
      ms: NaN,
      note: `median of the rounds' ratios ${median(ours.map((r, i) => r.ms / earlier[i].ms)).toFixed(2)}x (time), ` +
        `${median(ours.map((r, i) => r.cpuMs / earlier[i].cpuMs)).toFixed(2)}x (CPU)`
    })
  }
  if (!steps) return
  const proxy = await countingProxy(bench.serverUrl)
  try {
    const rec = recorder()
    const { ms } = await freshOurs(bench, proxy.url, "boot-steps-ours", rec.wrap)
    const t0 = Math.min(...rec.spans.map((s) => s.start))
    console.log(`\nours through the proxy: ${ms.toFixed(1)} ms; spans (start offset, duration):`)
    for (const s of rec.spans) {
      console.log(`${"  ".repeat(s.depth)}${s.name}  +${(s.start - t0).toFixed(1)} ms  ${s.ms.toFixed(1)} ms`)
    }
    console.log("requests:")
    for (const r of proxy.requests.splice(0)) console.log(`  ${r}`)
    // libsql's sync blocks its thread: run it in a child process so this one's proxy can answer.
    const script = `import Database from "libsql"; const s = performance.now(); ` +
      `const db = new Database(${JSON.stringify(NodePath.join(bench.work, "boot-steps-libsql.db"))}, ` +
      `{ syncUrl: ${JSON.stringify(`${proxy.url}/db/${bench.rowsDatabase}`)}, offline: true }); db.sync(); ` +
      `const c = db.prepare("SELECT count(*) AS c FROM items").get().c; db.close(); console.log(c, performance.now() - s)`
    const out = await new Promise<string>((resolve, reject) =>
      ChildProcess.execFile(process.execPath, ["--input-type=module", "-e", script], { cwd: NodePath.resolve(import.meta.dirname, "..") }, (error, stdout) =>
        error ? reject(error) : resolve(stdout))
    )
    const [count, libMs] = out.trim().split(" ").map(Number)
    if (count !== bench.rows) throw new Error(`libsql pulled ${count} rows`)
    console.log(`libsql through the proxy (in a child process): ${libMs.toFixed(1)} ms; requests:`)
    for (const r of proxy.requests) console.log(`  ${r}`)
  } finally {
    proxy.close()
  }
}

/**
 * The rows of `--rows` pushed to `--url` by a writer of this client in a process of its own: the measured
 * runs of this client start from a module no other `SyncDatabase` has run in (in the bench's process, a
 * writer's earlier work made the same code about a tenth slower, measured by swapping the checkouts of
 * `--before`), as in an app that opens a new replica.
 */
const writeRows = async () => {
  const scope = await Effect.runPromise(Scope.make())
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
  const writer = await run(
    Layer.build(
      SyncDatabase.layer({ path: flag("path", ""), url: flag("url", "") }).pipe(Layer.provide(NodeHttpClient.layerUndici))
    ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
  )
  await run(writer.execute(CREATE))
  await run(writer.execute(bulkInsert(Number(flag("rows", "10000")))))
  await run(writer.push)
  await Effect.runPromise(Scope.close(scope, Exit.void))
}

// Alone: a server of its own, a database of `--rows` rows pushed by this client (from another process),
// then the section.
if (process.argv.includes("--write-rows")) {
  ServerProcess.exitWith(writeRows())
} else {
  ServerProcess.runAlone(import.meta.url, "bootstrap", async ({ http, serverUrl, work }) => {
    const rows = Number(flag("rows", "10000"))
    await new Promise<void>((resolve, reject) =>
      ChildProcess.execFile(
        process.execPath,
        [...process.execArgv, Url.fileURLToPath(import.meta.url), "--write-rows", "--rows", String(rows), "--path",
          NodePath.join(work, "writer"), "--url", `${serverUrl}/db/rows`],
        (error) => error ? reject(error) : resolve()
      )
    )
    const lines: Array<Line> = []
    const beforeDir = flag("before", "")
    const before = beforeDir === ""
      ? undefined
      : await import(Url.pathToFileURL(NodePath.resolve(beforeDir, "src", "SyncDatabase.ts")).href) as typeof SyncDatabase
    await bootstrapBench(
      { serverUrl, http, work, rowsDatabase: "rows", rows, repeat: Number(flag("repeat", "5")), warmup: Number(flag("warmup", "3")) },
      lines,
      process.argv.includes("--steps"),
      before
    )
    console.table(lines.map((l) => ({ measurement: l.what, ms: Number(l.ms.toFixed(1)), note: l.note ?? "" })))
  })
}
