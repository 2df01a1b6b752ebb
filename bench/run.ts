/**
 * `npm run bench` — the client engine measured in one run against a real server process (the
 * `effect-sqlite-sync serve` binary, embedded SQLite store, default quick_check) on loopback.
 *
 *   npx tsx bench/run.ts [--rows 10000] [--sizes 1,10,64,100] [--changed 100] [--updates 3000] [--push-rows 20000,100000]
 *     [--peak-rows 200000]
 *
 * Rows: (id INTEGER PRIMARY KEY, name TEXT, value REAL, payload TEXT of 100 chars). Every figure is one
 * measurement (the baseline: the median of 5), reported as a ratio to the baseline: a raw better-sqlite3
 * transaction inserting the same rows. Results go to bench/results/<timestamp>.json.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import Database from "libsql"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as SqlClient from "@effect/sql/SqlClient"
import * as ChangeCapture from "../src/ChangeCapture.js"
import * as Executor from "../src/internal/sqlite/executor.js"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as WalFrame from "../src/WalFrame.js"
import { benchPush } from "./push.js"

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}
const ROWS = Number(flag("rows", "10000"))
const SIZES_MB = flag("sizes", "1,10,64,100").split(",").map(Number)
const UPDATES = Number(flag("updates", "3000"))
const CHANGED = Number(flag("changed", "100"))
const PUSH_ROWS = flag("push-rows", "20000,100000").split(",").filter((n) => n !== "").map(Number)

const BIN = NodePath.resolve(import.meta.dirname, "..", "bin", "effect-sqlite-sync.js")
const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bench-"))

const startServer = () =>
  new Promise<{ url: string; child: ChildProcess.ChildProcess }>((resolve, reject) => {
    const child = ChildProcess.spawn(
      process.execPath,
      [BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--data", NodePath.join(work, "server")],
      { stdio: ["ignore", "pipe", "ignore"] }
    )
    let out = ""
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString()
      const m = /Listening on (http:\/\/\S+)/.exec(out)
      if (m) resolve({ url: m[1], child })
    })
    child.once("exit", (code) => reject(new Error(`server exited ${code}`)))
  })

/** Bytes this process has handed to write(2) so far (Linux `/proc/self/io`), NaN elsewhere. */
const writtenBytes = () => {
  try {
    const line = Fs.readFileSync("/proc/self/io", "utf8").split("\n").find((l) => l.startsWith("wchar:"))
    return line === undefined ? NaN : Number(line.split(/\s+/)[1])
  } catch {
    return NaN
  }
}

/** Bytes of every local file of the database at `path` (copies, WALs, metadata). */
const localBytes = (path: string) => {
  const dir = NodePath.dirname(path)
  const name = NodePath.basename(path)
  return Fs.readdirSync(dir).filter((f) => f.startsWith(`${name}-`)).reduce((n, f) => n + Fs.statSync(NodePath.join(dir, f)).size, 0)
}

const time = async <A>(f: () => Promise<A> | A): Promise<[number, A]> => {
  const start = performance.now()
  const a = await f()
  return [performance.now() - start, a]
}

const CREATE = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, value REAL, payload TEXT)"
const row = (i: number) => [i, `name-${i}`, i * 0.5, String(i).padStart(100, "x")] as const
const INSERT = "INSERT INTO items (id, name, value, payload) VALUES (?, ?, ?, ?)"

interface Line {
  readonly what: string
  readonly ms: number
  readonly note?: string
}

