import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import fc from "fast-check"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as WalFrame from "../src/WalFrame.js"

const arbPage = fc.uint8Array({ minLength: WalFrame.PAGE_SIZE, maxLength: WalFrame.PAGE_SIZE })
const arbSmallPage = fc
  .tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: WalFrame.PAGE_SIZE - 1 }))
  .map(([byte, at]) => {
    const page = new Uint8Array(WalFrame.PAGE_SIZE)
    page[at] = byte
    page[0] = byte ^ 0x5a
    return page
  })

// Transactions: each a list of page writes, the last frame carrying the commit size.
const arbTransactions = fc
  .array(
    fc.record({
      pages: fc.array(fc.tuple(fc.integer({ min: 1, max: 12 }), arbSmallPage), { minLength: 1, maxLength: 5 }),
      extra: fc.integer({ min: 0, max: 3 })
    }),
    { minLength: 1, maxLength: 6 }
  )
  .map((txs) =>
    txs.flatMap(({ extra, pages }) => {
      const maxPgno = Math.max(...pages.map(([p]) => p))
      return pages.map(([pgno, page], i): WalFrame.Frame => ({
        pgno,
        commitSize: i === pages.length - 1 ? maxPgno + extra : 0,
        page
      }))
    })
  )

const arbWalOptions = fc.record({
  salt1: fc.integer({ min: 0, max: 0xffffffff }),
  salt2: fc.integer({ min: 0, max: 0xffffffff }),
  checkpointSeq: fc.integer({ min: 0, max: 0xffffffff }),
  bigEndian: fc.boolean()
})

const sameFrames = (a: ReadonlyArray<WalFrame.Frame>, b: ReadonlyArray<WalFrame.Frame>) =>
  a.length === b.length && a.every((frame, i) => WalFrame.equals(frame, b[i]))

