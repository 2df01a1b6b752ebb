/**
 * The push of one small write, alone: one replica and a server process on loopback; `--writes` times a
 * one-row insert then `push` (after the first, at the remote's head: no pull before it). Prints the CPU
 * (user + system) and wall time per push, medians and p90, and the CPU of the whole loop per write.
 *
 *   npx tsx bench/pushOne.ts [--writes 300] [--tree DIR]
 *
 * `--tree DIR`: the library compiled in DIR/dist (another checkout, for before/after comparisons; compiled
 * code also names its functions in a CPU profile: `node --cpu-prof --import tsx bench/pushOne.ts --tree .`).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import type * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Url from "node:url"
import type * as SyncDatabaseModule from "../src/SyncDatabase.js"
import { startServer } from "./serverProcess.js"

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback
}
const WRITES = Number(flag("writes", "300"))
const TREE = flag("tree", "")

const SyncDatabase: typeof SyncDatabaseModule = TREE === ""
  ? await import("../src/SyncDatabase.js")
  : await import(Url.pathToFileURL(NodePath.resolve(TREE, "dist", "SyncDatabase.js")).href)

const median = (xs: Array<number>) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const p90 = (xs: Array<number>) => xs.sort((a, b) => a - b)[Math.floor(xs.length * 0.9)]!
const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000

const main = async () => {
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bench-push-one-"))
  let server: { url: string; child: ChildProcess.ChildProcess } | undefined
  const scope = Effect.runSync(Scope.make())
  try {
    server = await startServer(NodePath.join(work, "server"))
    const db = await Layer.buildWithScope(
      SyncDatabase.layer({ path: NodePath.join(work, "a"), url: `${server.url}/db/one` }).pipe(
        Layer.provide(NodeHttpClient.layerUndici)
      ),
      scope
    ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)), Logger.withMinimumLogLevel(LogLevel.Error), Effect.runPromise)
    await Effect.runPromise(db.execute("CREATE TABLE items (n INTEGER NOT NULL, body TEXT)"))
    await Effect.runPromise(db.push)
    const cpu: Array<number> = []
    const wall: Array<number> = []
    const loop = process.cpuUsage()
    for (let n = 1; n <= WRITES; n++) {
      await Effect.runPromise(db.execute("INSERT INTO items VALUES (?, ?)", [n, `row ${n}`]))
      const c0 = process.cpuUsage()
      const t0 = performance.now()
      await Effect.runPromise(db.push)
      wall.push(performance.now() - t0)
      cpu.push(cpuMs(process.cpuUsage(c0)))
    }
    const total = cpuMs(process.cpuUsage(loop))
    const stats = await Effect.runPromise(db.stats)
    console.log(
      `${TREE === "" ? "src" : NodePath.resolve(TREE)}: ${WRITES} one-row pushes (pending after: ${stats.pendingChanges}), load ${
        Os.loadavg()[0]!.toFixed(1)
      }: push CPU median ${median(cpu).toFixed(2)} ms, p90 ${p90(cpu).toFixed(2)}; wall median ${median(wall).toFixed(2)} ms, p90 ${
        p90(wall).toFixed(2)
      }; CPU per write (insert + push) ${(total / WRITES).toFixed(2)} ms`
    )
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    server?.child.kill("SIGTERM")
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
