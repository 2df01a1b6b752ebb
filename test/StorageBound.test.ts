/**
 * Local storage follows the database, not its history: the synced copy folds confirmed frames into its
 * file past `maxWalFrames`, the draft copy folds its WAL the same way, and a pull rewrites only the pages
 * that can differ. Real SQLite files under a temp dir, the in-process store as remote.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as WalFrame from "../src/WalFrame.js"
import { Harness, freshName, layerStore, openClient, remoteQuery, tempDir } from "./support/engine.js"

/** Bytes of every local file of the database at `path` (copies, WALs, metadata, conflict log). */
const localBytes = (path: string) => {
  const dir = NodePath.dirname(path)
  const name = NodePath.basename(path)
  return Fs.readdirSync(dir)
    .filter((f) => f.startsWith(name))
    .reduce((n, f) => n + Fs.statSync(NodePath.join(dir, f)).size, 0)
}

/** Bytes this process has handed to write(2) so far (Linux). */
const written = () => {
  const line = Fs.readFileSync("/proc/self/io", "utf8").split("\n").find((l) => l.startsWith("wchar:"))!
  return Number(line.split(/\s+/)[1])
}

layer(layerStore, { excludeTestServices: true, timeout: 600_000 })("bounded local storage", (it) => {
  it.scoped("3000 single-row updates of a 16 KB database, pushed every 3: local files under 10 MB, no larger than after 1000", () =>
    Effect.gen(function*() {
      // One generation for the whole history: the server's default rolls would start a new one after about
      // 1000 frames, and what this measures is the client's own bound over a long generation.
      const store = yield* ServerStore.makeMemory({ generationGrowth: "never" })
      const remote = StoreRemote.make(store, freshName("bound"))
      const dir = yield* tempDir
      const path = NodePath.join(dir, "writer")
      const readerPath = NodePath.join(dir, "reader")
      const writer = yield* openClient(remote, path)
      yield* writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, pad TEXT)")
      yield* writer.execute("INSERT INTO t VALUES (1, 0, ?)", ["x".repeat(6000)])
      yield* writer.push
      const reader = yield* openClient(remote, readerPath)
      const sizes: Record<number, { writer: number; reader: number }> = {}
      for (let i = 1; i <= 3000; i++) {
        yield* writer.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        if (i % 3 === 0) yield* writer.push
        if (i % 60 === 0) yield* reader.pull
        if (i === 1000 || i === 3000) sizes[i] = { writer: localBytes(path), reader: localBytes(readerPath) }
      }
      const stats = yield* writer.stats
      // 16 KB database: the seed kept every one of the ~3000 frames (about 12 MB) in Synced's WAL.
      expect(stats.syncedFrame).toBeGreaterThan(2000)
      expect(stats.syncedWalBytes).toBeLessThanOrEqual(WalFrame.walSize(1000))
      expect(sizes[3000].writer).toBeLessThan(10_000_000)
      expect(sizes[3000].reader).toBeLessThan(10_000_000)
      // No growth with history: at most a WAL's bound of slack between the two measurements.
      expect(sizes[3000].writer).toBeLessThanOrEqual(sizes[1000].writer + WalFrame.walSize(0))
      expect(sizes[3000].reader).toBeLessThanOrEqual(sizes[1000].reader + WalFrame.walSize(0))
      expect(yield* reader.query("SELECT n FROM t")).toEqual([{ n: 3000 }])
      expect(yield* writer.query("SELECT n FROM t")).toEqual([{ n: 3000 }])
      expect(yield* remoteQuery(remote, "SELECT n FROM t")).toEqual([{ n: 3000 }])
      console.log(`storage after 1000 / 3000 updates: ${JSON.stringify(sizes)}`)
    }), 600_000)

  for (const rolling of [false, true]) {
    it.scoped(`with tiny WAL bounds${rolling ? ", across generation rolls" : ""}, folds on both copies keep every row`, () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("tiny"), { rolling })
      const dir = yield* tempDir
      const a = yield* openClient(remote, NodePath.join(dir, "a"), { maxWalFrames: 3 })
      const bPath = NodePath.join(dir, "b")
      const b = yield* openClient(remote, bPath, { maxWalFrames: 2 })
      yield* a.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
      yield* a.push
      yield* b.pull
      for (let i = 0; i < 25; i++) {
        yield* a.execute("INSERT INTO t VALUES (?, randomblob(?))", [`a-${i}`, 200 + (i % 5) * 1500])
        yield* b.execute("INSERT INTO t VALUES (?, randomblob(100))", [`b-${i}`])
        if (i % 3 === 0) yield* b.execute("UPDATE t SET v = randomblob(3000) WHERE k = ?", [`b-${i - 1}`])
        yield* (i % 2 === 0 ? a.sync : a.push)
        yield* (i % 4 === 0 ? b.sync : b.pull)
      }
      yield* b.sync
      yield* a.sync
      const expected = yield* remoteQuery(remote, "SELECT k, length(v) AS n FROM t ORDER BY k")
      expect(expected.length).toBe(50)
      expect(yield* a.query("SELECT k, length(v) AS n FROM t ORDER BY k")).toEqual(expected)
      expect(yield* b.query("SELECT k, length(v) AS n FROM t ORDER BY k")).toEqual(expected)
      expect((yield* b.stats).syncedWalBytes).toBeLessThanOrEqual(WalFrame.walSize(200))
      const metadata = JSON.parse(Fs.readFileSync(`${bPath}-info`, "utf8"))
      if (!rolling) expect(metadata.foldedFrame).toBeGreaterThan(0)
      for (const db of [a, b]) expect(yield* db.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
    }), 600_000)
  }

  it.scoped("a pull of 20 changed rows on a 16 MB database writes a fraction of it, and storage stays about 2x the database", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("changed"))
      const dir = yield* tempDir
      const writer = yield* openClient(remote, NodePath.join(dir, "writer"))
      yield* writer.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, n INTEGER, data BLOB)")
      yield* writer.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 4000) INSERT INTO big SELECT i, 0, randomblob(3900) FROM s"
      )
      yield* writer.push
      const path = NodePath.join(dir, "reader")
      const reader = yield* openClient(remote, path)
      yield* reader.pull
      yield* reader.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
      yield* reader.execute("INSERT INTO notes (body) VALUES ('pending while pulling')")
      for (let i = 0; i < 20; i++) yield* writer.execute("UPDATE big SET n = n + 1 WHERE id = ?", [1 + i * 200])
      yield* writer.push
      const before = written()
      yield* reader.pull
      const bytes = written() - before
      expect(yield* reader.query("SELECT sum(n) AS s FROM big")).toEqual([{ s: 20 }])
      expect(yield* reader.query("SELECT body FROM notes")).toEqual([{ body: "pending while pulling" }])
      // The seed copied all 16 MB; now: the frames (about 20 pages and the table's interior pages), the
      // copy transaction and its fold.
      expect(bytes).toBeLessThan(2_000_000)
      const database = Fs.statSync(`${path}-synced`).size
      expect(database).toBeGreaterThan(16_000_000)
      expect(localBytes(path)).toBeLessThan(2 * database + 2 * WalFrame.walSize(1000))
      expect(yield* reader.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
    }), 600_000)
})
