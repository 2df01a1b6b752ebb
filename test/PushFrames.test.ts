/**
 * How a push reads and sends its frames: read from a real SQLite WAL in wire form into a buffer reused from
 * push to push (`Files.readWireFrames`, `Scratch.withBuffer`), they encode as the frames read the usual way
 * encode (`encodeWire` answers a view of that buffer, not a copy), and frames laid out any other way are
 * encoded as before.
 */
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import * as Effect from "effect/Effect"
import fc from "fast-check"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Files from "../src/internal/sqlite/files.js"
import * as Scratch from "../src/internal/sqlite/scratch.js"
import * as WalFrame from "../src/WalFrame.js"

/** A real database in WAL mode whose WAL holds `rows` rows' worth of frames (never checkpointed). */
const walWith = (rows: number) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "push-frames-"))
  const file = path.join(dir, "db")
  const db = new Database(file)
  db.pragma("journal_mode = WAL")
  db.pragma("wal_autocheckpoint = 0")
  db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
  const insert = db.prepare("INSERT INTO t (v) VALUES (?)")
  db.transaction(() => {
    for (let i = 0; i < rows; i++) insert.run(`row ${i} `.repeat(20))
  })()
  return { dir, file, db, frames: (fs.statSync(Files.walPath(file)).size - WalFrame.WAL_HEADER_SIZE) / WalFrame.FRAME_SIZE }
}

const bytesEqual = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

describe("PushFrames", () => {
  it.effect("frames read in wire form encode as frames read the usual way, as a view of the reused buffer", () =>
    Effect.gen(function*() {
      const wal = walWith(300)
      try {
        expect(wal.frames).toBeGreaterThan(10)
        const property = fc.asyncProperty(
          fc.integer({ min: 0, max: wal.frames - 1 }),
          fc.integer({ min: 1, max: wal.frames }),
          async (skip, wanted) => {
            const count = Math.min(wanted, wal.frames - skip)
            await Effect.runPromise(Scratch.withBuffer(count * WalFrame.FRAME_SIZE, (scratch) =>
              Effect.gen(function*() {
                // whatever an earlier user left in the buffer is overwritten
                scratch.fill(0xa5)
                const usual = yield* Files.readWalFrames(wal.file, count, skip)
                const wire = yield* Files.readWireFrames(wal.file, count, skip, scratch)
                expect(wire.map((f) => [f.pgno, f.commitSize])).toEqual(usual.map((f) => [f.pgno, f.commitSize]))
                const encoded = WalFrame.encodeWire(wire)
                expect(bytesEqual(encoded, WalFrame.encodeWire([...usual]))).toBe(true)
                expect(encoded.buffer).toBe(scratch.buffer)
                // a part of them (as a remote sends them a request at a time) is a view too
                const part = WalFrame.encodeWire(wire.slice(Math.floor(count / 2)))
                expect(part.buffer).toBe(scratch.buffer)
                expect(bytesEqual(part, WalFrame.encodeWire(usual.slice(Math.floor(count / 2))))).toBe(true)
                // and the wire form decodes to the same frames
                const decoded = WalFrame.decodeWire(encoded)
                expect(decoded._tag).toBe("Right")
                if (decoded._tag === "Right") expect(decoded.right.every((f, i) => WalFrame.equals(f, usual[i]!))).toBe(true)
              })
            ))
          }
        )
        yield* Effect.promise(() => fc.assert(property, { numRuns: 25 }))
      } finally {
        wal.db.close()
        fs.rmSync(wal.dir, { recursive: true, force: true })
      }
    }))

  it("frames laid out otherwise (salts and checksums left, out of order, pages elsewhere) are copied, as before", () => {
    const wal = walWith(50)
    try {
      const raw = new Uint8Array(fs.readFileSync(Files.walPath(wal.file)).subarray(WalFrame.WAL_HEADER_SIZE))
      const frames: Array<WalFrame.Frame> = []
      for (let i = 0; i < wal.frames; i++) {
        const view = new DataView(raw.buffer, raw.byteOffset + i * WalFrame.FRAME_SIZE, WalFrame.FRAME_SIZE)
        frames.push({
          pgno: view.getUint32(0),
          commitSize: view.getUint32(4),
          page: raw.subarray(i * WalFrame.FRAME_SIZE + WalFrame.FRAME_HEADER_SIZE, (i + 1) * WalFrame.FRAME_SIZE)
        })
      }
      const copied = (fs: ReadonlyArray<WalFrame.Frame>) => {
        const encoded = WalFrame.encodeWire(fs)
        expect(encoded.buffer).not.toBe(raw.buffer)
        const decoded = WalFrame.decodeWire(encoded)
        expect(decoded._tag === "Right" && decoded.right.every((f, i) => WalFrame.equals(f, fs[i]!))).toBe(true)
        // salts and checksums go as zero
        for (let i = 0; i < fs.length; i++) {
          expect([...encoded.subarray(i * WalFrame.FRAME_SIZE + 8, i * WalFrame.FRAME_SIZE + 24)].every((b) => b === 0)).toBe(true)
        }
      }
      // the file's own layout: its salts and checksums are not zero
      copied(frames)
      copied([frames[1]!, frames[0]!, ...frames.slice(2)])
      copied(frames.map((f) => ({ ...f, page: f.page.slice() })))
      copied(frames.map((f, i) => (i === 3 ? { ...f, commitSize: f.commitSize + 1 } : f)))
      expect(WalFrame.encodeWire([]).byteLength).toBe(0)
    } finally {
      wal.db.close()
      fs.rmSync(wal.dir, { recursive: true, force: true })
    }
  })

  it.effect("a buffer is lent to one user at a time and kept for the next", () =>
    Effect.gen(function*() {
      const size = 1 << 16
      const first = yield* Scratch.withBuffer(size, (buffer) => Effect.succeed(buffer))
      const again = yield* Scratch.withBuffer(size, (buffer) => Effect.succeed(buffer))
      expect(again).toBe(first)
      // two at once: two buffers
      const [a, b] = yield* Scratch.withBuffer(size, (x) => Scratch.withBuffer(size, (y) => Effect.succeed([x, y] as const)))
      expect(a).not.toBe(b)
      // a larger size than any kept: a buffer of that size
      const large = yield* Scratch.withBuffer(size * 4, (buffer) => Effect.succeed(buffer.byteLength))
      expect(large).toBeGreaterThanOrEqual(size * 4)
      // given back even when its user fails: the next user gets it
      let lent: Uint8Array | undefined
      const failed = yield* Effect.either(Scratch.withBuffer(size, (buffer) => {
        lent = buffer
        return Effect.fail("boom")
      }))
      expect(failed._tag).toBe("Left")
      expect(yield* Scratch.withBuffer(size, (buffer) => Effect.succeed(buffer))).toBe(lent)
    }))
})
