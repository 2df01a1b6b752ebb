/**
 * Test harness for the client engine: one conformance suite runs against the in-process remote over a
 * memory ServerStore and against the real HTTP server on loopback. `Harness` hands out a SyncRemote per
 * database name (on a normal store and on one that rolls generations every few frames).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as HttpClient from "@effect/platform/HttpClient"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as ServerStore from "../../src/ServerStore.js"
import * as StoreRemote from "../../src/StoreRemote.js"
import * as SyncDatabase from "../../src/SyncDatabase.js"
import * as SyncRemote from "../../src/SyncRemote.js"
import * as SyncServer from "../../src/SyncServer.js"
import * as WalFrame from "../../src/WalFrame.js"

/** Frames per generation on the rolling store. */
export const ROLL_FRAMES = 6

export interface HarnessService {
  readonly kind: "store" | "http"
  readonly remote: (database: string, options?: { readonly rolling?: boolean }) => Effect.Effect<SyncRemote.Service>
  /** The database URL on a real server (HTTP harness only). */
  readonly url: (database: string, options?: { readonly rolling?: boolean }) => string | undefined
}

export class Harness extends Context.Tag("test/Harness")<Harness, HarnessService>() {}

export const layerStore: Layer.Layer<Harness> = Layer.scoped(
  Harness,
  Effect.gen(function*() {
    const normal = yield* ServerStore.makeMemory()
    const rolling = yield* ServerStore.makeMemory({ generationFrames: ROLL_FRAMES })
    return {
      kind: "store",
      remote: (database, options) => Effect.succeed(StoreRemote.make(options?.rolling ? rolling : normal, database)),
      url: () => undefined
    } satisfies HarnessService
  })
)

const serverUrl = (options: ServerStore.Options) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      SyncServer.layerNode({ port: 0 }).pipe(Layer.provide(ServerStore.layerMemory(options)))
    ).pipe(Logger.withMinimumLogLevel(LogLevel.Warning))
    return yield* Effect.provide(SyncServer.baseUrl, context)
  })

export const layerHttp: Layer.Layer<Harness> = Layer.scoped(
  Harness,
  Effect.gen(function*() {
    const normal = yield* Effect.orDie(serverUrl({}))
    const rolling = yield* Effect.orDie(serverUrl({ generationFrames: ROLL_FRAMES }))
    const client = yield* HttpClient.HttpClient
    const url = (database: string, options?: { readonly rolling?: boolean }) =>
      `${options?.rolling ? rolling : normal}/db/${database}`
    return {
      kind: "http",
      remote: (database, options) =>
        SyncRemote.makeHttp({ url: url(database, options) }).pipe(Effect.provideService(HttpClient.HttpClient, client)),
      url
    } satisfies HarnessService
  })
).pipe(Layer.provide(NodeHttpClient.layerUndici))

let counter = 0
export const freshName = (prefix: string) => `${prefix}-${process.pid}-${++counter}-${Math.random().toString(36).slice(2, 8)}`

export const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-engine-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

/** Opens a SyncDatabase on `path` over `remote`, closed with the current scope (or `scope`'s). */
export const openClient = (
  remote: SyncRemote.Service,
  path: string,
  options: Partial<SyncDatabase.Options> = {}
) =>
  Layer.build(
    SyncDatabase.layerRemote({ path, conflictBackoff: 5, ...options }).pipe(
      Layer.provide(Layer.succeed(SyncRemote.SyncRemote, remote))
    )
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

/** What the remote holds: its current generation's base + every frame, opened with better-sqlite3. */
export const remoteState = (remote: SyncRemote.Service) =>
  Effect.gen(function*() {
    for (;;) {
      const { generation } = yield* remote.info
      const base = yield* remote.export(generation)
      const frames: Array<WalFrame.Frame> = []
      for (;;) {
        const result = yield* remote.pull(generation, frames.length + 1, frames.length + 129)
        if (result._tag === "Frames") {
          frames.push(...result.frames.map((f) => ({ ...f, page: Uint8Array.from(f.page) })))
          continue
        }
        if (result.generation !== generation) break
        const file = Buffer.from(WalFrame.applyFrames(base, frames))
        file[18] = 1
        file[19] = 1
        return { generation, base, frames, db: new BetterSqlite3(file) }
      }
    }
  })

export const remoteQuery = <Row = Record<string, unknown>>(remote: SyncRemote.Service, sql: string) =>
  Effect.map(remoteState(remote), ({ db }) => {
    try {
      return db.prepare(sql).all() as Array<Row>
    } finally {
      db.close()
    }
  })

/** A replica through layerSqlClientRemote: its context (SyncDatabase + SqlClient), closed with the scope. */
export const openSqlReplica = (remote: SyncRemote.Service, path: string, options: Partial<SyncDatabase.Options> = {}) =>
  Layer.build(
    SyncDatabase.layerSqlClientRemote({ path, conflictBackoff: 5, ...options }).pipe(
      Layer.provide(Layer.succeed(SyncRemote.SyncRemote, remote))
    )
  )

/** The remote, counting its requests by kind (`reset` sets the counts back to 0). */
export const countingRemote = (remote: SyncRemote.Service) => {
  const counts = { info: 0, pull: 0, push: 0 }
  const counted: SyncRemote.Service = {
    ...remote,
    info: Effect.suspend(() => {
      counts.info++
      return remote.info
    }),
    pull: (...args) =>
      Effect.suspend(() => {
        counts.pull++
        return remote.pull(...args)
      }),
    push: (...args) =>
      Effect.suspend(() => {
        counts.push++
        return remote.push(...args)
      })
  }
  const reset = () => {
    counts.info = counts.pull = counts.push = 0
  }
  return { counts, reset, remote: counted }
}