describe("WalFrame codec", () => {
  it.effect("encode then parse gives the same committed frames, in both checksum byte orders", () =>
    Effect.sync(() =>
      fc.assert(
        fc.property(arbWalOptions, arbTransactions, (options, frames) => {
          const wal = WalFrame.append(WalFrame.make(options), frames).wal
          const parsed = Option.getOrThrow(WalFrame.parse(WalFrame.encode(wal)))
          expect(parsed.header).toEqual(wal.header)
          expect(sameFrames(parsed.frames, frames)).toBe(true)
          expect(parsed.checksum).toEqual(wal.checksum)
        }),
        { numRuns: 100 }
      )
    ))

  it.effect("appending in pieces writes the same file as appending at once", () =>
    Effect.sync(() =>
      fc.assert(
        fc.property(arbWalOptions, arbTransactions, fc.nat(), (options, frames, cut) => {
          const at = cut % (frames.length + 1)
          const empty = WalFrame.make(options)
          const first = WalFrame.append(empty, frames.slice(0, at))
          const second = WalFrame.append(first.wal, frames.slice(at))
          const whole = WalFrame.append(empty, frames)
          expect(Buffer.concat([first.bytes, second.bytes]).equals(whole.bytes)).toBe(true)
          expect(Buffer.from(WalFrame.encode(second.wal)).equals(Buffer.from(WalFrame.encode(whole.wal)))).toBe(true)
        }),
        { numRuns: 100 }
      )
    ))

  it.effect("appendHeaders interleaved with the pages are the bytes append writes (any prefix, either byte order)", () =>
    Effect.sync(() =>
      fc.assert(
        fc.property(arbWalOptions, arbTransactions, fc.nat(), (options, frames, cut) => {
          const at = cut % (frames.length + 1)
          const prefix = WalFrame.append(WalFrame.make(options), frames.slice(0, at)).wal
          const rest = frames.slice(at)
          const { checksum, headers } = WalFrame.appendHeaders(prefix, rest)
          const interleaved = Buffer.concat(rest.flatMap((frame, i) => [
            headers.subarray(i * WalFrame.FRAME_HEADER_SIZE, (i + 1) * WalFrame.FRAME_HEADER_SIZE),
            frame.page
          ]))
          const appended = WalFrame.append(prefix, rest)
          expect(interleaved.equals(appended.bytes)).toBe(true)
          expect(checksum).toEqual(appended.wal.checksum)
        }),
        { numRuns: 100 }
      )
    ))

  it.effect("parseFrames validates a tail from a prefix's running checksum exactly as parse does", () =>
    Effect.sync(() =>
      fc.assert(
        fc.property(arbWalOptions, arbTransactions, arbTransactions, (options, before, after) => {
          const prefix = WalFrame.append(WalFrame.make(options), before).wal
          const whole = WalFrame.append(prefix, after).wal
          const bytes = WalFrame.encode(whole)
          const tail = WalFrame.parseFrames(bytes.subarray(WalFrame.walSize(before.length)), prefix.header, prefix.checksum)
          const parsed = Option.getOrThrow(WalFrame.parse(bytes))
          expect(sameFrames(tail.frames, parsed.frames.slice(before.length))).toBe(true)
          expect(tail.checksum).toEqual(parsed.checksum)
        }),
        { numRuns: 100 }
      )
    ))

  it.effect("parse stops at the first damaged frame and keeps only up to the last commit before it", () =>
    Effect.sync(() =>
      fc.assert(
        fc.property(arbTransactions, fc.nat(), fc.nat(), (frames, which, bit) => {
          const bytes = WalFrame.encode(WalFrame.append(WalFrame.make(), frames).wal)
          const damaged = which % frames.length
          const offset = WalFrame.walSize(damaged) + WalFrame.FRAME_HEADER_SIZE + (bit % WalFrame.PAGE_SIZE)
          bytes[offset] ^= 1 << (bit % 8)
          const parsed = Option.getOrThrow(WalFrame.parse(bytes))
          const expected = WalFrame.committedLength(frames.slice(0, damaged))
          expect(parsed.frames.length).toBe(expected)
          expect(sameFrames(parsed.frames, frames.slice(0, expected))).toBe(true)
        }),
        { numRuns: 100 }
      )
    ))

  it.effect("a torn tail and an unfinished transaction are not part of the WAL", () =>
    Effect.sync(() => {
      const page = new Uint8Array(WalFrame.PAGE_SIZE).fill(7)
      const frames: Array<WalFrame.Frame> = [
        { pgno: 1, commitSize: 1, page },
        { pgno: 2, commitSize: 0, page },
        { pgno: 3, commitSize: 0, page }
      ]
      const bytes = WalFrame.encode(WalFrame.append(WalFrame.make(), frames).wal)
      expect(Option.getOrThrow(WalFrame.parse(bytes)).frames.length).toBe(1)
      expect(Option.getOrThrow(WalFrame.parse(bytes.subarray(0, bytes.length - 100))).frames.length).toBe(1)
      expect(Option.isNone(WalFrame.parse(bytes.subarray(0, 20)))).toBe(true)
      const badHeader = Uint8Array.from(bytes)
      badHeader[17] ^= 1
      expect(Option.isNone(WalFrame.parse(badHeader))).toBe(true)
    }))

  it.effect("wire form round-trips pgno, commit size and page", () =>
    Effect.sync(() =>
      fc.assert(
        fc.property(fc.array(fc.record({ pgno: fc.integer({ min: 1, max: 2 ** 31 }), commitSize: fc.nat(), page: arbPage }), { maxLength: 4 }), (frames) => {
          const decoded = Either.getOrThrow(WalFrame.decodeWire(WalFrame.encodeWire(frames)))
          expect(sameFrames(decoded, frames)).toBe(true)
        }),
        { numRuns: 50 }
      )
    ))

  it.effect("decodeWire refuses partial frames and page number 0", () =>
    Effect.sync(() => {
      const one = WalFrame.encodeWire([{ pgno: 1, commitSize: 1, page: new Uint8Array(WalFrame.PAGE_SIZE) }])
      const partial = WalFrame.decodeWire(one.subarray(0, one.length - 1))
      expect(Either.isLeft(partial) && partial.left.reason).toBe("BodySize")
      const zero = Uint8Array.from(one)
      zero.fill(0, 0, 4)
      const pageZero = WalFrame.decodeWire(zero)
      expect(Either.isLeft(pageZero) && pageZero.left.reason).toBe("PageNumber")
    }))

  it.effect("validateTransactions refuses a commit size smaller than a page its transaction writes", () =>
    Effect.sync(() => {
      const page = new Uint8Array(WalFrame.PAGE_SIZE)
      expect(Either.isRight(WalFrame.validateTransactions([{ pgno: 3, commitSize: 0, page }, { pgno: 1, commitSize: 3, page }]))).toBe(true)
      const bad = WalFrame.validateTransactions([{ pgno: 3, commitSize: 0, page }, { pgno: 1, commitSize: 2, page }])
      expect(Either.isLeft(bad) && bad.left.reason).toBe("CommitSize")
      const pendingBad = WalFrame.validateTransactions([{ pgno: 1, commitSize: 2, page }], [{ pgno: 5, commitSize: 0, page }])
      expect(Either.isLeft(pendingBad)).toBe(true)
    }))

  it.effect("applyFrames: the newest copy of each page wins and the file takes the last commit's size", () =>
    Effect.sync(() =>
      fc.assert(
        fc.property(arbTransactions, fc.integer({ min: 0, max: 10 }), (frames, basePages) => {
          const base = new Uint8Array(basePages * WalFrame.PAGE_SIZE).fill(0xab)
          const out = WalFrame.applyFrames(base, frames)
          const size = frames[frames.length - 1].commitSize
          expect(out.byteLength).toBe(size * WalFrame.PAGE_SIZE)
          for (let pgno = 1; pgno <= size; pgno++) {
            const last = frames.findLast((frame) => frame.pgno === pgno)
            const expected = last
              ? last.page
              : pgno <= basePages
              ? base.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
              : new Uint8Array(WalFrame.PAGE_SIZE)
            expect(Buffer.compare(out.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE), expected)).toBe(0)
          }
        }),
        { numRuns: 100 }
      )
    ))
})

