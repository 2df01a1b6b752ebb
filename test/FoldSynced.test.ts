/**
 * The fold of the synced copy after a push reads its WAL a chunk at a time through a reused buffer and
 * writes the newest copy of each page once: a WAL of several chunks, whose pages are written again by a
 * later transaction in another chunk, folds into exactly the remote's image. Real SQLite files, the
 * in-process store as remote (one generation).
 */
import { expect, layer } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as WalFrame from "../src/WalFrame.js"
import { foldWrites } from "../src/internal/engine/fold.js"
import { freshName, openClient, remoteState, tempDir } from "./support/engine.js"

layer(Layer.empty, { excludeTestServices: true, timeout: 300_000 })("fold of the synced copy", (it) => {
  it("foldWrites: the newest frame of each page within the last commit's size, none without a commit", () => {
    const frames = [
      { pgno: 1, commitSize: 0 },
      { pgno: 5, commitSize: 0 },
      { pgno: 1, commitSize: 5 },
      { pgno: 2, commitSize: 0 },
      { pgno: 6, commitSize: 0 },
      { pgno: 2, commitSize: 3 },
      { pgno: 9, commitSize: 0 }
    ]
    expect(foldWrites(frames, 3)).toEqual({ pages: 5, writes: [false, true, true] })
    // the second commit shrinks the database to 3 pages: pages 5 and 6 are cut off, not written
    expect(foldWrites(frames, 7)).toEqual({ pages: 3, writes: [false, false, true, false, false, true, false] })
    expect(foldWrites(frames.slice(0, 2), 2)).toEqual({ pages: 0, writes: [false, false] })
  })

  it.scoped("a WAL of several chunks whose pages a later transaction rewrites folds into the remote's image", () =>
    Effect.gen(function*() {
      const store = yield* ServerStore.makeMemory({ generationGrowth: "never" })
      const remote = StoreRemote.make(store, freshName("fold-chunks"))
      const dir = yield* tempDir
      const path = NodePath.join(dir, "writer")
      // bound 2000 (a transaction of more than 1000 frames is folded whole): the first push stays in the
      // WAL, the second outgrows it, and the fold reads ~3000 frames in two chunks and a part
      const writer = yield* openClient(remote, path, { maxWalFrames: 2000 })
      yield* writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, data BLOB)")
      yield* writer.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000) INSERT INTO t SELECT i, 0, randomblob(1400) FROM s"
      )
      yield* writer.push
      const first = yield* writer.stats
      expect(first.syncedWalBytes).toBeGreaterThan(WalFrame.walSize(1000))
      yield* writer.execute("UPDATE t SET n = n + 1")
      yield* writer.push
      const stats = yield* writer.stats
      expect(stats.syncedFrame).toBeGreaterThan(2 * 1024)
      // folded whole: nothing left in the WAL, the metadata counts every frame as folded
      expect(stats.syncedWalBytes).toBe(0)
      const metadata = JSON.parse(Fs.readFileSync(`${path}-info`, "utf8"))
      expect(metadata.foldedFrame).toBe(stats.syncedFrame)
      expect(metadata.foldInProgress).not.toBe(true)
      expect(Fs.existsSync(`${path}-synced-wal.next`)).toBe(false)

      // the synced copy's file is the remote's image byte for byte (but the header's WAL-mode bytes)
      const image = yield* remoteState(remote)
      image.db.close()
      const file = Uint8Array.from(Fs.readFileSync(`${path}-synced`))
      const expected = WalFrame.applyFrames(image.base, image.frames)
      expect(file.byteLength).toBe(expected.byteLength)
      file.set(expected.subarray(18, 20), 18)
      expect(Buffer.compare(Buffer.from(file), Buffer.from(expected))).toBe(0)
      // (a copy of it, opened in rollback-journal mode: the client keeps its own connection)
      file[18] = 1
      file[19] = 1
      const synced = new BetterSqlite3(Buffer.from(file))
      try {
        expect(synced.prepare("SELECT count(*) AS c, sum(n) AS s FROM t").get()).toEqual({ c: 3000, s: 3000 })
        expect(synced.pragma("integrity_check", { simple: true })).toBe("ok")
      } finally {
        synced.close()
      }

      // and the copy goes on from there: another push, another replica
      yield* writer.execute("UPDATE t SET n = n + 1 WHERE id <= 10")
      yield* writer.push
      const reader = yield* openClient(remote, NodePath.join(dir, "reader"))
      yield* reader.pull
      expect(yield* reader.query("SELECT sum(n) AS s FROM t")).toEqual([{ s: 3010 }])
      expect(yield* writer.query("SELECT sum(n) AS s FROM t")).toEqual([{ s: 3010 }])
    }))

  it.scoped("a roll after folds (the file past frame 0, the WAL holding the last transaction) makes Synced's file the next base byte for byte, whatever lies beside it", () =>
    Effect.gen(function*() {
      // a new generation every 6 frames; the reader folds its WAL past 2 frames, keeping the last transaction
      const store = yield* ServerStore.makeMemory({ generationFrames: 6 })
      const remote = StoreRemote.make(store, freshName("fold-roll"))
      const dir = yield* tempDir
      const writer = yield* openClient(remote, NodePath.join(dir, "writer"))
      const path = NodePath.join(dir, "reader")
      yield* writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
      yield* writer.push
      const reader = yield* openClient(remote, path, { maxWalFrames: 2 })
      // A base a re-bootstrap left beside Synced before its flag (a metadata write that failed): never taken
      // for a roll's.
      Fs.writeFileSync(`${path}-synced.next`, new Uint8Array(2 * 4096).fill(7))
      let rollsFromFoldedWal = 0
      for (let i = 1; i <= 24; i++) {
        yield* writer.execute("INSERT INTO t VALUES (?, randomblob(?))", [i, 200 + 700 * (i % 4)])
        yield* writer.push
        const before = JSON.parse(Fs.readFileSync(`${path}-info`, "utf8"))
        yield* reader.pull
        const after = yield* reader.stats
        if (after.generation > before.generation && after.syncedFrame === 0) {
          // rolled, and nothing of the new generation yet: Synced's file is its base as the remote has it
          expect(Buffer.compare(Fs.readFileSync(`${path}-synced`), yield* remote.export(after.generation))).toBe(0)
          expect(after.syncedWalBytes).toBe(0)
          if ((before.foldedFrame ?? 0) > 0 && before.syncedFrame > before.foldedFrame) rollsFromFoldedWal++
        }
        expect(yield* reader.query("SELECT count(*) AS n FROM t")).toEqual([{ n: i }])
      }
      // the case in the title happened
      expect(rollsFromFoldedWal).toBeGreaterThan(0)
      expect(Fs.existsSync(`${path}-synced.next`)).toBe(false)
      expect(yield* reader.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
      expect(yield* reader.query("SELECT id, hex(data) AS h FROM t ORDER BY id")).toEqual(
        yield* writer.query("SELECT id, hex(data) AS h FROM t ORDER BY id")
      )
    }))
})
