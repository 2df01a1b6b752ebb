/**
 * The raw pusher (test/support/rawPusher.ts) is the client of the server reliability suites and of the
 * load benchmark: what they blame on the server must not be its own doing. Against a real server on
 * 127.0.0.1 with a disk store.
 */
import { expect, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Fs from "node:fs"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncServer from "../src/SyncServer.js"
import * as H from "./support/http.js"
import { Pusher, verify } from "./support/rawPusher.js"

class TestServer extends Context.Tag("test/RawPusher/TestServer")<TestServer, { readonly base: string }>() {}

const serverLayer = Layer.unwrapScoped(Effect.gen(function*() {
  const directory = yield* Effect.acquireRelease(
    Effect.sync(() => H.tempDir("raw-pusher")),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )
  return Layer.effect(TestServer, Effect.map(SyncServer.baseUrl, (base) => ({ base }))).pipe(
    Layer.provide(SyncServer.layerNode({ port: 0 })),
    Layer.provide(ServerStore.layer({ directory, integrityCheck: "quick_check", generationGrowth: "never" })),
    Layer.provide(Logger.replace(Logger.defaultLogger, Logger.none))
  )
}))

/** The pusher pulls 128 frames a request; the server answers without looking at transaction boundaries. */
const PULL_FRAMES = 128

layer(serverLayer, { excludeTestServices: true })("the raw pusher", (it) => {
  it.effect("a pull answer ending inside a transaction leaves its replica at the server's head, and its next push keeps the other's row", () =>
    Effect.flatMap(TestServer, ({ base }) =>
        Effect.promise(async () => {
          let large = false
          // `random` decides first whether a transaction is large (below the share), then its payload size.
          const writer = new Pusher({ base: () => base, database: "cut", id: "writer", largeShare: 0.5, random: () => (large ? 0 : 0.99) })
          const reader = new Pusher({ base: () => base, database: "cut", id: "reader", largeShare: 0, random: () => 0.99 })
          await writer.step()
          await reader.resync()
          const readerHead = reader.committed.head
          // Small transactions, then a large one (about 100 frames) that the reader's first pull answer cuts.
          while (writer.committed.head < readerHead + PULL_FRAMES - 40) await writer.step()
          const largeFrom = writer.committed.head + 1
          large = true
          expect(await writer.step()).toBe(true)
          large = false
          const largeTo = writer.committed.head
          expect(largeFrom).toBeLessThanOrEqual(readerHead + PULL_FRAMES)
          expect(largeTo).toBeGreaterThan(readerHead + PULL_FRAMES)

          await reader.catchUp()
          const server = await H.snapshot(base, "cut")
          expect(reader.committed.head).toBe(server.frames.length)
          expect(Buffer.from(reader.committed.file).equals(Buffer.from(server.file))).toBe(true)

          expect(await reader.step()).toBe(true)
          expect(reader.stats.unexpected).toEqual([])
          expect(reader.stats.acked).toBe(1)
          const verdict = await verify(base, "cut", [writer, reader])
          expect(verdict.missing).toEqual([])
          expect(verdict.duplicates).toEqual([])
          expect(verdict.framesDiffering).toBe(0)
          expect(verdict.integrity).toBe("ok")
          expect(verdict.rows).toBe(writer.stats.acked + reader.stats.acked)
        })), 60_000)
})
