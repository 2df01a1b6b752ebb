/**
 * End-to-end figures for the sync server over HTTP on loopback, with the embedded SQLite store.
 *
 *   npx tsx bench/serverHttp.ts [sizeMB=10] [commits=100] [check=quick_check]
 *
 * 1. Bulk push: a database of `sizeMB` built by a real SQLite replica is pushed the way the libSQL
 *    client pushes it, 128 frames a request (batons carry the open transaction between requests).
 * 2. Small commits: `commits` one-row transactions pushed one by one (what a client syncing an edit
 *    does), each timed from request to answer, with the malformed check of `check`.
 * 3. Pull: the whole generation pulled back, 128 frames a request (the libSQL client) and 1024 (the
 *    server's maximum).
 *
 * The client runs in the same process as the server (one event loop), so times include both sides.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Fs from "node:fs"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "../test/support/http.js"

const sizeMb = Number(process.argv[2] ?? 10)
const commits = Number(process.argv[3] ?? 100)
const check = (process.argv[4] ?? "quick_check") as ServerStore.IntegrityCheck

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]

const pushFrames = async (base: string, start: number, frames: ReadonlyArray<WalFrame.Frame>, batch: number) => {
  let baton: string | undefined
  for (let offset = 0; offset < frames.length; offset += batch) {
    const slice = frames.slice(offset, offset + batch)
    const from = start + offset
    const res = await H.request(base, {
      method: "POST",
      path: `/db/bench/sync/1/${from}/${from + slice.length}${baton === undefined ? "" : `/${baton}`}`,
      body: WalFrame.encodeWire(slice)
    })
    const body = H.json(res)
    if (res.status !== 200 || body.status !== "ok") throw new Error(`push ${from}: ${res.status} ${res.body}`)
    baton = body.baton
  }
}

const pullAll = async (base: string, batch: number) => {
  let next = 1
  let bytes = 0
  for (;;) {
    const res = await H.request(base, { path: `/db/bench/sync/1/${next}/${next + batch}` })
    if (res.status === 400) return bytes
    bytes += res.body.byteLength
    next += res.body.byteLength / WalFrame.FRAME_SIZE
  }
}

const main = Effect.gen(function*() {
  const dir = H.tempDir("bench-server")
  const base = yield* SyncServer.baseUrl
  const replica = new H.Replica(yield* Effect.promise(() => H.exportBase(base, "bench", 1)))
  replica.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL); CREATE INDEX t_k ON t (k)")
  const insert = replica.db.prepare("INSERT INTO t (k, v) VALUES (hex(randomblob(8)), hex(randomblob(450)))")
  const rows = Math.ceil((sizeMb * 1024 * 1024) / 1000)
  replica.db.transaction(() => {
    for (let i = 0; i < rows; i++) insert.run()
  })()
  const bulk = replica.write("SELECT 1")
  const t0 = performance.now()
  yield* Effect.promise(() => pushFrames(base, 1, bulk, 128))
  const bulkMs = performance.now() - t0
  const bulkMb = (bulk.length * WalFrame.FRAME_SIZE) / 1024 / 1024
  console.log(`bulk push: ${bulk.length} frames (${bulkMb.toFixed(1)} MB) in ${bulkMs.toFixed(0)} ms = ${(bulkMb / (bulkMs / 1000)).toFixed(1)} MB/s`)

  let head = bulk.length
  const times: Array<number> = []
  for (let i = 0; i < commits; i++) {
    const frames = replica.write("INSERT INTO t (k, v) VALUES (hex(randomblob(8)), hex(randomblob(450)))")
    const t = performance.now()
    yield* Effect.promise(() => pushFrames(base, head + 1, frames, 128))
    times.push(performance.now() - t)
    head += frames.length
  }
  times.sort((a, b) => a - b)
  console.log(
    `small commits (${check}, db ${((replica.db.pragma("page_count", { simple: true }) as number) * 4096 / 1024 / 1024).toFixed(1)} MB): median ${percentile(times, 0.5).toFixed(2)} ms, p90 ${percentile(times, 0.9).toFixed(2)} ms`
  )
  for (const batch of [128, 1024]) {
    const t = performance.now()
    const bytes = yield* Effect.promise(() => pullAll(base, batch))
    const ms = performance.now() - t
    console.log(`pull ${batch} frames/request: ${(bytes / 1024 / 1024).toFixed(1)} MB in ${ms.toFixed(0)} ms = ${(bytes / 1024 / 1024 / (ms / 1000)).toFixed(1)} MB/s`)
  }
  replica.close()
  Fs.rmSync(dir, { recursive: true, force: true })
}).pipe(
  Effect.provide(
    SyncServer.layerNode({ port: 0 }).pipe(
      Layer.provide(
        Layer.unwrapEffect(Effect.sync(() => ServerStore.layer({ directory: H.tempDir("bench-store"), integrityCheck: check })))
      )
    )
  ),
  Logger.withMinimumLogLevel(LogLevel.None)
)

Effect.runPromise(main).catch((error) => {
  console.error(error)
  process.exit(1)
})
