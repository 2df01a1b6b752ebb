/**
 * CPU time of each commit check on one database, on one thread, without the store around it: what the
 * check worker spends per push in each `--integrity-check` mode.
 *
 *   npx tsx bench/checkPlans.ts [sizeMB=10] [tables=1,4] [repeats=15]
 *
 * A database of `sizeMB` is built from `tables` tables of equal size (each with an index, ~1 KB rows);
 * one row is inserted into the first table, and the plan each mode runs on that commit
 * (`changedTables.place` + `planOf` for `changed_tables`) is timed `repeats` times (median CPU ms).
 * CPU time is steadier than wall time on a shared machine.
 */
import Database from "better-sqlite3"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ChangedTables from "../src/internal/server/changedTables.js"
import * as WalFrame from "../src/WalFrame.js"

const sizeMb = Number(process.argv[2] ?? 10)
const tableCounts = (process.argv[3] ?? "1,4").split(",").map(Number)
const repeats = Number(process.argv[4] ?? 15)

const median = (xs: Array<number>) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const cpuMs = (f: () => void) => {
  const samples: Array<number> = []
  for (let i = 0; i < repeats; i++) {
    const c0 = process.cpuUsage()
    f()
    const c = process.cpuUsage(c0)
    samples.push((c.user + c.system) / 1000)
  }
  return median(samples)
}

const lines = ["| tables | db size | check | pragmas | median CPU ms |", "|---|---|---|---|---|"]
for (const tables of tableCounts) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-plans-"))
  try {
    const file = path.join(dir, "db")
    const db = new Database(file)
    db.pragma("journal_mode = WAL")
    db.pragma("wal_autocheckpoint = 0")
    const names = Array.from({ length: tables }, (_, i) => (i === 0 ? "t" : `t${i}`))
    const rows = Math.ceil((sizeMb * 1024 * 1024) / 1000 / tables)
    for (const name of names) {
      db.exec(`CREATE TABLE ${name} (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL); CREATE INDEX ${name}_k ON ${name} (k)`)
      const fill = db.prepare(`INSERT INTO ${name} (k, v) VALUES (hex(randomblob(8)), hex(randomblob(450)))`)
      db.transaction(() => {
        for (let i = 0; i < rows; i++) fill.run()
      })()
    }
    db.pragma("wal_checkpoint(TRUNCATE)")
    const head = new Uint8Array(fs.readFileSync(file))
    const schema = db.prepare<[], ChangedTables.SchemaEntry>(ChangedTables.SCHEMA_QUERY).all()
    db.prepare("INSERT INTO t (k, v) VALUES (hex(randomblob(8)), hex(randomblob(450)))").run()
    const parsed = WalFrame.parse(new Uint8Array(fs.readFileSync(`${file}-wal`)))
    const frames = parsed._tag === "Some" ? parsed.value.frames : []
    const readHead = (pgno: number) =>
      pgno * WalFrame.PAGE_SIZE <= head.byteLength
        ? head.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
        : undefined
    const mb = (head.byteLength / 1024 / 1024).toFixed(1)
    const run = (plan: ReadonlyArray<string>) => () => {
      for (const pragma of plan) db.pragma(pragma)
    }
    const changed = ChangedTables.planOf(ChangedTables.place(frames, schema, readHead))
    const rowsOut: Array<[string, ReadonlyArray<string>, number]> = [
      ["quick_check", ["quick_check"], cpuMs(run(["quick_check"]))],
      ["changed_tables", changed, cpuMs(() => {
        run(ChangedTables.planOf(ChangedTables.place(frames, schema, readHead)))()
      })],
      ["integrity_check", ["integrity_check"], cpuMs(run(["integrity_check"]))],
      ["(placement alone)", [], cpuMs(() => ChangedTables.place(frames, schema, readHead))]
    ]
    for (const [mode, plan, ms] of rowsOut) {
      const line = `| ${tables} | ${mb} MB | ${mode} | ${plan.join(", ") || "-"} | ${ms.toFixed(2)} |`
      lines.push(line)
      console.log(line)
    }
    db.close()
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}
console.log(`\n${lines.join("\n")}`)
