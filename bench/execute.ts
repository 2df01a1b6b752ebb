/**
 * `execute` and `query` against raw better-sqlite3 doing the same, on fresh WAL files:
 *
 *   npx tsx bench/execute.ts [--rows 10000] [--repeat 3] [--before DIR]
 *
 * Rows: (id INTEGER PRIMARY KEY, name TEXT, value REAL, payload TEXT of 100 chars). Each figure is the
 * median of `--repeat` runs, each on a fresh database. The per-row figures are ratios to raw better-sqlite3
 * inserting the same rows one transaction each (1.0); the capture overhead is raw statements on a
 * connection with the capture triggers against the same without them; rows in one statement and reads by
 * key have their own raw reference. The span of each public call can be switched off
 * (`Effect.withTracerEnabled(false)`), and is made only for a tracer an application installs (Effect's
 * default one records nothing): all three are measured.
 *
 * `--before DIR` measures another checkout of the library in the same run, interleaved with this one (DIR
 * holds its `src/` and a `node_modules` of the same packages), e.g.
 * `mkdir /tmp/before && git archive main src | tar -x -C /tmp/before && ln -s $PWD/node_modules /tmp/before/`.
 *
 * `npm run bench` runs it too (see run.ts).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Url from "node:url"
import { bulkInsert as bulk, CREATE, INSERT, row } from "./rows.js"

const SELECT = "SELECT * FROM items WHERE id = ?"

/** One figure of the table. */
export interface Line {
  readonly what: string
  readonly ms: number
  readonly note?: string
}

/** The library's modules this bench uses, from this checkout or another one (`--before`). */
interface Library {
  readonly SyncDatabase: typeof import("../src/SyncDatabase.js")
  readonly SyncRemote: typeof import("../src/SyncRemote.js")
  readonly StoreRemote: typeof import("../src/StoreRemote.js")
  readonly ServerStore: typeof import("../src/ServerStore.js")
  readonly ChangeCapture: typeof import("../src/ChangeCapture.js")
  readonly Executor: typeof import("../src/internal/sqlite/executor.js")
}

const load = async (src: string): Promise<Library> => {
  const at = (path: string) => import(Url.pathToFileURL(NodePath.join(src, path)).href)
  return {
    SyncDatabase: await at("SyncDatabase.ts"),
    SyncRemote: await at("SyncRemote.ts"),
    StoreRemote: await at("StoreRemote.ts"),
    ServerStore: await at("ServerStore.ts"),
    ChangeCapture: await at("ChangeCapture.ts"),
    Executor: await at("internal/sqlite/executor.ts")
  }
}

