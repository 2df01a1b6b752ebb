/**
 * Waiting pulls (`Prefer: wait=N`): a real server on a loopback port, the client's HTTP remote, real
 * SQLite files for the embedded store.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schedule from "effect/Schedule"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncProtocol from "../src/SyncProtocol.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"

const frame = (pgno: number, commitSize: number): WalFrame.Frame => ({
  pgno,
  commitSize,
  page: new Uint8Array(WalFrame.PAGE_SIZE).fill(pgno % 251)
})

const quiet = Logger.withMinimumLogLevel(LogLevel.Warning)

const fast = Schedule.intersect(Schedule.spaced(10), Schedule.recurs(2))

/** A server on a free loopback port over `store`; answers its base URL and the database URL of `name`. */
const startServer = (store: Layer.Layer<ServerStore.ServerStore, ServerStore.StoreError>, options: SyncServer.NodeOptions = {}) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(SyncServer.layerNode({ port: 0, ...options }).pipe(Layer.provideMerge(store))).pipe(quiet)
    const base = yield* Effect.provide(SyncServer.baseUrl, context)
    return { base, context, url: (name: string) => `${base}/db/${name}`, store: Context.get(context, ServerStore.ServerStore) }
  })

const remote = (url: string) => SyncRemote.makeHttp({ url, retrySchedule: fast })


describe("waiting pulls over HTTP", () => {
  it.scopedLive("a pull at the head returns another client's push as soon as it commits", () =>
    Effect.gen(function*() {
      const server = yield* startServer(ServerStore.layerMemory({ integrityCheck: "off" }))
      const reader = yield* remote(server.url("live"))
      const writer = yield* remote(server.url("live"))
      expect(yield* reader.info).toMatchObject({ generation: 1, maxFrameNo: 0, maxWaitSeconds: 30 })
      const started = Date.now()
      const waiting = yield* Effect.fork(reader.pull(1, 1, 129, { waitSeconds: 20 }))
      yield* Effect.sleep(300)
      const pushedAt = Date.now()
      expect(yield* writer.push(1, 1, 3, [frame(1, 0), frame(2, 2)])).toMatchObject({ _tag: "Ok", maxFrameNo: 2 })
      const result = yield* Fiber.join(waiting)
      const returnedAt = Date.now()
      expect(result._tag).toBe("Frames")
      expect(result._tag === "Frames" ? result.frames.map((f) => f.pgno) : []).toEqual([1, 2])
      // Returned after the push, well before the wait ran out.
      expect(returnedAt).toBeGreaterThanOrEqual(pushedAt)
      expect(returnedAt - started).toBeLessThan(10_000)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("a pull that finds nothing waits its time out, then answers checkpoint_needed", () =>
    Effect.gen(function*() {
      const server = yield* startServer(ServerStore.layerMemory({ integrityCheck: "off" }))
      yield* Effect.promise(() => H.request(server.base, { path: "/db/idle/info" }))
      const started = Date.now()
      const answer = yield* Effect.promise(() =>
        H.request(server.base, { path: "/db/idle/sync/1/1/129", headers: { prefer: "wait=1" } })
      )
      const took = Date.now() - started
      expect(answer.status).toBe(400)
      expect(H.json(answer)).toEqual({ status: "checkpoint_needed", generation: 1, max_frame_no: 0 })
      expect(answer.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBe("wait=1")
      expect(took).toBeGreaterThanOrEqual(950)
      // Without the header: at once, and no Preference-Applied.
      const plain = yield* Effect.promise(() => H.request(server.base, { path: "/db/idle/sync/1/1/129" }))
      expect(plain.status).toBe(400)
      expect(plain.headers[SyncProtocol.HEADER_PREFERENCE_APPLIED]).toBeUndefined()
    }))
})
