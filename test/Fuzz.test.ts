/**
 * Model-based fuzzing (issue 6): random histories of inserts, upserts, updates, deletes, multi-statement
 * transactions and schema changes on several replicas, with pushes, pulls and syncs, some of them at the
 * same time, checked against the last-push-wins model of test/support/fuzzModel.ts after every step
 * (test/support/fuzz.ts says what is checked). Replay a failure with the seed and path it prints:
 *   FUZZ_SEED=<seed> FUZZ_PATH=<path> npx vitest run test/Fuzz.test.ts
 * Long run: FUZZ_RUNS=1000 npx vitest run test/Fuzz.test.ts (the HTTP and libSQL properties take a tenth).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as HttpClient from "@effect/platform/HttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import * as fc from "fast-check"
import Database from "libsql"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as SyncRemote from "../src/SyncRemote.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as Fuzz from "./support/fuzz.js"
import * as Model from "./support/fuzzModel.js"
import { spawnServer } from "./support/process.js"

const RUNS = Number(process.env.FUZZ_RUNS ?? 10)
const replay = process.env.FUZZ_SEED === undefined
  ? {}
  : { seed: Number(process.env.FUZZ_SEED), ...(process.env.FUZZ_PATH === undefined ? {} : { path: process.env.FUZZ_PATH }) }
const params = <T>(runs: number, seed: number): fc.Parameters<T> => ({
  numRuns: runs,
  seed,
  endOnFailure: process.env.FUZZ_SHRINK === undefined,
  ...replay
})

let histories = 0
const totals = { commits: 0, changes: 0, races: 0 }

/** Runs one history in its own scope and temp dir; on failure the error carries the step log. */
const runHistory = <R>(
  ops: ReadonlyArray<Model.Op>,
  setup: (dir: string) => Effect.Effect<Omit<Fuzz.Environment, "dir" | "log">, unknown, Scope.Scope | R>,
  after: (outcome: Fuzz.Outcome, env: Omit<Fuzz.Environment, "dir" | "log">) => void,
  provide: (e: Effect.Effect<void, unknown, Scope.Scope | R>) => Effect.Effect<void, unknown, Scope.Scope>
) =>
  Effect.gen(function*() {
    const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-fuzz-"))
    const scope = yield* Scope.make()
    const lines: Array<string> = []
    const exit = yield* Effect.exit(Scope.extend(
      provide(Effect.gen(function*() {
        const env = yield* setup(dir)
        const outcome = yield* Fuzz.run(ops, { ...env, dir, log: (l) => lines.push(l) })
        totals.commits += outcome.commits
        totals.changes += outcome.changes
        totals.races += outcome.races
        after(outcome, env)
      })),
      scope
    ))
    yield* Scope.close(scope, Exit.void)
    Fs.rmSync(dir, { recursive: true, force: true })
    histories++
    if (histories % 50 === 0) console.log(`fuzz: ${histories} histories passed (${new Date().toISOString()})`)
    if (process.env.FUZZ_LOG !== undefined) console.log(lines.join("\n"))
    if (Exit.isFailure(exit)) {
      const error = new Error(`history failed after these steps:\n${lines.join("\n")}`)
      ;(error as { cause?: unknown }).cause = exit.cause
      throw new Error(`${error.message}\n${String(exit.cause).slice(0, 4000)}`)
    }
  }).pipe(Logger.withMinimumLogLevel(LogLevel.Warning), Effect.runPromise)

const w = (client: number, _tag: Model.Write["_tag"], table: number, key: Array<number> | "all", set: Array<[number, number]>): Model.Op => ({
  _tag: "write",
  client,
  writes: [{ _tag, table, key, set, plain: true }]
})
const s = (client: number, kind: Model.SyncKind): Model.Op => ({ _tag: "sync", client, kind })

/** Hand-written histories run before the random ones: Turso's published scenarios and the model's edges. */
const examples: Array<[ReadonlyArray<Model.Op>]> = [
  // edits of different columns of one row by two replicas: the later push's whole row wins (RowChanged)
  [[w(0, "upsert", 0, [0], [[0, 1], [1, 2]]), s(0, "sync"), s(1, "pull"), s(2, "pull"), w(1, "update", 0, [0], [[0, 3]]),
    w(2, "update", 0, [0], [[1, 3]]), { _tag: "group", members: [[1, "push"], [2, "push"]] }]],
  // last push wins with a delete; an update of a row deleted elsewhere brings it back
  [[w(0, "upsert", 0, [1], [[0, 2]]), s(0, "sync"), s(1, "pull"), w(1, "delete", 0, [1], []), w(0, "update", 0, [1], [[0, 4]]),
    s(1, "push"), s(0, "push"), s(2, "pull")]],
  // an update of a column the remote did not change: only that column is written
  [[w(0, "upsert", 0, [1], [[0, 2], [1, 1]]), s(0, "sync"), s(1, "pull"), s(2, "pull"), w(1, "update", 0, [1], [[0, 4]]),
    s(1, "push"), w(2, "update", 0, [2], [[1, 3]]), s(2, "sync")]],
  // non-overlapping keys merge; the same key: the later push wins
  [[w(0, "upsert", 0, [0], [[0, 1]]), w(1, "upsert", 0, [1], [[0, 2]]), w(2, "upsert", 0, [0], [[0, 3]]),
    { _tag: "group", members: [[0, "sync"], [1, "sync"], [2, "sync"]] }]],
  // the same column added by two replicas, data written in it by both, an index on it
  [[{ _tag: "ddl", client: 0, ddl: { _tag: "addColumn", table: "t0", column: "x" } }, { _tag: "ddl", client: 1, ddl: { _tag: "addColumn", table: "t0", column: "y" } },
    { _tag: "ddl", client: 1, ddl: { _tag: "addColumn", table: "t0", column: "x" } }, w(0, "upsert", 0, [2], [[2, 1]]), w(1, "upsert", 0, [2], [[2, 2]]),
    { _tag: "ddl", client: 1, ddl: { _tag: "createIndex", index: "i1" } }, { _tag: "group", members: [[0, "push"], [1, "sync"]] }, s(0, "pull")]]
]