const time = async (f: () => unknown): Promise<number> => {
  const start = performance.now()
  await f()
  return performance.now() - start
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

let counter = 0
const fresh = (work: string, name: string) => NodePath.join(work, `${name}-${++counter}`)

/** Raw better-sqlite3 on a fresh WAL file (the library's copies are WAL files too). */
const rawDb = (work: string) => {
  const db = new BetterSqlite3(fresh(work, "raw"))
  db.pragma("journal_mode = WAL")
  db.exec(CREATE)
  return db
}

/** Prepared inserts, one transaction each or all in one. */
const rawInserts = (work: string, rows: number, kind: "perRow" | "transaction") => {
  const db = rawDb(work)
  const insert = db.prepare(INSERT)
  const each = () => {
    for (let i = 1; i <= rows; i++) insert.run(...row(i))
  }
  const start = performance.now()
  if (kind === "transaction") db.transaction(each)()
  else each()
  const ms = performance.now() - start
  db.close()
  return ms
}

const rawBulk = (work: string, rows: number) => {
  const db = rawDb(work)
  const start = performance.now()
  db.prepare(bulk(rows)).run()
  const ms = performance.now() - start
  db.close()
  return ms
}

const rawQuery = (work: string, rows: number) => {
  const db = rawDb(work)
  db.prepare(bulk(rows)).run()
  const select = db.prepare(SELECT)
  const start = performance.now()
  for (let i = 1; i <= rows; i++) select.all(i)
  const ms = performance.now() - start
  db.close()
  return ms
}

/** Raw statements on the engine's own connection with the capture triggers installed. */
const capturedRaw = async (lib: Library, work: string, rows: number, kind: "perRow" | "transaction" | "bulk") => {
  const scope = Effect.runSync(Scope.make())
  try {
    const client = await Effect.runPromise(Scope.extend(lib.Executor.makeClient({ filename: fresh(work, "captured") }), scope))
    await Effect.runPromise(client.unsafe(CREATE).raw)
    await Effect.runPromise(Effect.provideService(lib.ChangeCapture.install, SqlClient.SqlClient, client))
    const db = lib.Executor.handleOf(client)!
    if (kind === "bulk") return await time(() => db.prepare(bulk(rows)).run())
    const insert = db.prepare(INSERT)
    const each = () => {
      for (let i = 1; i <= rows; i++) insert.run(...row(i))
    }
    return await time(kind === "transaction" ? db.transaction(each) : each)
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

/**
 * WAL frames one one-row transaction writes (raw, or on the engine's connection with the capture triggers):
 * every page a commit dirties is a frame, each written and later checkpointed. Counted from the WAL's size
 * with checkpoints off.
 */
const framesPerCommit = async (lib: Library | undefined, work: string, rows = 1000) => {
  const scope = Effect.runSync(Scope.make())
  try {
    const path = fresh(work, "frames")
    let db: BetterSqlite3.Database
    if (lib === undefined) {
      db = new BetterSqlite3(path)
      db.pragma("journal_mode = WAL")
      db.exec(CREATE)
    } else {
      const client = await Effect.runPromise(Scope.extend(lib.Executor.makeClient({ filename: path }), scope))
      await Effect.runPromise(client.unsafe(CREATE).raw)
      await Effect.runPromise(Effect.provideService(lib.ChangeCapture.install, SqlClient.SqlClient, client))
      db = lib.Executor.handleOf(client)!
    }
    db.pragma("wal_autocheckpoint = 0")
    db.pragma("wal_checkpoint(TRUNCATE)")
    const insert = db.prepare(INSERT)
    for (let i = 1; i <= rows; i++) insert.run(...row(i))
    const frames = (Fs.statSync(`${path}-wal`).size - 32) / (db.pragma("page_size", { simple: true }) as number + 24)
    if (lib === undefined) db.close()
    return frames / rows
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

type Measure =
  | "perRow"
  | "perRowNoSpan"
  | "perRowTracer"
  | "perRowNoFold"
  | "perRowBound2000"
  | "bulk"
  | "query"
  | "queryNoSpan"

/**
 * A tracer of the application's own, as one that traces installs: Effect's spans, each made and ended (the
 * default tracer's spans are recorded nowhere, so the library makes none for it).
 */
const defaultTracer = Effect.runSync(Effect.tracer)
const appTracer = Tracer.make({ span: (...args) => defaultTracer.span(...args), context: (f) => f() })

/** One measurement through a SyncDatabase (a fresh local database over an in-process remote). */
const ours = async (lib: Library, work: string, rows: number, measure: Measure) => {
  const scope = Effect.runSync(Scope.make())
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
  try {
    const store = await run(lib.ServerStore.makeMemory())
    const remote = lib.StoreRemote.make(store, `bench-${++counter}`)
    const db = await run(
      Layer.build(
        lib.SyncDatabase.layerRemote({
          path: fresh(work, "ours"),
          // Draft's WAL is folded into its file past this bound: raised, no fold happens during the run
          ...(measure === "perRowNoFold" ? { maxWalFrames: 1_000_000 } : {}),
          // A captured one-row commit writes about twice the frames of a plain one (its row and its log
          // entry): at twice the bound, a fold comes after about as many commits as SQLite's checkpoint does
          ...(measure === "perRowBound2000" ? { maxWalFrames: 2000 } : {})
        }).pipe(
          Layer.provide(Layer.succeed(lib.SyncRemote.SyncRemote, remote))
        )
      ).pipe(Effect.map(Context.get(lib.SyncDatabase.SyncDatabase)))
    )
    await run(db.execute(CREATE))
    const spans = measure !== "perRowNoSpan" && measure !== "queryNoSpan"
    const traced = <A, E>(effect: Effect.Effect<A, E>) =>
      measure === "perRowTracer" ? Effect.withTracer(effect, appTracer) : spans ? effect : Effect.withTracerEnabled(effect, false)
    if (measure === "bulk") return await time(() => run(db.execute(bulk(rows))))
    if (measure === "query" || measure === "queryNoSpan") {
      await run(db.execute(bulk(rows)))
      await run(db.query(SELECT, [1]))
      return await time(() =>
        run(traced(Effect.gen(function*() {
          for (let i = 1; i <= rows; i++) yield* db.query(SELECT, [i])
        })))
      )
    }
    return await time(() =>
      run(traced(Effect.gen(function*() {
        for (let i = 1; i <= rows; i++) yield* db.execute(INSERT, row(i))
      })))
    )
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

/**
 * What the per-row figures compare, stated with them: SQLite's journal mode and synchronous setting of raw
 * better-sqlite3 and of the library's Draft copy (both at better-sqlite3's defaults for WAL).
 */
export const settings = async (): Promise<string> => {
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-settings-"))
  const scope = Effect.runSync(Scope.make())
  try {
    const raw = rawDb(work)
    const rawSettings = `${raw.pragma("journal_mode", { simple: true })}, synchronous ${raw.pragma("synchronous", { simple: true })}, ` +
      `wal_autocheckpoint ${raw.pragma("wal_autocheckpoint", { simple: true })}`
    raw.close()
    const lib = await load(NodePath.resolve(import.meta.dirname, "..", "src"))
    const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Scope.extend(effect, scope))
    const store = await run(lib.ServerStore.makeMemory())
    const db = await run(
      Layer.build(lib.SyncDatabase.layerRemote({ path: fresh(work, "settings") }).pipe(
        Layer.provide(Layer.succeed(lib.SyncRemote.SyncRemote, lib.StoreRemote.make(store, "settings")))
      )).pipe(Effect.map(Context.get(lib.SyncDatabase.SyncDatabase)))
    )
    const pragma = (sql: string) => run(Effect.map(db.query(sql), (rows) => Object.values(rows[0]!)[0]))
    const ours = `${await pragma("SELECT * FROM pragma_journal_mode")}, synchronous ${await pragma("PRAGMA synchronous")}, ` +
      `wal_autocheckpoint ${await pragma("PRAGMA wal_autocheckpoint")} (its WAL is folded past 1000 frames)`
    return `raw: ${rawSettings}; Draft: ${ours}`
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

/**
 * The figures of this checkout (and of `before`, if given), each the median of `repeat` runs, runs of
 * both interleaved so that both see the same machine.
 */
export const executeBench = async (options: {
  readonly rows: number
  readonly repeat?: number | undefined
  readonly before?: string | undefined
}): Promise<ReadonlyArray<Line>> => {
  const { rows } = options
  const repeat = options.repeat ?? 3
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-execute-"))
  const libs: Array<readonly [string, Library]> = [["", await load(NodePath.resolve(import.meta.dirname, "..", "src"))]]
  if (options.before !== undefined) libs.unshift(["before: ", await load(NodePath.resolve(options.before, "src"))])
  const samples = new Map<string, Array<number>>()
  const frames = new Map<string, number>()
  const sample = async (key: string, f: () => number | Promise<number>) => {
    const ms = await f()
    samples.set(key, [...(samples.get(key) ?? []), ms])
  }
  try {
    for (let r = 0; r < repeat; r++) {
      await sample("rawPerRow", () => rawInserts(work, rows, "perRow"))
      await sample("rawTransaction", () => rawInserts(work, rows, "transaction"))
      await sample("rawBulk", () => rawBulk(work, rows))
      await sample("rawQuery", () => rawQuery(work, rows))
      for (const [label, lib] of libs) {
        await sample(`${label}capturedPerRow`, () => capturedRaw(lib, work, rows, "perRow"))
        await sample(`${label}capturedTransaction`, () => capturedRaw(lib, work, rows, "transaction"))
        await sample(`${label}capturedBulk`, () => capturedRaw(lib, work, rows, "bulk"))
        for (
          const measure of [
            "perRow",
            "perRowNoSpan",
            "perRowTracer",
            "perRowNoFold",
            "perRowBound2000",
            "bulk",
            "query",
            "queryNoSpan"
          ] as const
        ) {
          await sample(`${label}${measure}`, () => ours(lib, work, rows, measure))
        }
      }
    }
    frames.set("raw", await framesPerCommit(undefined, work))
    for (const [label, lib] of libs) frames.set(label, await framesPerCommit(lib, work))
  } finally {
    Fs.rmSync(work, { recursive: true, force: true })
  }
  const ms = (key: string) => median(samples.get(key)!)
  const perRow = ms("rawPerRow")
  const lines: Array<Line> = [
    { what: `raw: ${rows} rows, one transaction each`, ms: perRow, note: "1.0 (reference of the per-row rows)" },
    { what: `raw: ${rows} rows in one transaction of prepared inserts`, ms: ms("rawTransaction") },
    { what: `raw: ${rows} rows in one statement`, ms: ms("rawBulk"), note: "reference of the one-statement rows" },
    { what: `raw: ${rows} reads by key`, ms: ms("rawQuery"), note: "reference of the query rows" }
  ]
  const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`
  for (const [label, _] of libs) {
    const k = (key: string) => ms(`${label}${key}`)
    lines.push(
      {
        what: `${label}capture overhead: WAL frames a one-row transaction writes, triggers on`,
        ms: Number.NaN,
        note: `${frames.get(label)!.toFixed(2)} frames (raw without triggers: ${frames.get("raw")!.toFixed(2)})`
      },
      {
        what: `${label}capture overhead: raw, one transaction each, triggers on`,
        ms: k("capturedPerRow"),
        note: `${ratio(k("capturedPerRow"), perRow)} raw without triggers`
      },
      {
        what: `${label}capture overhead: raw, one transaction of prepared inserts, triggers on`,
        ms: k("capturedTransaction"),
        note: `${ratio(k("capturedTransaction"), ms("rawTransaction"))} raw without triggers`
      },
      {
        what: `${label}capture overhead: raw, rows in one statement, triggers on`,
        ms: k("capturedBulk"),
        note: `${ratio(k("capturedBulk"), ms("rawBulk"))} raw without triggers`
      },
      {
        what: `${label}execute, one per row (span on)`,
        ms: k("perRow"),
        note: `${ratio(k("perRow"), perRow)} raw, ${ratio(k("perRow"), k("capturedPerRow"))} raw with triggers`
      },
      { what: `${label}execute, one per row (span off)`, ms: k("perRowNoSpan"), note: `${ratio(k("perRowNoSpan"), perRow)} raw` },
      {
        what: `${label}execute, one per row, an application's tracer installed`,
        ms: k("perRowTracer"),
        note: `${ratio(k("perRowTracer"), perRow)} raw, span ${((k("perRowTracer") - k("perRowNoSpan")) * 1000 / rows).toFixed(1)} µs a call`
      },
      {
        what: `${label}execute, one per row (span on), no WAL fold during the run`,
        ms: k("perRowNoFold"),
        note: `${ratio(k("perRowNoFold"), perRow)} raw, ${ratio(k("perRowNoFold"), k("capturedPerRow"))} raw with triggers`
      },
      {
        what: `${label}execute, one per row (span on), maxWalFrames 2000 (half the folds)`,
        ms: k("perRowBound2000"),
        note: `${ratio(k("perRowBound2000"), perRow)} raw, ${ratio(k("perRowBound2000"), k("capturedPerRow"))} raw with triggers`
      },
      {
        what: `${label}execute, rows in one statement`,
        ms: k("bulk"),
        note: `${ratio(k("bulk"), ms("rawBulk"))} raw, ${ratio(k("bulk"), k("capturedBulk"))} raw with triggers`
      },
      { what: `${label}query, one per row (span on)`, ms: k("query"), note: `${ratio(k("query"), ms("rawQuery"))} raw` },
      { what: `${label}query, one per row (span off)`, ms: k("queryNoSpan"), note: `${ratio(k("queryNoSpan"), ms("rawQuery"))} raw` }
    )
  }
  return lines
}

if (process.argv[1] !== undefined && Url.pathToFileURL(process.argv[1]).href === import.meta.url) {
  const flag = (name: string) => {
    const i = process.argv.indexOf(`--${name}`)
    return i >= 0 ? process.argv[i + 1] : undefined
  }
  executeBench({
    rows: Number(flag("rows") ?? "10000"),
    repeat: Number(flag("repeat") ?? "3"),
    before: flag("before")
  }).then(async (lines) => {
    console.log(`node ${process.version}, ${Os.cpus().length} cpus, load ${Os.loadavg().map((l) => l.toFixed(1)).join(" ")}`)
    console.log(await settings())
    console.table(lines.map((l) => ({ measurement: l.what, ms: Number(l.ms.toFixed(1)), note: l.note ?? "" })))
    process.exit(0)
  }, (error) => {
    console.error(error)
    process.exit(1)
  })
}
