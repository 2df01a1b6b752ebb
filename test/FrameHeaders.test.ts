/**
 * The Draft fold records which pages its checkpoint is about to write from the WAL's frame headers alone
 * (src/internal/sqlite/pageCopy.ts, `readFrameHeaders`). Missing a page would be a silent divergence
 * between the copies, so it is checked against real SQLite: random commits, rolled-back transactions that
 * spilled frames into the WAL, checkpoints that make SQLite restart its WAL over older frames, and torn
 * frames a crash could leave past the end; then SQLite's own TRUNCATE checkpoint runs, and every page it
 * changed in the database file must be in the recorded set.
 */
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as fc from "fast-check"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as PageCopy from "../src/internal/sqlite/pageCopy.js"
import * as WalFrame from "../src/WalFrame.js"

type Op =
  | { readonly _tag: "insert"; readonly size: number }
  | { readonly _tag: "update"; readonly size: number }
  | { readonly _tag: "delete" }
  | { readonly _tag: "rollback"; readonly rows: number }
  | { readonly _tag: "checkpoint"; readonly mode: "PASSIVE" | "RESTART" | "TRUNCATE" }
  | { readonly _tag: "torn"; readonly pgno: number; readonly commit: boolean; readonly cut: number }

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.integer({ min: 10, max: 9000 }).map((size) => ({ _tag: "insert" as const, size })) },
  { weight: 3, arbitrary: fc.integer({ min: 10, max: 9000 }).map((size) => ({ _tag: "update" as const, size })) },
  { weight: 2, arbitrary: fc.constant({ _tag: "delete" as const }) },
  { weight: 1, arbitrary: fc.integer({ min: 5, max: 40 }).map((rows) => ({ _tag: "rollback" as const, rows })) },
  {
    weight: 2,
    arbitrary: fc.constantFrom<"PASSIVE" | "RESTART" | "TRUNCATE">("PASSIVE", "RESTART", "TRUNCATE").map((mode) => ({ _tag: "checkpoint" as const, mode }))
  },
  {
    weight: 1,
    arbitrary: fc.record({ pgno: fc.integer({ min: 1, max: 60 }), commit: fc.boolean(), cut: fc.nat(WalFrame.FRAME_SIZE) })
      .map((t) => ({ _tag: "torn" as const, ...t }))
  }
)

const pagesOf = (bytes: Uint8Array) => Math.ceil(bytes.byteLength / WalFrame.PAGE_SIZE)

/** Pages on which two database files differ (a page past one file's end counts as zeros). */
const differingPages = (a: Uint8Array, b: Uint8Array): ReadonlyArray<number> => {
  const out: Array<number> = []
  const zero = new Uint8Array(WalFrame.PAGE_SIZE)
  const page = (bytes: Uint8Array, p: number) => {
    const slice = bytes.subarray((p - 1) * WalFrame.PAGE_SIZE, p * WalFrame.PAGE_SIZE)
    return slice.byteLength === WalFrame.PAGE_SIZE ? slice : zero
  }
  for (let p = 1; p <= Math.max(pagesOf(a), pagesOf(b)); p++) {
    if (!Buffer.from(page(a, p)).equals(page(b, p))) out.push(p)
  }
  return out
}

/**
 * Appends a frame as a crash in the middle of a commit could leave it past SQLite's last commit: the WAL's
 * salts, a page that does not match its checksum, possibly cut short.
 */
const appendTornFrame = (wal: string, t: Extract<Op, { _tag: "torn" }>) => {
  const bytes = Fs.readFileSync(wal)
  if (bytes.byteLength < WalFrame.WAL_HEADER_SIZE) return
  const frame = new Uint8Array(WalFrame.FRAME_SIZE).fill(0xa5)
  const view = new DataView(frame.buffer)
  view.setUint32(0, t.pgno)
  view.setUint32(4, t.commit ? 60 : 0)
  frame.set(bytes.subarray(16, 24), 8) // the WAL header's salts
  Fs.appendFileSync(wal, frame.subarray(0, Math.max(WalFrame.FRAME_HEADER_SIZE, t.cut)))
}

describe("readFrameHeaders", () => {
  it.effect("covers every page SQLite's checkpoint writes, and counts its committed frames (more only past a torn tail)", () =>
    Effect.gen(function*() {
      const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "frame-headers-"))
      let run = 0
      yield* Effect.promise(() =>
        fc.assert(
          fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), async (ops) => {
            const path = NodePath.join(dir, `db-${++run}`)
            const db = new BetterSqlite3(path)
            try {
              db.pragma("page_size = 4096")
              db.pragma("journal_mode = WAL")
              db.pragma("wal_autocheckpoint = 0")
              db.pragma("cache_size = 2") // big transactions spill frames into the WAL before they commit
              db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
              let torn = false
              for (const o of ops) {
                switch (o._tag) {
                  case "insert":
                    db.prepare("INSERT INTO t (v) VALUES (randomblob(?))").run(o.size)
                    break
                  case "update":
                    db.prepare("UPDATE t SET v = randomblob(?) WHERE id = (SELECT min(id) FROM t)").run(o.size)
                    break
                  case "delete":
                    db.exec("DELETE FROM t WHERE id = (SELECT max(id) FROM t)")
                    break
                  case "rollback":
                    db.exec("BEGIN")
                    for (let i = 0; i < o.rows; i++) db.prepare("INSERT INTO t (v) VALUES (randomblob(3000))").run()
                    db.exec("ROLLBACK")
                    break
                  case "checkpoint":
                    db.pragma(`wal_checkpoint(${o.mode})`)
                    break
                  case "torn":
                    appendTornFrame(`${path}-wal`, o)
                    torn = true
                    break
                }
              }
              const headers = await Effect.runPromise(PageCopy.readFrameHeaders(path))
              const recorded = new Set(PageCopy.pageNumbers(headers.frames))
              const before = Fs.readFileSync(path)
              // PASSIVE reports SQLite's own count of committed frames (TRUNCATE reports 0 once it cut the WAL).
              const [result] = db.pragma("wal_checkpoint(PASSIVE)") as Array<{ busy: number; log: number }>
              expect(result.busy).toBe(0)
              expect((db.pragma("wal_checkpoint(TRUNCATE)") as Array<{ busy: number }>)[0].busy).toBe(0)
              const changed = differingPages(before, Fs.readFileSync(path))
              expect(changed.filter((p) => !recorded.has(p))).toEqual([])
              if (torn) expect(headers.committed).toBeGreaterThanOrEqual(result.log)
              else expect(headers.committed).toBe(result.log)
            } finally {
              db.close()
            }
          }),
          { numRuns: 60 }
        )
      )
      Fs.rmSync(dir, { recursive: true, force: true })
    }), 120_000)
})