const main = async () => {
  const server = await startServer()
  const lines: Array<Line> = []
  const scope = Effect.runSync(Scope.make())
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
  const http = await run(Layer.build(NodeHttpClient.layerUndici))
  const open = (name: string, db: string) =>
    run(
      Layer.build(
        SyncDatabase.layer({ path: NodePath.join(work, name), url: `${server.url}/db/${db}` }).pipe(
          Layer.provide(Layer.succeedContext(http))
        )
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
    )
  try {
    // 1. baseline: raw better-sqlite3, one transaction of ROWS prepared inserts (WAL, like every copy here);
    // the median of 5 runs on fresh files, since every ratio below divides by it.
    const baselineRuns: Array<number> = []
    for (let run = 0; run < 5; run++) {
      const raw = new BetterSqlite3(NodePath.join(work, `raw-${run}.db`))
      raw.pragma("journal_mode = WAL")
      raw.exec(CREATE)
      const insert = raw.prepare(INSERT)
      const [ms] = await time(() => raw.transaction(() => { for (let i = 1; i <= ROWS; i++) insert.run(...row(i)) })())
      raw.close()
      baselineRuns.push(ms)
    }
    const baseline = baselineRuns.sort((a, b) => a - b)[2]
    lines.push({ what: `baseline: better-sqlite3, ${ROWS} rows in one transaction`, ms: baseline, note: "median of 5" })

    const rawAuto = new BetterSqlite3(NodePath.join(work, "raw-auto.db"))
    rawAuto.pragma("journal_mode = WAL")
    rawAuto.exec(CREATE)
    const insertAuto = rawAuto.prepare(INSERT)
    const [autoMs] = await time(() => { for (let i = 1; i <= ROWS; i++) insertAuto.run(...row(i)) })
    rawAuto.close()
    lines.push({ what: `better-sqlite3, ${ROWS} rows, one transaction each`, ms: autoMs })

    // 2. the same rows through execute: one statement per row, and one multi-row statement.
    const perRow = await open("per-row", "per-row")
    await run(perRow.execute(CREATE))
    const [perRowMs] = await time(() =>
      run(Effect.forEach(Array.from({ length: ROWS }, (_, i) => i + 1), (i) => perRow.execute(INSERT, row(i)), { discard: true })))
    lines.push({ what: `execute, ${ROWS} rows, one transaction each (capture)`, ms: perRowMs })

    const writer = await open("writer", "rows")
    await run(writer.execute(CREATE))
    const bulk = `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${ROWS}) ` +
      "INSERT INTO items SELECT i, 'name-' || i, i * 0.5, substr(replace(hex(zeroblob(100)), '0', 'x'), 1, 100 - length(i)) || i FROM n"
    const [bulkMs] = await time(() => run(writer.execute(bulk)))
    lines.push({ what: `execute, ${ROWS} rows in one statement (capture)`, ms: bulkMs })

    // 3. push of them.
    const [pushMs] = await time(() => run(writer.push))
    const pushed = await run(writer.stats)
    lines.push({ what: `push of ${ROWS} rows`, ms: pushMs, note: `${pushed.syncedFrame} frames, ${(pushed.bytesSent / 1e6).toFixed(1)} MB` })

    // 4. a fresh replica: bootstrap + pull.
    const [freshMs] = await time(async () => {
      const fresh = await open("fresh", "rows")
      await run(fresh.pull)
      return fresh
    })
    lines.push({ what: `fresh replica: bootstrap + pull of ${ROWS} rows`, ms: freshMs })

    // 5. write-blocked time of a pull bringing CHANGED changed rows, on databases of SIZES_MB.
    const pullTimes = new Map<number, number>()
    for (const mb of SIZES_MB) {
      const name = `big-${mb}`
      const remote = await run(
        SyncRemote.makeHttp({ url: `${server.url}/db/${name}` }).pipe(Effect.provide(http))
      )
      // The big database is written by a raw replica (no capture) and pushed as frames.
      const base = await run(Effect.flatMap(remote.info, (i) => remote.export(i.generation)))
      const file = NodePath.join(work, `${name}.replica`)
      Fs.writeFileSync(file, base)
      const replica = new BetterSqlite3(file)
      replica.pragma("wal_autocheckpoint = 0")
      replica.pragma("journal_mode = WAL")
      let pushedFrames = 0
      const pushReplica = async () => {
        const wal = Option.getOrThrow(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${file}-wal`))))
        const frames = wal.frames.slice(pushedFrames).map((f) => ({ ...f, page: Uint8Array.from(f.page) }))
        const result = await run(remote.push(1, pushedFrames + 1, pushedFrames + 1 + frames.length, frames))
        if (result._tag !== "Ok") throw new Error(`replica push: ${result._tag}`)
        pushedFrames += frames.length
      }
      replica.exec("CREATE TABLE blobs (id INTEGER PRIMARY KEY, n INTEGER, data BLOB)")
      const count = Math.ceil((mb * 1024 * 1024) / 4096)
      const insertBlob = replica.prepare("INSERT INTO blobs (id, n, data) VALUES (?, 0, randomblob(3900))")
      replica.transaction(() => { for (let i = 1; i <= count; i++) insertBlob.run(i) })()
      await pushReplica()
      // Opening a new path brings the remote's current state; the pull after it finds nothing new.
      const [setupMs, client] = await time(async () => {
        const opened = await open(`client-${mb}`, name)
        await run(opened.pull)
        return opened
      })
      await run(client.execute("CREATE TABLE IF NOT EXISTS local_notes (id INTEGER PRIMARY KEY, body TEXT)"))
      await run(client.execute("INSERT INTO local_notes (body) VALUES ('pending while pulling')"))
      const update = replica.prepare("UPDATE blobs SET n = n + 1 WHERE id = ?")
      replica.transaction(() => { for (let i = 0; i < CHANGED; i++) update.run(1 + Math.floor((i * count) / CHANGED)) })()
      await pushReplica()
      // A write issued during the pull waits for the copy: its latency is the blocked time seen by a writer.
      const writtenBefore = writtenBytes()
      const [pullMs] = await time(() => run(client.pull))
      const pullWritten = writtenBytes() - writtenBefore
      const stats = await run(client.stats)
      const blocked = Option.getOrElse(stats.lastWriteBlockedMs, () => NaN)
      replica.close()
      const size = Fs.statSync(NodePath.join(work, `client-${mb}-draft`)).size
      const atRest = localBytes(NodePath.join(work, `client-${mb}`))
      pullTimes.set(mb, pullMs)
      lines.push({ what: `${mb} MB: bootstrap + first pull`, ms: setupMs })
      lines.push({
        what: `${mb} MB: pull of ${CHANGED} changed rows (total)`,
        ms: pullMs,
        note: `${(pullWritten / 1e6).toFixed(2)} MB written by the process during it`
      })
      lines.push({
        what: `${mb} MB: writes blocked during that pull (2b+2c)`,
        ms: blocked,
        note: `draft file ${(size / 1e6).toFixed(1)} MB; all local files ${(atRest / 1e6).toFixed(1)} MB (${(atRest / size).toFixed(2)}x)`
      })
    }

    if (SIZES_MB.length > 1) {
      const small = Math.min(...SIZES_MB)
      for (const mb of SIZES_MB.filter((m) => m !== small)) {
        lines.push({
          what: `pull of ${CHANGED} changed rows: ${mb} MB against ${small} MB`,
          ms: NaN,
          note: `${(pullTimes.get(mb)! / pullTimes.get(small)!).toFixed(2)}x the time`
        })
      }
    }

    // 6. local storage after UPDATES single-row updates of a 16 KB database (pushed every 3), at a third
    // of them and at the end: it follows the database, not its history.
    {
      const path = NodePath.join(work, "updates")
      const db = await open("updates", "updates")
      await run(db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, pad TEXT)"))
      await run(db.execute("INSERT INTO t VALUES (1, 0, ?)", ["x".repeat(6000)]))
      await run(db.push)
      const sizes: Array<number> = []
      const [updatesMs] = await time(async () => {
        for (let i = 1; i <= UPDATES; i++) {
          await run(db.execute("UPDATE t SET n = n + 1 WHERE id = 1"))
          if (i % 3 === 0) await run(db.push)
          if (i === Math.floor(UPDATES / 3) || i === UPDATES) sizes.push(localBytes(path))
        }
      })
      const stats = await run(db.stats)
      lines.push({
        what: `${UPDATES} single-row updates of a 16 KB database, pushed every 3`,
        ms: updatesMs,
        note: `local files ${(sizes[0] / 1e6).toFixed(2)} MB after ${Math.floor(UPDATES / 3)}, ${(sizes[1] / 1e6).toFixed(2)} MB after ${UPDATES} (${stats.syncedFrame} frames synced)`
      })
    }

    // 7. the real libSQL offline client pushing and pulling the same rows through the same server.
    const libA = new Database(NodePath.join(work, "libsql-a.db"), { syncUrl: `${server.url}/db/libsql`, offline: true } as Database.Options)
    libA.exec(CREATE)
    const libInsert = libA.prepare(INSERT)
    const [libWriteMs] = await time(() => libA.transaction(() => { for (let i = 1; i <= ROWS; i++) libInsert.run(...row(i)) })())
    lines.push({ what: `libsql: ${ROWS} rows in one transaction`, ms: libWriteMs })
    const [libPushMs] = await time(() => libA.sync())
    lines.push({ what: `libsql: push of ${ROWS} rows`, ms: libPushMs })
    const [libPullMs] = await time(() => {
      const libB = new Database(NodePath.join(work, "libsql-b.db"), { syncUrl: `${server.url}/db/libsql`, offline: true } as Database.Options)
      libB.sync()
      const [{ c }] = libB.prepare("SELECT count(*) AS c FROM items").all() as Array<{ c: number }>
      libB.close()
      if (c !== ROWS) throw new Error(`libsql pulled ${c} rows`)
    })
    lines.push({ what: `libsql: fresh replica bootstrap + pull of ${ROWS} rows`, ms: libPullMs })
    libA.close()

    // 7. capture overhead alone: raw better-sqlite3 statements on a file with the capture triggers installed
    // (through the engine's own connection) against the same statements without them.
    const captureRaw = async (name: string, withCapture: boolean) => {
      const scopeC = Effect.runSync(Scope.make())
      const client = await Effect.runPromise(Scope.extend(Executor.makeClient({ filename: NodePath.join(work, name) }), scopeC))
      await Effect.runPromise(client.unsafe(CREATE).raw)
      if (withCapture) await Effect.runPromise(Effect.provideService(ChangeCapture.install, SqlClient.SqlClient, client))
      const db = Executor.handleOf(client)!
      const insert = db.prepare(INSERT)
      const [txMs] = await time(() => db.transaction(() => { for (let i = 1; i <= ROWS; i++) insert.run(...row(i)) })())
      db.exec("DELETE FROM items")
      const [eachMs] = await time(() => { for (let i = 1; i <= ROWS; i++) insert.run(...row(i)) })
      await Effect.runPromise(Scope.close(scopeC, Exit.void))
      return { txMs, eachMs }
    }
    const plainRaw = await captureRaw("capture-off.db", false)
    const captured = await captureRaw("capture-on.db", true)
    lines.push({ what: `capture overhead: ${ROWS} raw inserts in one transaction, triggers on`, ms: captured.txMs, note: `${(captured.txMs / plainRaw.txMs).toFixed(2)}x the same without triggers (${plainRaw.txMs.toFixed(1)} ms)` })
    lines.push({ what: `capture overhead: ${ROWS} raw inserts, one transaction each, triggers on`, ms: captured.eachMs, note: `${(captured.eachMs / plainRaw.eachMs).toFixed(2)}x the same without triggers (${plainRaw.eachMs.toFixed(1)} ms)` })
    lines.push({ what: `execute vs raw, one transaction each`, ms: perRowMs, note: `${(perRowMs / autoMs).toFixed(2)}x raw better-sqlite3 doing the same` })
    lines.push({ what: `execute vs raw, ${ROWS} rows in one statement`, ms: bulkMs, note: `${(bulkMs / baseline).toFixed(2)}x raw (one transaction of prepared inserts)` })

    // 8. push of N captured rows (inserts, updates, deletes) against raw and the libSQL client; peak memory
    lines.push(...await benchPush({ server: server.url, work, rows: PUSH_ROWS, peakRows: Number(flag("peak-rows", "200000")) }))

    const table = lines.map((l) => ({
      measurement: l.what,
      ms: Number.isFinite(l.ms) ? Number(l.ms.toFixed(1)) : l.ms,
      "× baseline": Number((l.ms / baseline).toFixed(1)),
      note: l.note ?? ""
    }))
    console.table(table)
    const results = NodePath.resolve(import.meta.dirname, "results")
    Fs.mkdirSync(results, { recursive: true })
    const out = NodePath.join(results, `${new Date().toISOString().replace(/[:.]/g, "-")}.json`)
    Fs.writeFileSync(out, JSON.stringify({
      rows: ROWS,
      sizesMb: SIZES_MB,
      changed: CHANGED,
      node: process.version,
      cpus: Os.cpus().length,
      baselineMs: baseline,
      results: table
    }, null, 2))
    console.log(`written ${NodePath.relative(process.cwd(), out)}`)
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    server.child.kill("SIGTERM")
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
