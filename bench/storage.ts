/**
 * Storage and pull figures of `npm run bench` (called by `bench/run.ts`; also runs alone, with its own
 * server):
 *
 *   npx tsx bench/storage.ts [--sizes 1,10,64,100] [--changed 100]
 *
 * - at each size: bootstrap + first pull; a pull of `--changed` changed rows, with the bytes the process
 *   wrote during it and how long writes were held; the check of the pulled frames on its own; local files
 *   at rest; each pull's time against the smallest size's.
 */
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import type { HttpClient } from "@effect/platform/HttpClient"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as WalFrame from "../src/WalFrame.js"
import * as ServerProcess from "./serverProcess.js"

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

/** One printed figure. */
export interface Line {
  readonly what: string
  readonly ms: number
  readonly note?: string
}

/** What run.ts shares with this section: its server, its HTTP client, its scratch directory. */
export interface Bench {
  readonly serverUrl: string
  readonly http: Context.Context<HttpClient>
  readonly work: string
  readonly scope: Scope.Scope
}

const time = async <A>(f: () => Promise<A> | A): Promise<[number, A]> => {
  const start = performance.now()
  const a = await f()
  return [performance.now() - start, a]
}

/** Bytes this process has handed to write(2) so far (Linux `/proc/self/io`), NaN elsewhere. */
const writtenBytes = () => {
  try {
    const line = Fs.readFileSync("/proc/self/io", "utf8").split("\n").find((l) => l.startsWith("wchar:"))
    return line === undefined ? NaN : Number(line.split(/\s+/)[1])
  } catch {
    return NaN
  }
}

/** Bytes of every local file of the database at `path` (copies, WALs, metadata). */
const localBytes = (path: string) => {
  const dir = NodePath.dirname(path)
  const name = NodePath.basename(path)
  return Fs.readdirSync(dir).filter((f) => f.startsWith(`${name}-`)).reduce((n, f) => n + Fs.statSync(NodePath.join(dir, f)).size, 0)
}

/** The storage and pull figures, appended to `lines`. */
export const storageBench = async (bench: Bench, lines: Array<Line>) => {
  const SIZES_MB = flag("sizes", "1,10,64,100").split(",").map(Number)
  const CHANGED = Number(flag("changed", "100"))
  const { http, scope, serverUrl, work } = bench
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
  // Each client gets a scope of its own, closed after use, so the files it holds are released.
  const open = async (name: string, db: string) => {
    const own = await Effect.runPromise(Scope.fork(scope, ExecutionStrategy.sequential))
    const client = await Effect.runPromise(
      Layer.buildWithScope(
        SyncDatabase.layer({ path: NodePath.join(work, name), url: `${serverUrl}/db/${db}` }).pipe(
          Layer.provide(Layer.succeedContext(bench.http))
        ),
        own
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
    )
    return { client, close: () => Effect.runPromise(Scope.close(own, Exit.void)) }
  }

  // A pull bringing CHANGED changed rows, on databases of SIZES_MB.
  const pullTimes = new Map<number, number>()
  for (const mb of SIZES_MB) {
    const name = `big-${mb}`
    const remote = await run(SyncRemote.makeHttp({ url: `${serverUrl}/db/${name}` }).pipe(Effect.provide(http)))
    // The big database is written by a raw replica (no capture) and pushed as frames.
    const base = await run(Effect.flatMap(remote.info, (i) => remote.export(i.generation)))
    const file = NodePath.join(work, `${name}.replica`)
    Fs.writeFileSync(file, base)
    const replica = new BetterSqlite3(file)
    replica.pragma("wal_autocheckpoint = 0")
    replica.pragma("journal_mode = WAL")
    let pushedFrames = 0
    const pushReplica = async () => {
      const wal = Option.getOrThrow(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${file}-wal`))))
      const frames = wal.frames.slice(pushedFrames).map((f) => ({ ...f, page: Uint8Array.from(f.page) }))
      const result = await run(remote.push(1, pushedFrames + 1, pushedFrames + 1 + frames.length, frames))
      if (result._tag !== "Ok") throw new Error(`replica push: ${result._tag}`)
      pushedFrames += frames.length
    }
    replica.exec("CREATE TABLE blobs (id INTEGER PRIMARY KEY, n INTEGER, data BLOB)")
    const count = Math.ceil((mb * 1024 * 1024) / 4096)
    const insertBlob = replica.prepare("INSERT INTO blobs (id, n, data) VALUES (?, 0, randomblob(3900))")
    replica.transaction(() => { for (let i = 1; i <= count; i++) insertBlob.run(i) })()
    await pushReplica()
    // Opening a new path brings the remote's current state; the pull after it finds nothing new.
    const [setupMs, opened] = await time(async () => {
      const o = await open(`client-${mb}`, name)
      await run(o.client.pull)
      return o
    })
    const client = opened.client
    await run(client.execute("CREATE TABLE IF NOT EXISTS local_notes (id INTEGER PRIMARY KEY, body TEXT)"))
    await run(client.execute("INSERT INTO local_notes (body) VALUES ('pending while pulling')"))
    const update = replica.prepare("UPDATE blobs SET n = n + 1 WHERE id = ?")
    replica.transaction(() => { for (let i = 0; i < CHANGED; i++) update.run(1 + Math.floor((i * count) / CHANGED)) })()
    await pushReplica()
    const writtenBefore = writtenBytes()
    const [pullMs] = await time(() => run(client.pull))
    const pullWritten = writtenBytes() - writtenBefore
    const stats = await run(client.stats)
    const blocked = Option.getOrElse(stats.lastWriteBlockedMs, () => NaN)
    replica.close()
    const size = Fs.statSync(NodePath.join(work, `client-${mb}-draft`)).size
    const atRest = localBytes(NodePath.join(work, `client-${mb}`))
    await opened.close()
    pullTimes.set(mb, pullMs)
    lines.push({ what: `${mb} MB: bootstrap + first pull`, ms: setupMs })
    lines.push({
      what: `${mb} MB: pull of ${CHANGED} changed rows (total)`,
      ms: pullMs,
      note: `${(pullWritten / 1e6).toFixed(2)} MB written by the process during it`
    })
    lines.push({
      what: `${mb} MB: writes blocked during that pull`,
      ms: blocked,
      note: `draft file ${(size / 1e6).toFixed(1)} MB; all local files ${(atRest / 1e6).toFixed(1)} MB (${(atRest / size).toFixed(2)}x)`
    })
  }
  if (SIZES_MB.length > 1) {
    const small = Math.min(...SIZES_MB)
    for (const mb of SIZES_MB.filter((m) => m !== small)) {
      lines.push({
        what: `pull of ${CHANGED} changed rows: ${mb} MB against ${small} MB`,
        ms: NaN,
        note: `${(pullTimes.get(mb)! / pullTimes.get(small)!).toFixed(2)}x the time`
      })
    }
  }
}

// Alone: a server of its own, then the section.
ServerProcess.runAlone(import.meta.url, "storage", async (alone) => {
  const lines: Array<Line> = []
  await storageBench(alone, lines)
  console.table(lines.map((l) => ({ measurement: l.what, ms: Number.isFinite(l.ms) ? Number(l.ms.toFixed(1)) : l.ms, note: l.note ?? "" })))
})
