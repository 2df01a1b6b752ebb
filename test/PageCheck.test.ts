/**
 * The check of pulled frames that costs what they changed (src/internal/sqlite/pageCheck.ts): every
 * transaction real SQLite commits passes it (or asks for the whole quick_check), and a structural byte of a
 * page it wrote, broken, is refused. Real SQLite files, random workloads (fast-check).
 */
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as fc from "fast-check"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Validate from "../src/internal/engine/validate.js"
import * as PageCheck from "../src/internal/sqlite/pageCheck.js"
import * as WalFrame from "../src/WalFrame.js"

type Key = number | bigint
type Op =
  | { readonly _tag: "insert"; readonly table: "a" | "b"; readonly key: Key; readonly bytes: number }
  | { readonly _tag: "update"; readonly table: "a" | "b"; readonly key: Key; readonly bytes: number }
  | { readonly _tag: "delete"; readonly table: "a" | "b"; readonly key: Key }

// Mostly small keys (rows meet again), sometimes any 64-bit rowid (9-byte varints, negative rowids).
const key: fc.Arbitrary<Key> = fc.oneof(
  { weight: 9, arbitrary: fc.nat(400) },
  { weight: 1, arbitrary: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) }
)

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ _tag: fc.constant("insert" as const), table: fc.constantFrom("a" as const, "b" as const), key, bytes: fc.oneof({ weight: 6, arbitrary: fc.nat(300) }, { weight: 2, arbitrary: fc.nat(3000) }, { weight: 1, arbitrary: fc.nat(9000) }) }) },
  { weight: 3, arbitrary: fc.record({ _tag: fc.constant("update" as const), table: fc.constantFrom("a" as const, "b" as const), key, bytes: fc.nat(2000) }) },
  { weight: 2, arbitrary: fc.record({ _tag: fc.constant("delete" as const), table: fc.constantFrom("a" as const, "b" as const), key }) }
)

interface Commit {
  readonly before: number
  readonly frames: ReadonlyArray<WalFrame.Frame>
  readonly trees: ReadonlyArray<PageCheck.Tree>
}

/** Runs `transactions` on a fresh WAL database (never checkpointed); each commit's frames and schema before it. */
const workload = (dir: string, transactions: ReadonlyArray<ReadonlyArray<Op>>) => {
  const file = NodePath.join(dir, `db-${Math.random().toString(36).slice(2)}`)
  const db = new BetterSqlite3(file)
  db.pragma("journal_mode = WAL")
  db.pragma("wal_autocheckpoint = 0")
  db.exec("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
  db.exec("CREATE TABLE b (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
  db.exec("CREATE INDEX a_v ON a (v)")
  const walFrames = () => Option.match(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${file}-wal`))), { onNone: () => [], onSome: (w) => w.frames })
  const commits: Array<Commit> = []
  for (const tx of transactions) {
    const before = walFrames().length
    const trees = db.prepare("SELECT name, rootpage FROM sqlite_schema WHERE rootpage > 0").all() as Array<PageCheck.Tree>
    db.transaction(() => {
      for (const o of tx) {
        const value = "x".repeat(o._tag === "delete" ? 0 : o.bytes)
        if (o._tag === "insert") {
          if (o.table === "a") db.prepare("INSERT OR REPLACE INTO a VALUES (?, ?, ?)").run(o.key, value, o.key)
          else db.prepare("INSERT OR REPLACE INTO b VALUES (?, ?)").run(`k${o.key}`, Buffer.from(value))
        } else if (o._tag === "update") {
          if (o.table === "a") db.prepare("UPDATE a SET v = ? WHERE id = ?").run(value, o.key)
          else db.prepare("UPDATE b SET v = ? WHERE k = ?").run(Buffer.from(value), `k${o.key}`)
        } else {
          if (o.table === "a") db.prepare("DELETE FROM a WHERE id = ?").run(o.key)
          else db.prepare("DELETE FROM b WHERE k = ?").run(`k${o.key}`)
        }
      }
    })()
    const frames = walFrames().slice(before).map((f) => ({ ...f, page: Uint8Array.from(f.page) }))
    if (frames.length > 0) commits.push({ before, frames, trees })
  }
  return { file, db, commits }
}

/** The pages of the database after `before` WAL frames (+ `extra`), as validate.ts reads them. */
const reader = (file: string, before: number, extra: ReadonlyArray<WalFrame.Frame>) => {
  const bytes = new Uint8Array(Fs.readFileSync(file))
  const wal = Option.getOrThrow(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${file}-wal`)))).frames.slice(0, before)
  const newest = new Map<number, Uint8Array>()
  for (const f of wal) newest.set(f.pgno, f.page)
  const pageBefore = (pgno: number) =>
    newest.get(pgno) ?? (pgno * 4096 <= bytes.byteLength ? bytes.subarray((pgno - 1) * 4096, pgno * 4096) : undefined)
  const after = new Map(newest)
  let size = 0
  for (const f of extra) {
    after.set(f.pgno, f.page)
    if (f.commitSize !== 0) size = f.commitSize
  }
  return { pageBefore, page: (pgno: number) => (pgno > size ? undefined : after.get(pgno) ?? pageBefore(pgno)), size }
}

