import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Files from "../src/internal/sqlite/files.js"
import * as LocalCopies from "../src/LocalCopies.js"
import * as WalFrame from "../src/WalFrame.js"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "local-copies-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

const tables = (copy: LocalCopies.Copy) =>
  Effect.flatMap(copy.client, (sql) =>
    sql<{ name: string }>`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`
  ).pipe(Effect.map((rows) => rows.map((r) => r.name)))

describe("LocalCopies", () => {
  it.scoped("Synced closes without checkpointing; its WAL can be cut back and extended while closed", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const synced = yield* LocalCopies.make("synced", NodePath.join(dir, "db-synced"))
      const sql = yield* synced.open
      yield* sql`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`
      yield* sql`INSERT INTO t (v) VALUES ('a')`
      yield* synced.close
      const wal = Option.getOrThrow(yield* Files.readWal(synced.filename))
      expect(wal.frames.length).toBeGreaterThan(0)
      const frames = wal.frames.map((f) => ({ ...f, page: new Uint8Array(f.page) }))
      const baseBytes = Fs.readFileSync(synced.filename)

      // Reset: the WAL cut back to nothing brings back the base (no table).
      yield* Files.truncateWal(synced.filename, 0)
      yield* synced.open
      expect(yield* tables(synced)).toEqual([])
      yield* synced.close
      expect(Buffer.compare(Fs.readFileSync(synced.filename), baseBytes)).toBe(0)

      // Frames written into the WAL while closed are recovered on open.
      const count = yield* Files.appendWal(synced.filename, 0, frames)
      expect(count?.frames).toBe(frames.length)
      yield* synced.open
      expect(yield* tables(synced)).toEqual(["t"])
      const client = yield* synced.client
      expect(yield* client`SELECT v FROM t`).toEqual([{ v: "a" }])

      // SQLite's own next frames continue after ours.
      yield* client`INSERT INTO t (v) VALUES ('b')`
      yield* synced.close
      const after = Option.getOrThrow(yield* Files.readWal(synced.filename))
      expect(after.frames.length).toBeGreaterThan(frames.length)
      for (let i = 0; i < frames.length; i++) expect(WalFrame.equals(after.frames[i], frames[i])).toBe(true)

      // Materializing base + frames gives what applyFrames gives.
      const target = NodePath.join(dir, "materialized")
      yield* Files.materialize(synced.filename, after.frames, target)
      expect(Buffer.compare(Fs.readFileSync(target), WalFrame.applyFrames(baseBytes, after.frames))).toBe(0)
      const copy = yield* LocalCopies.make("draft", target)
      const copyClient = yield* copy.open
      expect(yield* copyClient`SELECT v FROM t ORDER BY id`).toEqual([{ v: "a" }, { v: "b" }])
    }))

  it.scoped("the WAL tail after a known prefix is read and validated alone; prefix + tail materialize like the whole", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const synced = yield* LocalCopies.make("synced", NodePath.join(dir, "db-synced"))
      const sql = yield* synced.open
      yield* sql`CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`
      for (let i = 0; i < 5; i++) yield* sql`INSERT INTO t (v) VALUES (randomblob(5000))`
      const prefixFrames = Option.getOrThrow(yield* Files.readWal(synced.filename)).frames.length
      for (let i = 0; i < 3; i++) yield* sql`UPDATE t SET v = randomblob(3000) WHERE id = ${i + 1}`
      yield* sql`DELETE FROM t WHERE id = 5`
      yield* synced.close
      const whole = Option.getOrThrow(yield* Files.readWal(synced.filename))
      const prefix = yield* Files.prefixState(synced.filename, prefixFrames)
      expect(prefix?.frames).toBe(prefixFrames)
      const tail = yield* Files.readWalTail(synced.filename, prefix)
      expect(tail.frames.length).toBe(whole.frames.length - prefixFrames)
      tail.frames.forEach((f, i) => expect(WalFrame.equals(f, whole.frames[prefixFrames + i])).toBe(true))
      expect(tail.state).toEqual({ frames: whole.frames.length, header: whole.header, checksum: whole.checksum })
      const trusted = yield* Files.readWalFrames(synced.filename, prefixFrames)
      trusted.forEach((f, i) => expect(WalFrame.equals(f, whole.frames[i])).toBe(true))

      const target = NodePath.join(dir, "copy")
      yield* Files.materialize(synced.filename, trusted, target)
      yield* Files.applyInPlace(target, tail.frames)
      const base = Fs.readFileSync(synced.filename)
      expect(Buffer.compare(Fs.readFileSync(target), WalFrame.applyFrames(base, whole.frames))).toBe(0)

      // A corrupted tail frame ends the tail there (as SQLite's recovery would).
      const wal = Fs.readFileSync(Files.walPath(synced.filename))
      wal[WalFrame.walSize(prefixFrames) + WalFrame.FRAME_HEADER_SIZE + 100] ^= 0xff
      Fs.writeFileSync(Files.walPath(synced.filename), wal)
      expect((yield* Files.readWalTail(synced.filename, prefix)).frames).toEqual([])
    }))
})
