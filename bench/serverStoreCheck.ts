/**
 * What the malformed-database check costs per push.
 *
 *   npx tsx bench/serverStoreCheck.ts [sizesMB=1,10] [pushes=40] [tables=1] [stores=memory,sqlite,main]
 *
 * For each store (memory, SQLite in a temp dir, SQLite checking on the main thread), database size and
 * check mode, a database of that size is built from a real SQLite replica (`tables` tables of equal
 * size, each with an index, ~1 KB rows), then `pushes` small commits (one row into the first table, as
 * a client syncing an edit does) are timed one by one. The difference between
 * `off` and a check mode is the check's cost: materialising the candidate and running the pragma.
 * CPU time counts every thread; the event-loop stall is what other requests wait behind. The SQLite
 * store runs the check on a worker thread, the memory store on the calling thread.
 */
import Database from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Layer from "effect/Layer"
import * as internalCore from "../src/internal/server/serverCore.js"
import * as internalSqlite from "../src/internal/server/serverSqlite.js"
import * as ServerStore from "../src/ServerStore.js"
import * as WalFrame from "../src/WalFrame.js"

const sizes = (process.argv[2] ?? "1,10").split(",").map(Number)
const pushes = Number(process.argv[3] ?? 40)
const tableCount = Number(process.argv[4] ?? 1)
const stores = (process.argv[5] ?? "memory,sqlite,main").split(",")
const modes: ReadonlyArray<ServerStore.IntegrityCheck> = ["off", "quick_check", "changed_tables", "integrity_check"]

const walFrames = (file: string): ReadonlyArray<WalFrame.Frame> =>
  Option.match(WalFrame.parse(new Uint8Array(fs.readFileSync(`${file}-wal`))), { onNone: () => [], onSome: (w) => w.frames })

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]

const run = (store: ServerStore.Service, sizeMb: number) =>
  Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-replica-"))
    try {
      const file = path.join(dir, "r.sqlite")
      fs.writeFileSync(file, yield* store.exportGeneration("bench", 1))
      const db = new Database(file)
      db.pragma("wal_autocheckpoint = 0")
      const names = Array.from({ length: tableCount }, (_, i) => (i === 0 ? "t" : `t${i}`))
      for (const name of names) {
        db.exec(`CREATE TABLE ${name} (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL); CREATE INDEX ${name}_k ON ${name} (k)`)
      }
      const rows = Math.ceil((sizeMb * 1024 * 1024) / 1000 / tableCount)
      const perTx = 1000
      for (const name of names) {
        const fill = db.prepare(`INSERT INTO ${name} (k, v) VALUES (hex(randomblob(8)), hex(randomblob(450)))`)
        for (let done = 0; done < rows; done += perTx) {
          db.transaction(() => {
            for (let i = 0; i < Math.min(perTx, rows - done); i++) fill.run()
          })()
        }
      }
      const insert = db.prepare("INSERT INTO t (k, v) VALUES (hex(randomblob(8)), hex(randomblob(450)))")
      let pushed = 0
      const pushNew = (frames: ReadonlyArray<WalFrame.Frame>) => Effect.gen(function*() {
        let baton: string | undefined
        while (pushed < frames.length) {
          const part = frames.slice(pushed, pushed + 1024)
          const r = yield* store.push("bench", 1, pushed + 1, pushed + 1 + part.length, part, baton)
          if (r._tag !== "Ok" || r.maxFrameNo !== pushed + part.length) throw new Error(`unexpected ${JSON.stringify(r)}`)
          baton = r.baton
          pushed += part.length
        }
      })
      yield* pushNew(walFrames(file))
      const pageCount = (db.pragma("page_count", { simple: true }) as number)
      const times: Array<number> = []
      // The longest stretch during a push in which the event loop could not run anything else.
      const busy: Array<number> = []
      const cpu: Array<number> = []
      for (let i = 0; i < pushes; i++) {
        insert.run()
        const frames = walFrames(file)
        const c0 = process.cpuUsage()
        // A 1 ms ticker: the longest gap between its ticks is the longest the server could not answer.
        let last = performance.now()
        let stall = 0
        const ticker = setInterval(() => {
          const now = performance.now()
          stall = Math.max(stall, now - last)
          last = now
        }, 1)
        const t0 = performance.now()
        yield* pushNew(frames)
        const t1 = performance.now()
        clearInterval(ticker)
        times.push(t1 - t0)
        busy.push(Math.max(stall, t1 - last))
        const c1 = process.cpuUsage(c0)
        cpu.push((c1.user + c1.system) / 1000)
      }
      db.close()
      times.sort((a, b) => a - b)
      cpu.sort((a, b) => a - b)
      return {
        cpu: percentile(cpu, 0.5),
        blocked: percentile(busy.sort((a, b) => a - b), 0.5),
        mb: ((pageCount * 4096) / 1024 / 1024).toFixed(1),
        median: percentile(times, 0.5),
        p90: percentile(times, 0.9),
        mean: times.reduce((a, b) => a + b, 0) / times.length
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

const main = Effect.gen(function*() {
  const lines: Array<string> = []
  // Wall time is what a client waits; CPU time is steadier on a shared machine.
  lines.push(`${tableCount} table(s) of equal size, each with an index; every push inserts one row into the first`)
  lines.push(`| store | db size | check | median ms/push | p90 | mean | median CPU ms/push | median longest event-loop stall ms/push |`)
  lines.push(`|---|---|---|---|---|---|---|---|`)
  for (const sizeMb of sizes) {
    for (const kind of ["memory", "sqlite", "sqlite, check on main thread"] as const) {
      if (!stores.includes(kind === "sqlite, check on main thread" ? "main" : kind)) continue
      for (const integrityCheck of modes) {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-store-"))
        // The third kind is the SQLite store without its check worker: what the worker saves the event loop.
        const layer = kind === "memory"
          ? ServerStore.layerMemory({ integrityCheck })
          : kind === "sqlite"
          ? ServerStore.layer({ directory: dir, integrityCheck })
          : Layer.scoped(
            ServerStore.ServerStore,
            internalCore.make(internalSqlite.make({ directory: dir, integrityCheck }), { integrityCheck })
          )
        const r = yield* Effect.flatMap(ServerStore.ServerStore, (store) => run(store, sizeMb)).pipe(
          Effect.provide(layer),
          Effect.scoped
        )
        fs.rmSync(dir, { recursive: true, force: true })
        const line = `| ${kind} | ${r.mb} MB | ${integrityCheck} | ${r.median.toFixed(2)} | ${r.p90.toFixed(2)} | ${r.mean.toFixed(2)} | ${r.cpu.toFixed(2)} | ${r.blocked.toFixed(2)} |`
        lines.push(line)
        console.log(line)
      }
    }
  }
  console.log(`\n${lines.join("\n")}`)
})

Effect.runPromise(main).catch((error) => {
  console.error(error)
  process.exit(1)
})
