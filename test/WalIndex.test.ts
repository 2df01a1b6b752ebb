/**
 * The count of a WAL's frames not yet checkpointed, read from SQLite's wal-index (src/internal/sqlite/
 * walIndex.ts), against what SQLite itself reports, on real WAL files: written frames, a RESTART checkpoint
 * (after which the WAL file keeps its size), the next write starting the WAL over, and headers that must
 * not be trusted.
 */
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as fc from "fast-check"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as WalIndex from "../src/internal/sqlite/walIndex.js"
import * as WalFrame from "../src/WalFrame.js"

const withDb = (f: (db: BetterSqlite3.Database, path: string) => void) => {
  const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-walindex-"))
  const path = NodePath.join(dir, "db")
  const db = new BetterSqlite3(path)
  try {
    db.pragma("journal_mode = WAL")
    db.pragma("wal_autocheckpoint = 0")
    f(db, path)
  } finally {
    db.close()
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** Frames in the WAL file, parsed as SQLite recovers it (salts and checksums). */
const walFrames = (path: string) => {
  const wal = new Uint8Array(Fs.readFileSync(`${path}-wal`))
  const parsed = WalFrame.parse(wal)
  return parsed._tag === "Some" ? parsed.value.frames.length : 0
}

describe("WalIndex", () => {
  it("counts the frames of a live WAL as SQLite does, and none after a RESTART checkpoint", () =>
    withDb((db, path) => {
      db.exec("CREATE TABLE t (x)")
      const insert = db.prepare("INSERT INTO t VALUES (randomblob(?))")
      for (const size of [10, 5000, 20_000, 100]) insert.run(size)
      expect(WalIndex.unfoldedFrames(Fs, path)).toBe(walFrames(path))
      expect(WalIndex.unfoldedFrames(Fs, path)).toBeGreaterThan(4)
      const sizeBefore = Fs.statSync(`${path}-wal`).size
      expect(db.pragma("wal_checkpoint(RESTART)")).toEqual([{ busy: 0, log: walFrames(path), checkpointed: walFrames(path) }])
      // The file keeps its frames (and its size) until the next write starts it over: only the index tells.
      expect(Fs.statSync(`${path}-wal`).size).toBe(sizeBefore)
      expect(WalIndex.unfoldedFrames(Fs, path)).toBe(0)
      insert.run(10)
      expect(WalIndex.unfoldedFrames(Fs, path)).toBe(1)
      expect(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${path}-wal`)))._tag).toBe("Some")
    }))

  it("reads the page of every frame as the WAL file holds it, across the index's blocks and restarts", () =>
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({ rows: fc.integer({ min: 1, max: 40 }), size: fc.integer({ min: 1, max: 9000 }) }),
            fc.constant("restart" as const)
          ),
          { minLength: 1, maxLength: 12 }
        ),
        fc.boolean(),
        (steps, large) =>
          withDb((db, path) => {
            db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, x)")
            // More than the first block's 4062 frames in one transaction, when drawn.
            if (large) db.exec("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4500) INSERT INTO t (x) SELECT randomblob(3000) FROM n")
            const insert = db.prepare("INSERT INTO t (x) VALUES (randomblob(?))")
            const update = db.prepare("UPDATE t SET x = randomblob(?) WHERE id % 7 = ?")
            for (const step of steps) {
              if (step === "restart") db.pragma("wal_checkpoint(RESTART)")
              else {
                db.transaction(() => {
                  for (let i = 0; i < step.rows; i++) insert.run(step.size)
                  update.run(step.size, step.rows % 7)
                })()
              }
              const index = WalIndex.readIndex(Fs, path)
              const wal = WalFrame.parse(new Uint8Array(Fs.readFileSync(`${path}-wal`)))
              const frames = wal._tag === "Some" ? wal.value.frames : []
              expect(index).toBeDefined()
              expect(index!.frames).toBe(frames.length)
              expect(index!.pages).toEqual(frames.map((f) => f.pgno))
              expect(index!.dbPages).toBe(db.pragma("page_count", { simple: true }))
              expect(index!.frames - index!.backfilled).toBe(step === "restart" ? 0 : WalIndex.unfoldedFrames(Fs, path))
            }
          })
      ),
      { numRuns: 15 }
    ), 120_000)

  it("is undefined without a wal-index file", () => {
    const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-walindex-"))
    try {
      expect(WalIndex.unfoldedFrames(Fs, NodePath.join(dir, "absent"))).toBeUndefined()
      Fs.writeFileSync(NodePath.join(dir, "short-shm"), new Uint8Array(20))
      expect(WalIndex.unfoldedFrames(Fs, NodePath.join(dir, "short"))).toBeUndefined()
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("trusts only an initialized header whose two copies agree", () =>
    withDb((db, path) => {
      db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
      const header = new Uint8Array(Fs.readFileSync(`${path}-shm`).subarray(0, 100))
      const frames = WalIndex.parse(header)
      expect(frames).toBe(walFrames(path))
      fc.assert(fc.property(fc.integer({ min: 0, max: 47 }), fc.integer({ min: 1, max: 255 }), (at, flip) => {
        // Either copy changed alone: a header being written.
        for (const offset of [at, 48 + at]) {
          const torn = header.slice()
          torn[offset] = torn[offset]! ^ flip
          expect(WalIndex.parse(torn)).toBeUndefined()
        }
      }))
      const uninitialized = header.slice()
      uninitialized[12] = 0
      uninitialized[48 + 12] = 0
      expect(WalIndex.parse(uninitialized)).toBeUndefined()
      expect(WalIndex.parse(new Uint8Array(100))).toBeUndefined()
    }))
})
