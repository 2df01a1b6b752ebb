/**
 * Repeated pulls of 100 changed rows on one replica of a SIZE MB database (default 64), each with the time
 * between its durable steps and how long it held writes: the profile behind the storage figures.
 *
 *   SIZE=64 PULLS=5 npx tsx bench/pulls.ts     (PROFILE=<file>: a CPU profile of the pulls)
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as WalFrame from "../src/WalFrame.js"
import * as Inspector from "node:inspector/promises"
import * as ServerProcess from "./serverProcess.js"

const SIZE = Number(process.env.SIZE ?? "64")
const PULLS = Number(process.env.PULLS ?? "5")
const CHANGED = 100
const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-prof-"))

const startServer = () => ServerProcess.startServer(NodePath.join(work, "server"))
const main = async () => {
  const server = await startServer()
  const scope = Effect.runSync(Scope.make())
  const run = <A, E>(e: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(e, scope))
  const http = await run(Layer.build(NodeHttpClient.layerUndici))
  let last = performance.now()
  const marks: Array<string> = []
  const onStep = (step: string) => Effect.sync(() => { const now = performance.now(); marks.push(`${step} +${(now - last).toFixed(1)}`); last = now })
  try {
    const remote = await run(SyncRemote.makeHttp({ url: `${server.url}/db/big` }).pipe(Effect.provide(http)))
    const base = await run(Effect.flatMap(remote.info, (i) => remote.export(i.generation)))
    const file = NodePath.join(work, "replica")
    Fs.writeFileSync(file, base)
    const replica = new BetterSqlite3(file)
    replica.pragma("wal_autocheckpoint = 0"); replica.pragma("journal_mode = WAL")
    let pushed = 0
    const push = async () => {
      const wal = Option.getOrThrow(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${file}-wal`))))
      const frames = wal.frames.slice(pushed).map((f) => ({ ...f, page: Uint8Array.from(f.page) }))
      const r = await run(remote.push(1, pushed + 1, pushed + 1 + frames.length, frames))
      if (r._tag !== "Ok") throw new Error(r._tag)
      pushed += frames.length
    }
    replica.exec("CREATE TABLE blobs (id INTEGER PRIMARY KEY, n INTEGER, data BLOB)")
    const count = Math.ceil((SIZE * 1024 * 1024) / 4096)
    const ins = replica.prepare("INSERT INTO blobs (id, n, data) VALUES (?, 0, randomblob(3900))")
    replica.transaction(() => { for (let i = 1; i <= count; i++) ins.run(i) })()
    await push()
    const t0 = performance.now()
    const client = await run(Layer.build(SyncDatabase.layer({ path: NodePath.join(work, "client"), url: `${server.url}/db/big`, onStep }).pipe(Layer.provide(Layer.succeedContext(http)))).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase))))
    await run(client.pull)
    console.log(`bootstrap+pull ${(performance.now() - t0).toFixed(0)} ms`)
    await run(client.execute("CREATE TABLE IF NOT EXISTS local_notes (id INTEGER PRIMARY KEY, body TEXT)"))
    const upd = replica.prepare("UPDATE blobs SET n = n + 1 WHERE id = ?")
    const session = new Inspector.Session()
    if (process.env.PROFILE) { session.connect(); await session.post("Profiler.enable"); await session.post("Profiler.setSamplingInterval", { interval: 200 }); await session.post("Profiler.start") }
    for (let p = 0; p < PULLS; p++) {
      await run(client.execute("INSERT INTO local_notes (body) VALUES ('pending while pulling')"))
      replica.transaction(() => { for (let i = 0; i < CHANGED; i++) upd.run(1 + Math.floor(((i + p * 7) * count) / CHANGED) % count) })()
      await push()
      marks.length = 0
      last = performance.now()
      const s = performance.now()
      if (process.env.MARK) console.error(`MARK pull ${p} start`)
      await run(client.pull)
      const ms = performance.now() - s
      const stats = await run(client.stats)
      console.log(`pull ${p}: ${ms.toFixed(0)} ms, blocked ${Option.getOrElse(stats.lastWriteBlockedMs, () => NaN)} ms; ${marks.join(", ")}, end +${(performance.now() - last).toFixed(1)}`)
    }
    if (process.env.PROFILE) { const { profile } = await session.post("Profiler.stop"); Fs.writeFileSync(process.env.PROFILE, JSON.stringify(profile)) }
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    server.child.kill("SIGTERM")
    Fs.rmSync(work, { recursive: true, force: true })
  }
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1) })