// Real SQLite: frames read from one database's WAL, written into a copy of its base, must give the very
// same file SQLite itself produces; that is what lets replicas and the server share bytes.
describe("WalFrame against real SQLite files", () => {
  const tempDir = Effect.acquireRelease(
    Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "walframe-"))),
    (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
  )

  // Builds a base, then a workload whose frames stay in the WAL (no autocheckpoint), and leaves the WAL intact
  // by closing the writer before a read-only connection (the "checkpoint on close" trap).
  const makeSource = (dir: string) => {
    const source = path.join(dir, "source.db")
    const setup = new Database(source)
    setup.pragma("journal_mode = WAL")
    setup.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); INSERT INTO t VALUES (1, 'base', NULL)")
    setup.close() // checkpoints: the base now holds the table
    const base = fs.readFileSync(source)
    const writer = new Database(source)
    writer.pragma("wal_autocheckpoint = 0")
    const insert = writer.prepare("INSERT INTO t(v, b) VALUES (?, ?)")
    for (let i = 0; i < 40; i++) writer.transaction(() => insert.run(`row ${i}`.repeat(i * 10), Buffer.alloc(i * 300, i)))()
    writer.exec("DELETE FROM t WHERE id % 3 = 0; CREATE INDEX t_v ON t(v)")
    writer.exec("DELETE FROM t WHERE id > 20")
    writer.exec("VACUUM")
    const reader = new Database(source, { readonly: true })
    reader.prepare("SELECT count(*) FROM t").get()
    writer.close()
    reader.close()
    return { source, base, wal: fs.readFileSync(`${source}-wal`) }
  }

  it.scoped("frames written into a copy of the base give a byte-identical file after a TRUNCATE checkpoint", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { base, source, wal } = makeSource(dir)
      const parsed = Option.getOrThrow(WalFrame.parse(wal))
      expect(parsed.frames.length).toBeGreaterThan(40)

      // A replica: same base, a freshly encoded WAL with its own salts and byte order.
      const replica = path.join(dir, "replica.db")
      fs.writeFileSync(replica, base)
      const rewritten = WalFrame.append(WalFrame.make({ salt1: 123, salt2: 456, bigEndian: true }), parsed.frames).wal
      fs.writeFileSync(`${replica}-wal`, WalFrame.encode(rewritten))

      const materialized = WalFrame.applyFrames(base, parsed.frames)

      for (const file of [source, replica]) {
        const db = new Database(file)
        expect(db.pragma("integrity_check", { simple: true })).toBe("ok")
        db.pragma("wal_checkpoint(TRUNCATE)")
        db.close()
      }
      const sourceBytes = fs.readFileSync(source)
      expect(fs.readFileSync(replica).equals(sourceBytes)).toBe(true)
      expect(Buffer.from(materialized).equals(sourceBytes)).toBe(true)
    }))

  it.scoped("truncating the WAL to n frames brings a database back to the state after frame n", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { base, wal } = makeSource(dir)
      const frames = Option.getOrThrow(WalFrame.parse(wal)).frames
      // The first commit after the base inserted row 2.
      const firstCommit = frames.findIndex((frame) => frame.commitSize !== 0) + 1
      const replica = path.join(dir, "reset.db")
      fs.writeFileSync(replica, base)
      fs.writeFileSync(`${replica}-wal`, wal.subarray(0, WalFrame.walSize(firstCommit)))
      const db = new Database(replica, { readonly: true })
      expect(db.prepare("SELECT count(*) AS n FROM t").get()).toEqual({ n: 2 })
      db.close()
    }))
})