describe("model-based fuzzing", () => {
  it("replicas over the in-process store follow the last-push-wins model (tiny WAL bounds, frequent rolls)", { timeout: 600_000_000 }, async () => {
    const clients = 3
    await fc.assert(
      fc.asyncProperty(Model.ops(clients, { reader: false }), fc.constantFrom(1, 2, 5), fc.constantFrom(8, 20, undefined), (ops, maxWalFrames, generationFrames) =>
        runHistory(ops, () =>
          Effect.gen(function*() {
            // Each local copy folds its WAL past a handful of frames, and the server starts a new generation
            // every few commits: folds, rolls and page-wise copies meet in every history.
            const store = yield* ServerStore.makeMemory({ generationFrames })
            const remote = StoreRemote.make(store, "fuzz")
            return { clients, remote, replicaRemote: () => Effect.succeed(remote), clientOptions: { maxWalFrames } }
          }), () => {}, (e) => e)),
      // examples count among numRuns
      {
        ...params<[ReadonlyArray<Model.Op>, number, number | undefined]>(RUNS + examples.length, 20261129),
        examples: examples.map(([ops]) => [ops, 2, 8] as [ReadonlyArray<Model.Op>, number, number | undefined])
      }
    )
    console.log(`fuzz: ${histories} histories, ${totals.commits} server commits, ${totals.changes} changes replayed, ${totals.races} groups with racing pushes`)
  })

  it("replicas over the real HTTP server follow the model", { timeout: 600_000_000 }, async () => {
    const clients = 3
    await fc.assert(
      fc.asyncProperty(Model.ops(clients, { reader: false }), (ops) =>
        runHistory(ops, () =>
          Effect.gen(function*() {
            const context = yield* Layer.build(SyncServer.layerNode({ port: 0 }).pipe(Layer.provide(ServerStore.layerMemory())))
            const url = `${yield* Effect.provide(SyncServer.baseUrl, context)}/db/fuzz`
            const http = yield* HttpClient.HttpClient
            const remote = yield* SyncRemote.makeHttp({ url })
            const replicaRemote = () => Effect.provideService(SyncRemote.makeHttp({ url }), HttpClient.HttpClient, http)
            return { clients, remote, replicaRemote }
          }).pipe(Effect.orDie), () => {}, (e) =>
          Effect.gen(function*() {
            const client = yield* HttpClient.HttpClient
            return yield* Effect.provideService(e, HttpClient.HttpClient, client)
          }).pipe(Effect.provide(NodeHttpClient.layerUndici)))),
      params(Math.max(1, Math.ceil(RUNS / 10)), 777)
    )
  })

  it("a real libSQL client that only pulls ends byte-identical to the server's database", { timeout: 600_000_000 }, async () => {
    const clients = 2
    let compared = 0
    await fc.assert(
      fc.asyncProperty(Model.ops(clients, { reader: true }), (ops) =>
        runHistory(ops, (dir) =>
          Effect.gen(function*() {
            const data = NodePath.join(dir, "server")
            Fs.mkdirSync(data)
            const server = yield* Effect.acquireRelease(
              Effect.promise(() => spawnServer(["--data", data])),
              (s) => Effect.promise(async () => { s.child.kill("SIGTERM"); await s.exited })
            )
            const url = `${server.url}/db/fuzz`
            const http = yield* HttpClient.HttpClient
            const remote = yield* SyncRemote.makeHttp({ url })
            let reader: Database.Database | undefined
            const open = () => {
              reader ??= new Database(NodePath.join(dir, "libsql.db"), { syncUrl: url, offline: true } as Database.Options)
              return reader
            }
            yield* Effect.addFinalizer(() => Effect.sync(() => reader?.close()))
            return {
              clients,
              remote,
              replicaRemote: () => Effect.provideService(SyncRemote.makeHttp({ url }), HttpClient.HttpClient, http),
              reader: {
                sync: () => { open().sync() },
                all: (sql: string) => open().prepare(sql).all() as ReadonlyArray<Record<string, unknown>>
              },
              path: NodePath.join(dir, "libsql.db"),
              checkpoint: () => { open().exec("PRAGMA wal_checkpoint(TRUNCATE)") }
            }
          }), (outcome, env) => {
            const e = env as unknown as { path: string; checkpoint: () => void }
            e.checkpoint()
            const file = Fs.readFileSync(e.path)
            const wal = Fs.existsSync(`${e.path}-wal`) ? Fs.statSync(`${e.path}-wal`).size : 0
            expect(wal).toBe(0)
            expect(Buffer.compare(file, Buffer.from(WalFrame.applyFrames(outcome.base, outcome.frames)))).toBe(0)
            compared++
          }, (e) =>
          Effect.gen(function*() {
            const client = yield* HttpClient.HttpClient
            return yield* Effect.provideService(e, HttpClient.HttpClient, client)
          }).pipe(Effect.provide(NodeHttpClient.layerUndici)))),
      params(Math.max(1, Math.ceil(RUNS / 10)), 99)
    )
    expect(compared).toBeGreaterThan(0)
    console.log(`fuzz: ${histories} histories in all (${totals.commits} commits, ${totals.changes} changes, ${totals.races} races), ${compared} libSQL byte comparisons`)
  })
})
