/**
 * Waiting pulls (`Prefer: wait=N`) on the server, over HTTP on loopback, embedded SQLite store:
 *
 *   npx tsx bench/livePull.ts [waiters=1000] [rounds=200]
 *
 * 1. Wake-up: a client holds a waiting pull (`SyncRemote` pull with `waitSeconds`); another pushes a
 *    one-row commit. Per round: the time from sending the push to the waiting pull's return, beside the
 *    push's own time (request to answer). p50 and p99 over `rounds`.
 * 2. Fan-out: `waiters` raw HTTP pulls wait on one database; one push; the time from sending the push to
 *    each of them being answered (p50, p99, last).
 * 3. Idle cost: the same `waiters` parked for 5 s: CPU time this process used (server and clients share
 *    it, and both are idle), and its RSS beside before they were opened.
 * 4. The baseline of 2: as many ordinary pulls (frames already there) sent at once.
 *
 * Client and server run in one process (one event loop), so times include both sides.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as SyncServer from "../src/SyncServer.js"
import * as H from "../test/support/http.js"

const directory = H.tempDir("bench-live")
const waiters = Number(process.argv[2] ?? 1000)
const rounds = Number(process.argv[3] ?? 200)

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
const summary = (values: Array<number>) => {
  values.sort((a, b) => a - b)
  return `p50 ${percentile(values, 0.5).toFixed(2)} ms, p99 ${percentile(values, 0.99).toFixed(2)} ms`
}

/** A raw waiting pull; resolves with the time its answer ended. */
const rawWait = (base: string, path: string): Promise<number> =>
  new Promise((resolve, reject) => {
    const request = Http.get(`${base}${path}`, { headers: { prefer: "wait=30" }, agent: false }, (response) => {
      response.on("data", () => {})
      response.on("end", () => resolve(performance.now()))
    })
    request.on("error", reject)
  })

const main = Effect.gen(function*() {
  const base = yield* SyncServer.baseUrl
  const reader = yield* SyncRemote.makeHttp({ url: `${base}/db/live` })
  const writer = yield* SyncRemote.makeHttp({ url: `${base}/db/live` })
  const replica = new H.Replica(yield* writer.export(1))
  let head = 0
  const commit = (sql: string) =>
    Effect.gen(function*() {
      const frames = replica.write(sql)
      yield* writer.push(1, head + 1, head + 1 + frames.length, frames)
      head += frames.length
    })
  yield* commit("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
  yield* reader.info

  // 1. Wake-up of one waiting pull.
  const wake: Array<number> = []
  const push: Array<number> = []
  for (let round = 0; round < rounds; round++) {
    const waiting = yield* Effect.fork(reader.pull(1, head + 1, head + 129, { waitSeconds: 30 }))
    // Long enough for the pull to reach its wait on a loaded machine; the figures start at the push.
    yield* Effect.sleep("15 millis")
    const sent = performance.now()
    yield* commit(`INSERT INTO t (v) VALUES ('round ${round}')`)
    push.push(performance.now() - sent)
    const result = yield* Fiber.join(waiting)
    wake.push(performance.now() - sent)
    if (result._tag !== "Frames") throw new Error(`round ${round}: the waiting pull answered ${result._tag}`)
  }
  console.log(`wake-up of a waiting pull, push sent -> pull returned (${rounds} rounds): ${summary(wake)}`)
  console.log(`the push alone, sent -> answered: ${summary(push)}`)

  // 2 and 3. Many waiters: idle cost, then fan-out.
  const rssBefore = process.memoryUsage().rss
  const answered = Array.from({ length: waiters }, () => rawWait(base, `/db/live/sync/1/${head + 1}/${head + 129}`))
  const metrics = async () => (await H.request(base, { path: "/metrics" })).body.toString("utf8")
  for (let attempt = 0; attempt < 400; attempt++) {
    if (new RegExp(`^effect_sqlite_sync_waiting_pulls ${waiters}$`, "m").test(yield* Effect.promise(metrics))) break
    yield* Effect.sleep("25 millis")
  }
  const cpu = process.cpuUsage()
  yield* Effect.sleep("5 seconds")
  const used = process.cpuUsage(cpu)
  const rssWaiting = process.memoryUsage().rss
  console.log(
    `${waiters} waiting pulls parked 5 s: CPU ${((used.user + used.system) / 1000).toFixed(0)} ms ` +
      `(${((used.user + used.system) / 1000 / 5000 * 100).toFixed(2)}% of a core), RSS +${((rssWaiting - rssBefore) / 1024 / 1024).toFixed(1)} MB`
  )
  const sent = performance.now()
  yield* commit("INSERT INTO t (v) VALUES ('fan-out')")
  const ends = yield* Effect.promise(() => Promise.all(answered))
  const fanOut = ends.map((end) => end - sent)
  console.log(`fan-out, push sent -> each of ${waiters} waiting pulls answered: ${summary(fanOut)}, last ${fanOut[fanOut.length - 1].toFixed(2)} ms`)
  // The baseline: as many ordinary pulls of the same frames, sent at once.
  const before = performance.now()
  const plain = yield* Effect.promise(() =>
    Promise.all(Array.from({ length: waiters }, () => rawWait(base, `/db/live/sync/1/${head}/${head + 128}`)))
  )
  const plainMs = plain.map((end) => end - before)
  console.log(`baseline, ${waiters} ordinary pulls of those frames sent at once, each answered: ${summary(plainMs)}, last ${plainMs[plainMs.length - 1].toFixed(2)} ms`)
  replica.close()
}).pipe(
  Effect.provide(
    SyncServer.layerNode({ port: 0 }).pipe(
      Layer.provide(ServerStore.layer({ directory })),
      Layer.merge(NodeHttpClient.layerUndici)
    )
  ),
  Effect.scoped,
  Logger.withMinimumLogLevel(LogLevel.None)
)

Effect.runPromise(main).then(
  () => {
    Fs.rmSync(directory, { recursive: true, force: true })
    process.exit(0)
  },
  (error) => {
    console.error(error)
    Fs.rmSync(directory, { recursive: true, force: true })
    process.exit(1)
  }
)
