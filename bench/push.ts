/**
 * Push of N captured rows against a raw better-sqlite3 insert of the same rows and the libSQL client's push
 * of the same change on the same server, and the peak memory of pushing one large transaction.
 *
 *   npx tsx bench/push.ts [--push-rows 20000,100000] [--peak-rows 200000]     (starts its own server)
 *   npx tsx bench/push.ts --before DIR [--rounds 3] [--push-rows ...] [--peak-rows ...]
 *
 * `--before DIR` compares with another checkout of the project (DIR, with its node_modules): the bench of
 * each tree runs in a process of its own, alternately, `--rounds` times, and the table gives the median of
 * each figure for both (one sitting, so both see the same machine load).
 *
 * `npm run bench` runs it too (bench/run.ts, against its server). For each N: inserts, then an update of
 * one column of every row, then a delete of every row, each captured by one `execute` and pushed by one
 * `push`; the libSQL client (offline writes, `sync()`) runs the same statements against a database of its
 * own on the same server. The memory figure runs in a child process of its own, so the figures are that
 * client's alone: resident memory once the rows are written (idle), against the kernel's high-water mark
 * of resident memory during the push (`VmHWM`, reset just before it through `/proc/self/clear_refs`).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import Database from "libsql"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { bulkInsert, CREATE, INSERT, row } from "./rows.js"

export interface Line {
  readonly what: string
  readonly ms: number
  readonly note?: string
}


const time = async <A>(f: () => Promise<A> | A): Promise<[number, A]> => {
  const start = performance.now()
  const a = await f()
  return [performance.now() - start, a]
}

// The command from source (no build needed), or compiled when this file is (a CPU profile wants compiled
// names and lines: bench/pushProfile.ts); the server runs in a process of its own.
const COMPILED = import.meta.filename.endsWith(".js")
const BIN = NodePath.resolve(import.meta.dirname, "..", "src", COMPILED ? "bin.js" : "bin.ts")

/**
 * The `serve` binary on a loopback port with its data under `dir`; `nodeArgs` go to its node (a CPU profile),
 * `stderr` takes its log (a file descriptor; default: dropped).
 */
export const startServer = (dir: string, options?: { readonly nodeArgs?: ReadonlyArray<string>; readonly stderr?: number }) =>
  new Promise<{ url: string; child: ChildProcess.ChildProcess }>((resolve, reject) => {
    const child = ChildProcess.spawn(
      process.execPath,
      [...(options?.nodeArgs ?? []), ...(COMPILED ? [] : ["--import", "tsx"]), BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--data", dir],
      { stdio: ["ignore", "pipe", options?.stderr ?? "ignore"] }
    )
    let out = ""
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString()
      const m = /Listening on (http:\/\/\S+)/.exec(out)
      if (m) resolve({ url: m[1]!, child })
    })
    child.once("exit", (code) => reject(new Error(`server exited ${code}`)))
  })

