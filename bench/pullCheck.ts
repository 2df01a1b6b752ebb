/**
 * What the client's check of pulled frames costs: SQLite's `quick_check` of a database of 10 and 100 MB
 * on a read-only connection, as `internal/engine/validate.ts` runs it once per pulled batch.
 *
 *   npx tsx bench/pullCheck.ts
 */
import BetterSqlite3 from "better-sqlite3"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"

const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-pullcheck-"))
try {
  for (const mb of [10, 100]) {
    const file = NodePath.join(dir, `${mb}.db`)
    const db = new BetterSqlite3(file)
    db.pragma("journal_mode = WAL")
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    const insert = db.prepare("INSERT INTO t (v) VALUES (?)")
    const rows = Math.floor((mb * 1024 * 1024) / 1100)
    db.transaction(() => {
      for (let i = 0; i < rows; i++) insert.run("x".repeat(1000))
    })()
    db.pragma("wal_checkpoint(TRUNCATE)")
    db.close()
    const reader = new BetterSqlite3(file, { readonly: true })
    const started = performance.now()
    reader.pragma("quick_check")
    const ms = performance.now() - started
    reader.close()
    console.log(`${mb} MB: quick_check ${ms.toFixed(0)} ms`)
  }
} finally {
  Fs.rmSync(dir, { recursive: true, force: true })
}
