/**
 * The count of a WAL's frames not yet checkpointed, read from SQLite's wal-index (src/internal/sqlite/
 * walIndex.ts), against what SQLite itself reports, on real WAL files: written frames, a RESTART checkpoint
 * (after which the WAL file keeps its size), the next write starting the WAL over, and headers that must
 * not be trusted; and a WAL's committed tail after a known prefix as the index has it (what a push sends),
 * against the checksum scan of the same tail.
 */
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as fc from "fast-check"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Effect from "effect/Effect"
import * as Files from "../src/internal/sqlite/files.js"
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

  describe("the tail after a known prefix, by the index", () => {
    const tailByIndex = (path: string, prefix: Files.WalState | undefined) =>
      Effect.runSync(Files.walTailByIndex(path, prefix))
    const scan = (path: string, prefix: Files.WalState | undefined) => Effect.runSync(Files.scanWalTail(path, prefix, 64))
    const prefixAt = (path: string, frames: number) => Effect.runSync(Files.prefixState(path, frames))

    it("is what the checksum scan finds, for any prefix of transactions of any size", () =>
      fc.assert(
        fc.property(
          fc.array(fc.record({ rows: fc.integer({ min: 1, max: 30 }), size: fc.integer({ min: 1, max: 9000 }) }), {
            minLength: 1,
            maxLength: 8
          }),
          fc.nat(),
          (transactions, pick) =>
            withDb((db, path) => {
              db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, x)")
              const insert = db.prepare("INSERT INTO t (x) VALUES (randomblob(?))")
              // the frame counts at each commit: any of them can be the known prefix
              const commits = [walFrames(path)]
              for (const { rows, size } of transactions) {
                db.transaction(() => {
                  for (let i = 0; i < rows; i++) insert.run(size)
                })()
                commits.push(walFrames(path))
              }
              const known = commits[pick % (commits.length - 1)]!
              const prefix = known === 0 ? undefined : prefixAt(path, known)
              const byIndex = tailByIndex(path, prefix)
              expect(byIndex).toBeDefined()
              expect(byIndex).toEqual(scan(path, prefix))
              expect(byIndex!.count).toBe(walFrames(path) - known)
              // at the end of the WAL: nothing after it
              expect(tailByIndex(path, prefixAt(path, walFrames(path)))).toEqual({ count: 0, state: undefined })
            })
        ),
        { numRuns: 25 }
      ), 120_000)

    it("is undefined where the index does not plainly describe the WAL file, and the scan decides", () =>
      withDb((db, path) => {
        db.exec("CREATE TABLE t (x)")
        db.prepare("INSERT INTO t VALUES (randomblob(5000))").run()
        const prefix = prefixAt(path, walFrames(path))
        db.prepare("INSERT INTO t VALUES (randomblob(100))").run()
        expect(tailByIndex(path, prefix)?.count).toBe(1)
        // A WAL file longer than the frames the index holds (frames written behind its back, or left over):
        // the index is not the file's, so it does not answer.
        const wal = `${path}-wal`
        const bytes = Fs.readFileSync(wal)
        Fs.appendFileSync(wal, bytes.subarray(WalFrame.WAL_HEADER_SIZE, WalFrame.WAL_HEADER_SIZE + WalFrame.FRAME_SIZE))
        expect(tailByIndex(path, prefix)).toBeUndefined()
        Fs.truncateSync(wal, bytes.byteLength)
        expect(tailByIndex(path, prefix)?.count).toBe(1)
        // A last frame whose checksum is not the one the index keeps for it: not this index's frame.
        const at = WalFrame.walSize(walFrames(path) - 1) + 16
        const fd = Fs.openSync(wal, "r+")
        Fs.writeSync(fd, Uint8Array.of(bytes[at]! ^ 1), 0, 1, at)
        expect(tailByIndex(path, prefix)).toBeUndefined()
        Fs.writeSync(fd, Uint8Array.of(bytes[at]!), 0, 1, at)
        Fs.closeSync(fd)
        expect(tailByIndex(path, prefix)?.count).toBe(1)
        // A prefix of another WAL (other salts): not this index's.
        const other = { ...prefix!, header: { ...prefix!.header, salt1: (prefix!.header.salt1 + 1) >>> 0 } }
        expect(tailByIndex(path, other)).toBeUndefined()
        // A prefix longer than the index: the index is behind the WAL it is asked about.
        expect(tailByIndex(path, { ...prefix!, frames: walFrames(path) + 1 })).toBeUndefined()
        // No index at all.
        const copy = NodePath.join(NodePath.dirname(path), "copy")
        Fs.copyFileSync(wal, `${copy}-wal`)
        expect(tailByIndex(copy, prefix)).toBeUndefined()
        expect(scan(copy, prefix).count).toBe(1)
      }))
  })
})