/** A client of `url` in this process, closed with the returned `close`. */
const openClient = async (path: string, url: string) => {
  const scope = Effect.runSync(Scope.make())
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
  const db = await run(
    Layer.build(SyncDatabase.layer({ path, url }).pipe(Layer.provide(NodeHttpClient.layerUndici))).pipe(
      Effect.map(Context.get(SyncDatabase.SyncDatabase))
    )
  )
  return { db, run, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

const procStatus = (field: string) => {
  const line = Fs.readFileSync("/proc/self/status", "utf8").split("\n").find((l) => l.startsWith(`${field}:`))
  return line === undefined ? NaN : Number(line.split(/\s+/)[1]) * 1024
}

/** In a child process: write `n` rows, measure idle RSS, push, report the high-water mark. */
const peakChild = async (n: number, url: string, dir: string) => {
  const client = await openClient(NodePath.join(dir, "peak"), url)
  await client.run(client.db.execute(CREATE))
  await client.run(client.db.push)
  await client.run(client.db.execute(bulkInsert(n)))
  globalThis.gc?.()
  await new Promise((r) => setTimeout(r, 200))
  const idle = procStatus("VmRSS")
  Fs.writeFileSync("/proc/self/clear_refs", "5") // resets VmHWM to the current RSS
  const [ms] = await time(() => client.run(client.db.push))
  const peak = procStatus("VmHWM")
  const stats = await client.run(client.db.stats)
  await client.close()
  process.stdout.write(JSON.stringify({ idle, peak, ms, frames: stats.syncedFrame }) + "\n")
}

const peakMemory = (n: number, url: string, work: string): Promise<{ idle: number; peak: number; ms: number; frames: number }> =>
  new Promise((resolve, reject) => {
    const dir = Fs.mkdtempSync(NodePath.join(work, "peak-"))
    const child = ChildProcess.spawn(
      process.execPath,
      ["--expose-gc", "--import", "tsx", import.meta.filename, "--peak-child", String(n), url, dir],
      { stdio: ["ignore", "pipe", "inherit"] }
    )
    let out = ""
    child.stdout!.on("data", (c: Buffer) => (out += c.toString()))
    child.once("exit", (code) => {
      const last = out.trim().split("\n").pop() ?? ""
      if (code === 0 && last.startsWith("{")) resolve(JSON.parse(last))
      else reject(new Error(`peak-memory child exited ${code}: ${out}`))
    })
  })

/**
 * The push rows: for each N, a raw insert of N rows in one transaction (1.0), our push of N inserts,
 * updates of one column and deletes, the libSQL client's push of the same; then the peak memory of a push
 * of `peakRows` rows. `server` is the base URL of a running server (databases `push-*` are created).
 */
export const benchPush = async (options: {
  readonly server: string
  readonly work: string
  readonly rows: ReadonlyArray<number>
  readonly peakRows: number
}): Promise<ReadonlyArray<Line>> => {
  const lines: Array<Line> = []
  const tag = Date.now().toString(36)
  for (const n of options.rows) {
    // the reference every ratio divides by: the median of 3 fresh files
    const rawRuns: Array<number> = []
    for (let run = 0; run < 3; run++) {
      const rawN = new BetterSqlite3(NodePath.join(options.work, `raw-n-${n}-${tag}-${run}.db`))
      rawN.pragma("journal_mode = WAL")
      rawN.exec(CREATE)
      const insertN = rawN.prepare(INSERT)
      const [ms] = await time(() => rawN.transaction(() => { for (let i = 1; i <= n; i++) insertN.run(...row(i)) })())
      rawN.close()
      rawRuns.push(ms)
    }
    const rawMs = rawRuns.sort((a, b) => a - b)[1]!
    lines.push({ what: `raw: ${n} rows inserted in one transaction (1.0 of the next rows)`, ms: rawMs, note: "median of 3" })
    const ours = await openClient(NodePath.join(options.work, `push-${n}-${tag}`), `${options.server}/db/push-${n}-${tag}`)
    await ours.run(ours.db.execute(CREATE))
    await ours.run(ours.db.push)
    const lib = new Database(NodePath.join(options.work, `libsql-${n}-${tag}.db`), {
      syncUrl: `${options.server}/db/libsql-${n}-${tag}`,
      offline: true
    } as Database.Options)
    lib.exec(CREATE)
    lib.sync()
    const kinds = [["inserts", bulkInsert(n)], ["updates of one column", "UPDATE items SET value = value + 1"], [
      "deletes",
      "DELETE FROM items"
    ]] as const
    for (const [kind, statement] of kinds) {
      await ours.run(ours.db.execute(statement))
      // the client's own CPU time for the push (the server runs in a process of its own): what sets our
      // push apart from the libSQL client's, whose push is almost all the server's
      const cpu = process.cpuUsage()
      const [oursMs] = await time(() => ours.run(ours.db.push))
      const clientCpu = process.cpuUsage(cpu)
      lib.exec(statement)
      const [libMs] = await time(() => lib.sync())
      lines.push({
        what: `push of ${n} ${kind}`,
        ms: oursMs,
        note: `${(oursMs / rawMs).toFixed(2)}x raw, ${(oursMs / libMs).toFixed(2)}x libsql (${libMs.toFixed(0)} ms), ` +
          `client CPU ${((clientCpu.user + clientCpu.system) / 1000).toFixed(0)} ms`
      })
    }
    lib.close()
    await ours.close()
  }
  if (options.peakRows > 0) {
    const m = await peakMemory(options.peakRows, `${options.server}/db/push-peak-${tag}`, options.work)
    lines.push({
      what: `push of ${options.peakRows} inserts (one transaction): memory`,
      ms: m.ms,
      note: `idle client RSS ${(m.idle / 1e6).toFixed(0)} MB, peak during push ${(m.peak / 1e6).toFixed(0)} MB ` +
        `(${(m.peak / m.idle).toFixed(2)}x), ${m.frames} frames`
    })
  }
  return lines
}

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback
}

const standalone = async () => {
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bench-push-"))
  const server = await startServer(NodePath.join(work, "server"))
  try {
    const lines = await benchPush({
      server: server.url,
      work,
      rows: flag("push-rows", "20000,100000").split(",").filter((n) => n !== "").map(Number),
      peakRows: Number(flag("peak-rows", "200000"))
    })
    console.table(lines.map((l) => ({ measurement: l.what, ms: Number(l.ms.toFixed(1)), note: l.note ?? "" })))
  } finally {
    server.child.kill("SIGTERM")
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

/** One run of the push bench of the tree at `root` in a process of its own: its table's rows. */
type Rows = ReadonlyArray<{ readonly what: string; readonly ms: number; readonly note: string }>

const runTree = (root: string, args: ReadonlyArray<string>) =>
  new Promise<Rows>((resolve, reject) => {
    const child = ChildProcess.spawn(process.execPath, ["--import", "tsx", NodePath.join(root, "bench", "push.ts"), ...args], {
      cwd: root,
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    child.stdout!.on("data", (c: Buffer) => (out += c.toString()))
    child.once("exit", (code) => {
      if (code !== 0) return reject(new Error(`the bench of ${root} exited ${code}: ${out}`))
      // the rows of console.table: │ index │ 'measurement' │ ms │ 'note' │
      const rows = [...out.matchAll(/│[^│]*│\s*'([^']*)'\s*│\s*([\d.]+)\s*│\s*'([^']*)'/g)]
      resolve(rows.map((m) => ({ what: m[1]!, ms: Number(m[2]), note: m[3]! })))
    })
  })

const median = (values: ReadonlyArray<number>) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor((sorted.length - 1) / 2)]!
}

/** Ratios in a note (`2.17x raw, 1.50x libsql (426 ms)`), each figure by name. */
const ratios = (note: string) => ({
  raw: Number(/([\d.]+)x raw/.exec(note)?.[1] ?? NaN),
  libsql: Number(/([\d.]+)x libsql/.exec(note)?.[1] ?? NaN),
  cpu: Number(/client CPU ([\d.]+) ms/.exec(note)?.[1] ?? NaN)
})

const compare = async (before: string) => {
  const rounds = Number(flag("rounds", "3"))
  const args = ["--push-rows", flag("push-rows", "20000,100000"), "--peak-rows", flag("peak-rows", "0")]
  const after = NodePath.resolve(import.meta.dirname, "..")
  const runs: { readonly before: Array<Rows>; readonly after: Array<Rows> } = { before: [], after: [] }
  for (let round = 0; round < rounds; round++) {
    const load = Os.loadavg()[0]!.toFixed(1)
    console.error(`round ${round + 1}/${rounds} (load ${load})`)
    runs.before.push(await runTree(NodePath.resolve(before), args))
    runs.after.push(await runTree(after, args))
  }
  const summary = (tree: ReadonlyArray<Rows>, what: string) => {
    const lines = tree.map((rows) => rows.find((row) => row.what === what)).filter((row) => row !== undefined)
    if (lines.length === 0) return ""
    const ms = median(lines.map((l) => l.ms))
    const raw = median(lines.map((l) => ratios(l.note).raw))
    const lib = median(lines.map((l) => ratios(l.note).libsql))
    const cpu = median(lines.map((l) => ratios(l.note).cpu))
    return `${ms.toFixed(0)} ms` + (Number.isNaN(raw) ? "" : `, ${raw.toFixed(2)}x raw`) +
      (Number.isNaN(lib) ? "" : `, ${lib.toFixed(2)}x libsql`) + (Number.isNaN(cpu) ? "" : `, client CPU ${cpu.toFixed(0)} ms`)
  }
  const names = runs.after[0]!.map((row) => row.what)
  console.log(`medians of ${rounds} alternating runs of each tree (before: ${before})`)
  console.table(names.map((what) => ({ measurement: what, before: summary(runs.before, what), after: summary(runs.after, what) })))
}

if (process.argv[1] !== undefined && NodePath.resolve(process.argv[1]) === import.meta.filename) {
  const child = process.argv.indexOf("--peak-child")
  const before = process.argv.indexOf("--before")
  const main = child >= 0
    ? peakChild(Number(process.argv[child + 1]), process.argv[child + 2]!, process.argv[child + 3]!)
    : before >= 0
    ? compare(process.argv[before + 1]!)
    : standalone()
  main.then(() => process.exit(0), (error) => {
    console.error(error)
    process.exit(1)
  })
}
