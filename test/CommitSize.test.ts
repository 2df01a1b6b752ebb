/**
 * The server refuses a commit that grows the database by more than the pages it writes plus 16
 * (`checkCommitSizes`, SQLite's own checkpoint bound). Real SQLite transactions of every shape must
 * never be refused by it: growth by blobs and overflow chains, shrinking by deletes, VACUUM and
 * incremental vacuum, auto_vacuum pointer-map pages, index builds, and batched small transactions.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import { checkCommitSizes } from "../src/internal/server/serverCore.js"
import { emptyWalBase } from "../src/internal/server/sqliteImage.js"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"

const statements = [
  "INSERT INTO t(v) SELECT randomblob(abs(random()) % 300000) FROM (SELECT 1)",
  "INSERT INTO t(v) SELECT randomblob(100) FROM (WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 500) SELECT x FROM s)",
  "DELETE FROM t WHERE id % 3 = 0",
  "DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 50)",
  "UPDATE t SET v = randomblob(length(v) / 2 + 1) WHERE id % 2 = 0",
  "CREATE INDEX IF NOT EXISTS t_v ON t(substr(v, 1, 8))",
  "DROP INDEX IF EXISTS t_v",
  "VACUUM",
  "PRAGMA incremental_vacuum",
  "CREATE TABLE IF NOT EXISTS u(a, b); INSERT INTO u SELECT randomblob(5000), 1 FROM (SELECT 1 UNION ALL SELECT 2)",
  "DROP TABLE IF EXISTS u"
] as const

describe("checkCommitSizes", () => {
  it("refuses a commit size beyond what its frames can grow the file by, and accepts the bound itself", () => {
    const page = new Uint8Array(WalFrame.PAGE_SIZE)
    const frames = (sizes: ReadonlyArray<number>) => sizes.map((commitSize, i) => ({ pgno: i + 1, commitSize, page }))
    expect(checkCommitSizes(frames([10 + 1 + 16]), 10)).toBeUndefined()
    expect(checkCommitSizes(frames([10 + 1 + 17]), 10)).toBeTypeOf("string")
    expect(checkCommitSizes(frames([0, 0, 10 + 3 + 16]), 10)).toBeUndefined()
    expect(checkCommitSizes(frames([0xffff_ffff]), 10)).toBeTypeOf("string")
    // The bound restarts from each commit of a batch.
    expect(checkCommitSizes(frames([30, 0, 30 + 2 + 16]), 13)).toBeUndefined()
    expect(checkCommitSizes(frames([30, 0, 30 + 2 + 17]), 13)).toBeTypeOf("string")
    // Shrinking is always fine.
    expect(checkCommitSizes(frames([1]), 1000)).toBeUndefined()
  })

  for (const autoVacuum of ["NONE", "FULL", "INCREMENTAL"] as const) {
    it(`never refuses a real SQLite transaction (auto_vacuum=${autoVacuum})`, () => {
      // The property must have seen large growth and shrinking, or it shows nothing.
      let grewBy50 = 0
      let shrank = 0
      fc.assert(
        fc.property(fc.array(fc.array(fc.nat(statements.length - 1), { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 12 }), (script) => {
          const replica = new H.Replica(emptyWalBase())
          try {
            let pages = 1
            const first = replica.write(
              `PRAGMA auto_vacuum = ${autoVacuum}; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);`
            )
            expect(checkCommitSizes(first, pages)).toBeUndefined()
            pages = first[first.length - 1].commitSize
            for (const step of script) {
              const sql = step.map((i) => statements[i]).join("; ")
              // VACUUM cannot run inside a transaction: it goes alone, the rest as one transaction.
              const frames = sql.includes("VACUUM") ? replica.write(sql) : replica.write(`BEGIN; ${sql}; COMMIT;`)
              if (frames.length === 0) continue
              expect(checkCommitSizes(frames, pages)).toBeUndefined()
              const next = frames[WalFrame.committedLength(frames) - 1].commitSize
              if (next >= pages + 50) grewBy50++
              if (next < pages) shrank++
              pages = next
            }
          } finally {
            replica.close()
          }
        }),
        { numRuns: 25 }
      )
      expect(grewBy50).toBeGreaterThan(0)
      expect(shrank).toBeGreaterThan(0)
    }, 120_000)
  }
})
