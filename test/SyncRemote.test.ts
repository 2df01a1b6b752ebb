import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schedule from "effect/Schedule"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"

interface Seen {
  readonly method: string
  readonly url: string
  readonly auth: string | undefined
  readonly bytes: number
}

/** A scripted HTTP server: answers come from `answer`, every request is recorded. */
const scripted = (answer: (seen: Seen, index: number) => { status: number; body?: string | Uint8Array }) =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<{ url: string; seen: Array<Seen>; server: Http.Server }>((resolve) => {
        const seen: Array<Seen> = []
        const server = Http.createServer((req, res) => {
          const chunks: Array<Buffer> = []
          req.on("data", (c: Buffer) => chunks.push(c))
          req.on("end", () => {
            const entry = { method: req.method!, url: req.url!, auth: req.headers.authorization, bytes: Buffer.concat(chunks).byteLength }
            seen.push(entry)
            const { body, status } = answer(entry, seen.length - 1)
            res.writeHead(status)
            res.end(body === undefined ? undefined : body)
          })
        })
        server.listen(0, "127.0.0.1", () =>
          resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/db/x`, seen, server }))
      })
    ),
    ({ server }) => Effect.sync(() => {
      server.closeAllConnections()
      server.close()
    })
  )

const fast = Schedule.intersect(Schedule.spaced(1), Schedule.recurs(3))

const remote = (url: string, authToken?: string) =>
  SyncRemote.makeHttp({ url, authToken, retrySchedule: fast })

const frame = (pgno: number, commitSize: number): WalFrame.Frame => ({
  pgno,
  commitSize,
  page: new Uint8Array(WalFrame.PAGE_SIZE).fill(pgno % 251)
})

describe("SyncRemote.layerHttp", () => {
  it.scopedLive("retries 503 and transport failures with the schedule, then succeeds", () =>
    Effect.gen(function*() {
      const server = yield* scripted((_, i) =>
        i < 2 ? { status: 503, body: `{"error":"busy"}` } : { status: 200, body: `{"current_generation":3}` })
      const r = yield* remote(server.url, "secret")
      expect(yield* r.info).toEqual({ generation: 3 })
      expect(server.seen.map((s) => [s.method, s.url, s.auth])).toEqual(
        Array(3).fill(["GET", "/db/x/info", "Bearer secret"])
      )
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("4xx answers are final and typed; protocol violations are RemoteError Protocol", () =>
    Effect.gen(function*() {
      const server = yield* scripted((seen) =>
        seen.url.endsWith("/info")
          ? { status: 401, body: `{"error":"unauthorized","message":"bad token"}` }
          : seen.url.startsWith("/db/x/export/9")
          ? { status: 410, body: `{"error":"generation_gone"}` }
          : seen.url.startsWith("/db/x/sync/1/5/")
          ? { status: 400, body: `{"status":"checkpoint_needed","generation":2,"max_frame_no":4}` }
          : { status: 200, body: new Uint8Array(100) })
      const r = yield* remote(server.url)
      const unauthorized = yield* Effect.flip(r.info)
      expect(unauthorized).toMatchObject({ _tag: "RemoteError", reason: "Unauthorized", status: 401 })
      expect(unauthorized.message).toContain("bad token")
      expect(yield* Effect.flip(r.export(9))).toMatchObject({ _tag: "RemoteError", reason: "GenerationGone" })
      expect(yield* r.pull(1, 5, 133)).toEqual({ _tag: "CheckpointNeeded", generation: 2, maxFrameNo: 4 })
      expect(yield* Effect.flip(r.pull(1, 1, 129))).toMatchObject({ _tag: "RemoteError", reason: "Protocol" })
      expect(server.seen.length).toBe(4)
      expect(server.seen[0].auth).toBeUndefined()
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("nothing listening: NetworkError after the retries", () =>
    Effect.gen(function*() {
      const server = yield* scripted(() => ({ status: 200 }))
      const url = server.url
      yield* Effect.promise(() => new Promise<void>((r) => {
        server.server.closeAllConnections()
        server.server.close(() => r())
      }))
      const r = yield* remote(url)
      expect(yield* Effect.flip(r.info)).toMatchObject({ _tag: "NetworkError", reason: "Transport" })
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  for (const [name, layer] of [["undici", NodeHttpClient.layerUndici], ["fetch", FetchHttpClient.layer]] as const) {
    it.scopedLive(`transport failures name their cause once, with the URL once (${name})`, () =>
      Effect.gen(function*() {
        const server = yield* scripted(() => ({ status: 200, body: `{"current_generation":1}` }))
        const tls = yield* Effect.flip(remote(server.url.replace("http://", "https://")).pipe(Effect.flatMap((r) => r.info)))
        const closed = yield* scripted(() => ({ status: 200 }))
        yield* Effect.promise(() => new Promise<void>((r) => closed.server.close(() => r())))
        const refused = yield* Effect.flip(remote(closed.url).pipe(Effect.flatMap((r) => r.info)))
        const https = server.url.replace("http://", "https://")
        expect(tls).toMatchObject({ _tag: "NetworkError", reason: "Transport" })
        expect(tls.message).toBe(`GET ${https}/info: TLS handshake failed: the server does not speak https (try http://)`)
        expect(refused.message).toBe(`GET ${closed.url}/info: connection refused (is the server running on that host and port?)`)
      }).pipe(Effect.provide(layer)))
  }

  it.scopedLive("a push is sent in batches of 128 frames with each answer's baton in the next URL", () =>
    Effect.gen(function*() {
      const server = yield* scripted((seen, i) => {
        const [, , , , , start, end] = seen.url.split("/")
        void start
        return {
          status: 200,
          body: JSON.stringify({ status: "ok", generation: 1, max_frame_no: Number(end) - 1, ...(i < 2 ? { baton: `b${i}` } : {}) })
        }
      })
      const r = yield* remote(server.url)
      const frames = Array.from({ length: 300 }, (_, i) => frame(i + 1, i === 299 ? 300 : 0))
      const result = yield* r.push(1, 1, 301, frames)
      expect(result).toMatchObject({ _tag: "Ok", maxFrameNo: 300 })
      expect(server.seen.map((s) => [s.method, s.url, s.bytes])).toEqual([
        ["POST", "/db/x/sync/1/1/129", 128 * WalFrame.FRAME_SIZE],
        ["POST", "/db/x/sync/1/129/257/b0", 128 * WalFrame.FRAME_SIZE],
        ["POST", "/db/x/sync/1/257/301/b1", 44 * WalFrame.FRAME_SIZE]
      ])
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("a conflict ends the push at once", () =>
    Effect.gen(function*() {
      const server = yield* scripted(() => ({ status: 200, body: `{"status":"conflict","generation":1,"max_frame_no":7}` }))
      const r = yield* remote(server.url)
      const frames = Array.from({ length: 200 }, (_, i) => frame(i + 1, i === 199 ? 200 : 0))
      expect(yield* r.push(1, 3, 203, frames)).toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: 7 })
      expect(server.seen.length).toBe(1)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("an ok that rewinds to a frame inside the push is resent from there; below its start it is a conflict", () =>
    Effect.gen(function*() {
      // Request 0 opens a session; request 1 learns the session was lost and the server wants frame 101 again
      // (inside this push: resend from there); the resent tail is then taken.
      const inside = yield* scripted((seen, i) => {
        const end = Number(seen.url.split("/")[6])
        const maxFrameNo = i === 1 ? 100 : end - 1
        return { status: 200, body: JSON.stringify({ status: "ok", generation: 1, max_frame_no: maxFrameNo }) }
      })
      const frames = Array.from({ length: 200 }, (_, i) => frame(i + 1, i === 199 ? 200 : 0))
      expect(yield* (yield* remote(inside.url)).push(1, 1, 201, frames)).toMatchObject({ _tag: "Ok", maxFrameNo: 200 })
      expect(inside.seen.map((s) => s.url)).toEqual(["/db/x/sync/1/1/129", "/db/x/sync/1/129/201", "/db/x/sync/1/101/201"])

      // Someone else's commits sit below this push's first frame: resending cannot help, so it is a conflict
      // (the engine then resets, pulls and replays) rather than a protocol error.
      const below = yield* scripted(() => ({ status: 200, body: `{"status":"ok","generation":1,"max_frame_no":4}` }))
      expect(yield* (yield* remote(below.url)).push(1, 11, 211, frames)).toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: 4 })
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))
})

describe("SyncRemote: push requests as large as the server takes", () => {
  // A server that takes every push, answering its last frame and a baton; `info` says what it allows.
  const pushServer = (infoBody: string) =>
    scripted((seen) => {
      if (seen.url.endsWith("/info")) return { status: 200, body: infoBody }
      const [, , , , , , end] = seen.url.split("/")
      return { status: 200, body: JSON.stringify({ status: "ok", generation: 1, max_frame_no: Number(end) - 1, baton: "b" }) }
    })
  const frames = Array.from({ length: 250 }, (_, i) => frame(i + 1, i === 249 ? 250 : 0))
  const posts = (seen: ReadonlyArray<Seen>) => seen.filter((s) => s.method === "POST").map((s) => s.bytes / WalFrame.FRAME_SIZE)

  it.scopedLive("128 frames a request until info says max_push_frames; then that many", () =>
    Effect.gen(function*() {
      const server = yield* pushServer(`{"current_generation":1,"max_push_frames":100}`)
      const r = yield* remote(server.url)
      expect(yield* r.push(1, 1, 251, frames)).toMatchObject({ _tag: "Ok", maxFrameNo: 250 })
      expect(posts(server.seen)).toEqual([128, 122])
      expect(yield* r.info).toMatchObject({ maxPushFrames: 100 })
      expect(yield* r.push(1, 1, 251, frames)).toMatchObject({ _tag: "Ok", maxFrameNo: 250 })
      expect(posts(server.seen)).toEqual([128, 122, 100, 100, 50])
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("an info without it (the libSQL client's server) keeps 128; a larger one is capped at 1024", () =>
    Effect.gen(function*() {
      const plain = yield* pushServer(`{"current_generation":1}`)
      const r = yield* remote(plain.url)
      expect(yield* r.info).toStrictEqual({ generation: 1, databaseId: undefined })
      expect(yield* r.push(1, 1, 251, frames)).toMatchObject({ _tag: "Ok", maxFrameNo: 250 })
      expect(posts(plain.seen)).toEqual([128, 122])
      const big = yield* pushServer(`{"current_generation":1,"max_push_frames":100000}`)
      const many = Array.from({ length: 1100 }, (_, i) => frame(i + 1, i === 1099 ? 1100 : 0))
      const rb = yield* remote(big.url)
      yield* rb.info
      expect(yield* rb.push(1, 1, 1101, many)).toMatchObject({ _tag: "Ok", maxFrameNo: 1100 })
      expect(posts(big.seen)).toEqual([1024, 76])
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))
})

describe("SyncRemote: the server's extensions", () => {
  it.scopedLive("info reports them and snapshot fetches the head, over HTTP and in process alike", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(
        SyncServer.layerNode({ port: 0 }).pipe(
          Layer.provideMerge(ServerStore.layerMemory({ integrityCheck: "off", maxPullFrames: 2048 }))
        )
      ).pipe(Logger.withMinimumLogLevel(LogLevel.Warning))
      const url = yield* Effect.provide(SyncServer.databaseUrl("ext"), context)
      const store = yield* Effect.provide(ServerStore.ServerStore, context)
      const http = yield* remote(url)
      const local = StoreRemote.make(store, "ext")
      const frames = [frame(1, 0), frame(2, 0), frame(3, 3)]
      expect(yield* http.push(1, 1, 4, frames)).toMatchObject({ _tag: "Ok", maxFrameNo: 3 })
      const databaseId = yield* store.databaseId("ext")
      expect(typeof databaseId).toBe("string")
      const expected = { generation: 1, databaseId, maxFrameNo: 3, maxPullFrames: 2048, maxPushFrames: 1024, snapshot: true, pushIdentity: true, maxWaitSeconds: 30, waitAfter: true }
      expect(yield* http.info).toEqual(expected)
      expect(yield* local.info).toEqual(expected)
      const overHttp = yield* http.snapshot
      const inProcess = yield* local.snapshot
      expect({ generation: overHttp.generation, frameNo: overHttp.frameNo }).toEqual({ generation: 1, frameNo: 3 })
      expect({ generation: inProcess.generation, frameNo: inProcess.frameNo }).toEqual({ generation: 1, frameNo: 3 })
      const base = yield* http.export(1)
      expect(Buffer.compare(overHttp.bytes, WalFrame.applyFrames(base, frames))).toBe(0)
      expect(Buffer.compare(inProcess.bytes, overHttp.bytes)).toBe(0)
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("a remote without them: info leaves them out, snapshot is NotFound, bad snapshot headers are Protocol", () =>
    Effect.gen(function*() {
      const plain = yield* scripted((seen) =>
        seen.url.endsWith("/info")
          ? { status: 200, body: `{"current_generation":2}` }
          : { status: 404, body: `{"error":"not_found","message":"no such route"}` })
      const r = yield* remote(plain.url)
      expect(yield* r.info).toStrictEqual({ generation: 2, databaseId: undefined })
      expect(yield* Effect.flip(r.snapshot)).toMatchObject({ _tag: "RemoteError", reason: "NotFound", status: 404 })
      const headerless = yield* scripted(() => ({ status: 200, body: new Uint8Array(WalFrame.PAGE_SIZE) }))
      expect(yield* Effect.flip((yield* remote(headerless.url)).snapshot)).toMatchObject({ _tag: "RemoteError", reason: "Protocol" })
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))
})
