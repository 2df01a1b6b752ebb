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
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import Database from "libsql"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { bootstrapBench } from "./bootstrap.js"
import { executeBench } from "./execute.js"
import { CREATE, INSERT, row } from "./rows.js"
import * as ServerProcess from "./serverProcess.js"
import { storageBench } from "./storage.js"
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


interface Line {
  readonly what: string
  readonly ms: number
  readonly note?: string
}

const main = async ({ http, scope, serverUrl, work }: ServerProcess.Alone) => {
  const server = { url: serverUrl }
  const lines: Array<Line> = []
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
  const open = (name: string, db: string) =>
    run(
      Layer.build(
        SyncDatabase.layer({ path: NodePath.join(work, name), url: `${server.url}/db/${db}` }).pipe(
          Layer.provide(Layer.succeedContext(http))
        )
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
    )
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

  // 2. the same rows through execute, in one multi-row statement (pushed below); execute and query per row
  // against raw better-sqlite3 are in section 7 (bench/execute.ts).
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

  // 5. a fresh replica of the same server database against the libSQL client (bench/bootstrap.ts);
  // storage and pulls of CHANGED rows at SIZES_MB (bench/storage.ts).
  await bootstrapBench({ serverUrl: server.url, http, work, rowsDatabase: "rows", rows: ROWS, repeat: 5, warmup: 2 }, lines)
  await storageBench({ serverUrl: server.url, http, work, scope }, lines)

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

  // 7. execute and query against raw better-sqlite3, capture overhead alone (bench/execute.ts).
  lines.push(...(await executeBench({ rows: ROWS })))

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
}

ServerProcess.exitWith(ServerProcess.withServer("bench", main))
