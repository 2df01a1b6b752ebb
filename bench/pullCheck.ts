/**
 * What the client's check of pulled frames costs (`internal/engine/validate.ts`, once per pulled batch):
 * a commit of 100 updated rows spread over a database of 10 and 100 MB, checked page by page
 * (`Validate.pulled`: a walk of the b-trees' interior pages, then SQLite's checks of the 100 written pages),
 * beside SQLite's `quick_check` of the whole database, which the check fell back to before (and still
 * runs for a base, and for a batch that changes the schema or writes an overflow page).
 *
 *   npx tsx bench/pullCheck.ts
 */
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Validate from "../src/internal/engine/validate.js"
import * as WalFrame from "../src/WalFrame.js"

const median = (xs: Array<number>) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-pullcheck-"))
try {
  for (const mb of [10, 100]) {
    const file = NodePath.join(dir, `${mb}.db`)
    const db = new BetterSqlite3(file)
    db.pragma("journal_mode = WAL")
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, v TEXT)")
    const insert = db.prepare("INSERT INTO t (n, v) VALUES (0, ?)")
    const rows = Math.floor((mb * 1024 * 1024) / 1100)
    db.transaction(() => {
      for (let i = 0; i < rows; i++) insert.run("x".repeat(1000))
    })()
    db.pragma("wal_checkpoint(TRUNCATE)")
    db.pragma("wal_autocheckpoint = 0")
    const trees = db.prepare("SELECT name, rootpage FROM sqlite_schema WHERE rootpage > 0").all() as Array<{ name: string; rootpage: number }>
    const update = db.prepare("UPDATE t SET n = n + 1 WHERE id = ?")
    db.transaction(() => {
      for (let i = 0; i < 100; i++) update.run(1 + Math.floor((i * rows) / 100))
    })()
    const frames = Option.getOrThrow(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${file}-wal`)))).frames
      .map((f) => ({ ...f, page: Uint8Array.from(f.page) }))
    const pages: Array<number> = []
    const whole: Array<number> = []
    for (let run = 0; run < 5; run++) {
      const started = performance.now()
      Effect.runSync(Validate.pulled(file, 0, frames, trees, "the commit"))
      pages.push(performance.now() - started)
      const reader = new BetterSqlite3(file, { readonly: true })
      const before = performance.now()
      reader.pragma("quick_check")
      whole.push(performance.now() - before)
      reader.close()
    }
    db.close()
    console.log(
      `${mb} MB, a commit of 100 rows (${frames.length} frames): page check ${median(pages).toFixed(1)} ms, ` +
        `whole quick_check ${median(whole).toFixed(0)} ms (medians of 5)`
    )
  }
} finally {
  Fs.rmSync(dir, { recursive: true, force: true })
}
