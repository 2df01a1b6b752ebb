/**
 * A new local database opens with the remote's current state (`bootstrap: "head"`, the default); the
 * generation's base only, until the first pull, stays available (`bootstrap: "base"`). Over the
 * in-process store and the real HTTP server on loopback.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as NodePath from "node:path"
import * as WalFrame from "../src/WalFrame.js"
import { Harness, freshName, layerHttp, layerStore, openClient, remoteQuery, tempDir } from "./support/engine.js"

for (const [name, harnessLayer] of [["in-process store", layerStore], ["HTTP", layerHttp]] as const) {
  layer(harnessLayer, { excludeTestServices: true, timeout: 120_000 })(`bootstrap over ${name}`, (it) => {
    it.scoped("a new path opens with the remote's rows, across rolls; bootstrap \"base\" opens with the base only", () =>
      Effect.gen(function*() {
        const harness = yield* Harness
        for (const rolling of [false, true]) {
          const remote = yield* harness.remote(freshName("boot"), { rolling })
          const dir = yield* tempDir
          const writer = yield* openClient(remote, NodePath.join(dir, `writer-${rolling}`))
          yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
          for (let i = 0; i < 12; i++) {
            yield* writer.execute("INSERT INTO t VALUES (?, randomblob(1000))", [`k-${i}`])
            yield* writer.push
          }
          const expected = yield* remoteQuery(remote, "SELECT k, hex(v) AS v FROM t ORDER BY k")
          expect(expected.length).toBe(12)

          const fresh = yield* openClient(remote, NodePath.join(dir, `fresh-${rolling}`))
          // No pull: the open brought the remote's current state.
          expect(yield* fresh.query("SELECT k, hex(v) AS v FROM t ORDER BY k")).toEqual(expected)
          expect((yield* fresh.stats).pendingChanges).toBe(0)
          // And it is a replica like any other: it writes, pushes, pulls.
          yield* fresh.execute("INSERT INTO t VALUES ('fresh', x'00')")
          expect(yield* fresh.push).toBe(true)
          yield* writer.pull
          expect(yield* writer.query("SELECT k FROM t WHERE k = 'fresh'")).toEqual([{ k: "fresh" }])

          const seed = yield* openClient(remote, NodePath.join(dir, `seed-${rolling}`), { bootstrap: "base" })
          const { generation } = yield* seed.stats
          const tableInBase = generation > 1
          // The base of the current generation: without rolls, the empty database of generation 1.
          expect((yield* seed.query("SELECT name FROM sqlite_master WHERE name = 't'")).length).toBe(tableInBase ? 1 : 0)
          yield* seed.pull
          expect(yield* seed.query("SELECT count(*) AS n FROM t")).toEqual([{ n: 13 }])
        }
      }))
  })
}

layer(layerHttp, { excludeTestServices: true, timeout: 300_000 })("bootstrap from the head snapshot over HTTP", (it) => {
  it.scoped("a fresh replica downloads about one database, not the generation's history, and has the data on open", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("snap"))
      const dir = yield* tempDir
      const writer = yield* openClient(remote, NodePath.join(dir, "writer"))
      yield* writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, pad TEXT)")
      yield* writer.execute("INSERT INTO t VALUES (1, 0, ?)", ["x".repeat(6000)])
      yield* writer.push
      for (let i = 0; i < 100; i++) {
        yield* writer.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        yield* writer.push
      }
      const { syncedFrame } = yield* writer.stats
      const history = syncedFrame * WalFrame.FRAME_SIZE

      const fresh = yield* openClient(remote, NodePath.join(dir, "fresh"))
      expect(yield* fresh.query("SELECT n FROM t")).toEqual([{ n: 100 }])
      // The server's database at the head (the replica's own copy also holds its change-capture tables).
      const [{ pages }] = yield* remoteQuery<{ pages: number }>(remote, "SELECT page_count AS pages FROM pragma_page_count")
      const database = pages * WalFrame.PAGE_SIZE
      const stats = yield* fresh.stats
      // The snapshot at the head, and nothing to pull after it.
      expect(stats.syncedFrame).toBe(syncedFrame)
      expect(stats.bytesReceived).toBeGreaterThanOrEqual(database)
      expect(stats.bytesReceived).toBeLessThanOrEqual(database + 2 * WalFrame.FRAME_SIZE)
      expect(history).toBeGreaterThan(10 * database)
      console.log(`head bootstrap: ${stats.bytesReceived} bytes received for a ${database}-byte database, history ${history} bytes`)
      // A replica like any other.
      yield* fresh.execute("UPDATE t SET n = n + 1 WHERE id = 1")
      expect(yield* fresh.push).toBe(true)
      yield* writer.pull
      expect(yield* writer.query("SELECT n FROM t")).toEqual([{ n: 101 }])
    }))
})