const tempDir = () => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-pagecheck-"))

describe("PageCheck", () => {
  it.effect("every transaction SQLite commits passes the check of its pages (or asks for the whole check)", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      let checked = 0
      let full = 0
      try {
        yield* Effect.promise(() =>
          fc.assert(fc.asyncProperty(fc.array(fc.array(op, { minLength: 1, maxLength: 30 }), { minLength: 1, maxLength: 12 }), async (txs) => {
            const { file, db, commits } = workload(dir, txs)
            try {
              for (const c of commits) {
                const r = reader(file, c.before, c.frames)
                const verdict = PageCheck.check(c.frames, c.trees, r.size, r.page, r.pageBefore)
                expect(verdict._tag, JSON.stringify(verdict)).not.toBe("Fault")
                if (verdict._tag === "Ok") checked++
                else full++
                // The engine's path (real files): passes too.
                await Effect.runPromise(Validate.pulled(file, c.before, c.frames, c.trees, "a commit"))
              }
            } finally {
              db.close()
            }
          }), { numRuns: 60 })
        )
      } finally {
        Fs.rmSync(dir, { recursive: true, force: true })
      }
      // Most commits are judged by their pages alone; some (overflow pages) need the whole check.
      expect(checked).toBeGreaterThan(60)
      expect(full).toBeGreaterThan(0)
    }), 600_000)

  it("a broken structural byte of a page the commit wrote is refused", () => {
    const dir = tempDir()
    try {
      const txs: Array<Array<Op>> = []
      for (let i = 0; i < 6; i++) {
        txs.push(Array.from({ length: 40 }, (_, j) => ({ _tag: "insert" as const, table: (j % 2 === 0 ? "a" : "b") as "a" | "b", key: i * 40 + j, bytes: 50 + ((i * 7 + j * 13) % 200) })))
      }
      const { file, db, commits } = workload(dir, txs)
      let refused = 0
      for (const c of commits.slice(1)) {
        const clean = reader(file, c.before, c.frames)
        const v0 = PageCheck.check(c.frames, c.trees, clean.size, clean.page, clean.pageBefore)
        if (v0._tag !== "Ok") continue
        const target = c.frames.findIndex((f) => f.pgno !== 1)
        const p = c.frames[target].page
        const hdr = 0
        const cells = (p[hdr + 3] << 8) | p[hdr + 4]
        const breakages: Array<[string, (page: Uint8Array) => void]> = [
          ["page type", (q) => (q[hdr] = 0x07)],
          ["cell count", (q) => (q[hdr + 4] = (cells + 3) & 0xff)],
          ["first cell pointer", (q) => { q[hdr + (q[hdr] === 0x0d || q[hdr] === 0x0a ? 8 : 12)] = 0x00; q[hdr + (q[hdr] === 0x0d || q[hdr] === 0x0a ? 8 : 12) + 1] = 0x01 }],
          ["fragmented bytes", (q) => (q[hdr + 7] = (q[hdr + 7] + 5) & 0xff)],
          ["content start", (q) => { q[hdr + 5] = 0x0f; q[hdr + 6] = 0xff }]
        ]
        for (const [what, breakIt] of breakages) {
          const page = Uint8Array.from(p)
          breakIt(page)
          const frames = c.frames.map((f, i) => (i === target ? { ...f, page } : f))
          const r = reader(file, c.before, frames)
          const verdict = PageCheck.check(frames, c.trees, r.size, r.page, r.pageBefore)
          expect(verdict._tag, `${what} of page ${c.frames[target].pgno}`).toBe("Fault")
          refused++
        }
      }
      expect(refused).toBeGreaterThan(10)
      db.close()
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
