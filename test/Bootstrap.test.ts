/**
 * A new local database opens with the remote's current state (`bootstrap: "head"`, the default); the
 * generation's base only, until the first pull, stays available (`bootstrap: "base"`). Over the
 * in-process store and the real HTTP server on loopback.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as NodePath from "node:path"
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
