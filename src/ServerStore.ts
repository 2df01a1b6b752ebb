/**
 * The server's storage and protocol state: generations, their bases and frames, and baton sessions.
 * The HTTP routes (`SyncServer`) and the client's in-process remote (`StoreRemote.layer`) both talk
 * to this service, so every storage layer is tested through one conformance suite.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as fs from "node:fs"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as internalCheckWorker from "./internal/server/checkWorker.js"
import * as internalCore from "./internal/server/serverCore.js"
import * as internalMemory from "./internal/server/serverMemory.js"
import * as internalPostgres from "./internal/server/serverPostgres.js"
import * as internalSqlite from "./internal/server/serverSqlite.js"
import { StoreError } from "./internal/server/storeError.js"
import type * as WalFrame from "./WalFrame.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface DatabaseInfo {
  readonly generation: number
  readonly maxFrameNo: number
}

/**
 * Result of a push (`POST /sync/...`): `Ok` with the frame number the server now holds (`end - 1` when
 * every frame was taken or was already there), or `Conflict` when a frame at or below the head differs
 * or the generation is old. `baton` names the session a transaction that is not yet committed continues in.
 * An `Ok` below `end - 1` means "continue from `maxFrameNo + 1`": after a gap it is the head; it can also
 * be below `start - 1` when the server must see an earlier frame again to tell a pusher whose baton
 * session was lost from a newcomer (see `recordAck` in internal/server/serverCore.ts).
 *
 * @since 0.1.0
 * @category models
 */
export type PushResult =
  | { readonly _tag: "Ok"; readonly generation: number; readonly maxFrameNo: number; readonly baton?: string | undefined }
  | { readonly _tag: "Conflict"; readonly generation: number; readonly maxFrameNo: number }

/**
 * Result of a pull (`GET /sync/...`): whole committed frames contiguous from `start`, or
 * `CheckpointNeeded` when generation G has nothing at or after `start`. `CheckpointNeeded` always names
 * the current generation and its head: for the current G it means "at the head" when `maxFrameNo` is
 * the client's position; for an older G it tells the client to move on (one generation at a time).
 *
 * @since 0.1.0
 * @category models
 */
export type PullResult =
  | {
    readonly _tag: "Frames"
    readonly frames: ReadonlyArray<WalFrame.Frame>
    /** The database's identity, when the answer names it (over HTTP, its `x-database-id` header). */
    readonly databaseId?: string | undefined
  }
  | {
    readonly _tag: "CheckpointNeeded"
    readonly generation: number
    readonly maxFrameNo: number
    /** The database's identity, when the answer names it (over HTTP, its `x-database-id` header). */
    readonly databaseId?: string | undefined
  }

/**
 * A file the store serves (a generation's base, or a snapshot): its size, and its bytes read from storage
 * as the consumer asks for them, so a slow reader holds a chunk of memory, not the file. The bytes are
 * fixed when the body is opened: a roll, a drop or a newer snapshot does not change what it reads.
 *
 * @since 0.1.0
 * @category models
 */
export interface Body {
  readonly size: number
  readonly stream: Stream.Stream<Uint8Array, StoreError>
}

/**
 * The current generation materialised at a committed frame: `body` is the generation's base with frames
 * `1..frameNo` applied (what a replica's TRUNCATE checkpoint at that frame leaves, byte for byte). A client
 * that bootstraps from it continues by pulling `frameNo + 1..` of `generation`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Snapshot {
  readonly generation: number
  readonly frameNo: number
  readonly body: Body
}

export {
  /**
   * Why a request was refused. Each reason has one HTTP status and error code, in
   * `SyncProtocol.errorStatus`: the request was wrong (BadRequest, BadFrames, Malformed, UnknownBaton,
   * TooLarge), names a generation that is not there (GenerationNotFound, GenerationGone) or a database
   * beyond `maxDatabases` (DatabaseLimit); or the server cannot take it now (ReadOnly, PendingLimit, Busy,
   * Storage).
   *
   * @since 0.1.0
   * @category errors
   */
  StoreError
}

/**
 * Counts for monitoring (`GET /metrics`).
 *
 * @since 0.1.0
 * @category models
 */
export interface StoreStats {
  /** Databases in the store; the embedded stores count those opened since the process started. */
  readonly databases: number
  /** Transactions spanning requests (baton sessions) that are open. */
  readonly openBatons: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface PushOptions {
  /**
   * The identity of the database the pushed frames build on (`SyncProtocol.EXTENSION_PUSH_IDENTITY`): a
   * database with another one answers Conflict and stores nothing.
   */
  readonly databaseId?: string | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Counts for monitoring; answering at all tells that the store is reachable (`GET /ready`). */
  readonly stats: Effect.Effect<StoreStats, StoreError>
  /** Creates the database (empty, generation 1) on first use. */
  readonly info: (database: string) => Effect.Effect<DatabaseInfo, StoreError>
  /**
   * The database's identity: a random id created with it and stored with it, so a copy restored from a
   * backup keeps it and a database created anew under the same name gets another. Undefined only for a
   * database created by a version without identities and served read-only. Creates the database like `info`.
   */
  readonly databaseId: (database: string) => Effect.Effect<string | undefined, StoreError>
  /** The base file of a generation (without its frames). */
  readonly exportGeneration: (database: string, generation: number) => Effect.Effect<Uint8Array, StoreError>
  /** `exportGeneration` as a body read as it is consumed; it stays readable until the scope closes. */
  readonly openExport: (database: string, generation: number) => Effect.Effect<Body, StoreError, Scope.Scope>
  /**
   * The current generation materialised at its head (the last committed frame when asked), read as it is
   * consumed; it stays readable until the scope closes.
   */
  readonly snapshot: (database: string) => Effect.Effect<Snapshot, StoreError, Scope.Scope>
  /** The most frames one pull answers with (`pull` cuts longer windows). */
  readonly maxPullFrames: number
  /** Committed frames `start..end-1` (fewer is fine), or CheckpointNeeded. */
  readonly pull: (
    database: string,
    generation: number,
    start: number,
    end: number
  ) => Effect.Effect<PullResult, StoreError>
  /**
   * Frames `start..end-1`; `frames.length` must equal `end - start`. Committed frames are durable before
   * it answers Ok. Frames after the request's last commit frame wait in the baton session it answers
   * with; they become visible and durable with their commit frame, and are dropped if the session idles
   * out or the server restarts (the pusher then gets UnknownBaton, and a gap answer when it starts over).
   * With `options.databaseId` other than the database's identity: Conflict at the head, nothing stored.
   */
  readonly push: (
    database: string,
    generation: number,
    start: number,
    end: number,
    frames: ReadonlyArray<WalFrame.Frame>,
    baton?: string | undefined,
    options?: PushOptions | undefined
  ) => Effect.Effect<PushResult, StoreError>
  /**
   * Waits until the database's head is no longer frame `frameNo` of generation `generation` (a commit
   * after it, or a new generation), for at most `timeout`, and answers the head then: unchanged when the
   * time ran out, at once when the head is already another. Commits made through another server process
   * sharing the storage wake it too. A waiter holds no connection, lock or timer of the storage, and
   * interrupting it removes it.
   */
  readonly awaitChange: (
    database: string,
    generation: number,
    frameNo: number,
    timeout: Duration.DurationInput
  ) => Effect.Effect<DatabaseInfo, StoreError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class ServerStore extends Context.Tag("effect-sqlite-sync/ServerStore")<ServerStore, Service>() {}

/**
 * Which SQLite check a commit must pass before it is acknowledged. `quick_check` finds every structural
 * fault (b-tree pages, cell bounds, pages used twice or never) in time linear in the database size.
 * `changed_tables` (the default) adds `integrity_check` of each table whose pages the commit changed:
 * its indexes are cross-checked against its rows, so an index that no longer matches its table is
 * refused (a commit that changes the schema, or pages the store cannot place in a table, gets a full
 * `integrity_check`). `integrity_check` cross-checks every index of every table; `off` trusts the
 * pushers (for benchmarks and closed deployments).
 *
 * @since 0.1.0
 * @category models
 */
export type IntegrityCheck = "changed_tables" | "quick_check" | "integrity_check" | "off"

/**
 * @since 0.1.0
 * @category constants
 */
export const DEFAULT_INTEGRITY_CHECK: IntegrityCheck = "changed_tables"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * Start a new generation after a commit that takes the current one past this many frames. When set, it
   * replaces the growth rule below.
   */
  readonly generationFrames?: number | undefined
  /**
   * Without `generationFrames`: start a new generation after a commit once the generation's frames hold
   * more page bytes than its base times this factor, and more than `generationMinFrames` frames (default
   * 1: the log never grows past about the database's size). `"never"` keeps one generation forever.
   */
  readonly generationGrowth?: number | "never" | undefined
  /** The fewest frames a generation holds before the growth rule rolls it (default 1000, about 4 MB). */
  readonly generationMinFrames?: number | undefined
  /**
   * Retention: an old generation is kept while it is one of the `keepGenerations` generations before the
   * current one, or while it was superseded less than `keepGenerationsMs` ago; else its base and frames are
   * deleted and it answers GenerationGone. An option left out protects nothing; with both left out the
   * defaults are 2 generations and one hour.
   */
  readonly keepGenerations?: number | undefined
  /** See `keepGenerations`. */
  readonly keepGenerationsMs?: number | undefined
  /** The most frames one pull answer carries (default 1024, about 4 MB; at most 16 384). */
  readonly maxPullFrames?: number | undefined
  /** A baton session idle this long is dropped with its frames, releasing the database (default 10 000). */
  readonly batonIdleMs?: number | undefined
  /** The most frames an unfinished transaction may hold across its requests (default 65 536, 256 MiB of pages held in memory). */
  readonly maxPendingFrames?: number | undefined
  /**
   * The most frames all unfinished transactions of the store may hold together (default 262 144, 1 GiB
   * of pages); a push beyond it is refused with `PendingLimit` until others finish or idle out.
   */
  readonly maxPendingFramesTotal?: number | undefined
  /**
   * How many databases stay open at once (default 256); the least recently used idle ones are closed.
   * A database with an unfinished transaction stays open.
   */
  readonly maxOpenDatabases?: number | undefined
  /** How many databases the store holds at most, those already there included (default: no limit). */
  readonly maxDatabases?: number | undefined
  /** Default `changed_tables`. */
  readonly integrityCheck?: IntegrityCheck | undefined
}

/**
 * Defaults of `Options`: the growth factor and minimum of the roll rule, the retention, the pull answer size.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaults = {
  generationGrowth: internalCore.DEFAULT_GENERATION_GROWTH,
  generationMinFrames: internalCore.DEFAULT_GENERATION_MIN_FRAMES,
  keepGenerations: internalCore.DEFAULT_KEEP_GENERATIONS,
  keepGenerationsMs: internalCore.DEFAULT_KEEP_GENERATIONS_MS,
  maxPullFrames: internalCore.DEFAULT_MAX_PULL_FRAMES
} as const

/**
 * @since 0.1.0
 * @category models
 */
export interface LayerOptions extends Options {
  /** The data directory; each database lives in `<directory>/<name>/`. */
  readonly directory: string
}

/**
 * An in-memory store: everything is lost when the scope closes. For tests.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory = (options: Options = {}): Effect.Effect<Service, never, Scope.Scope> =>
  internalCore.make(internalMemory.make({ integrityCheck: options.integrityCheck ?? DEFAULT_INTEGRITY_CHECK }), options)

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: Options = {}): Layer.Layer<ServerStore> =>
  Layer.scoped(ServerStore, makeMemory(options))

/**
 * The embedded SQLite store in a data directory: `<directory>/<name>/store.sqlite` holds every
 * generation's base and frames (`synchronous=FULL`: an `Ok` push survives `kill -9`), and
 * `<directory>/<name>/head.db` the current state used to check commits (rebuilt on first use after a
 * start); the check runs on a worker thread. One process at a time may serve a directory; a second one
 * gets `Storage` errors. A data directory the process cannot write is served read-only: reads work,
 * pushes and new databases get `ReadOnly`, and a warning is logged at start.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: LayerOptions): Effect.Effect<Service, StoreError, Scope.Scope> =>
  Effect.gen(function*() {
    const directory = options.directory
    yield* Effect.try({
      try: () => fs.mkdirSync(directory, { recursive: true }),
      catch: (cause) => new StoreError({ reason: "Storage", message: `cannot create data directory ${directory}`, cause })
    })
    const readOnly = internalSqlite.isReadOnlyDirectory(directory)
    if (readOnly) {
      yield* Effect.logWarning(
        `the data directory ${directory} is read-only: serving reads, refusing writes and new databases`
      )
    }
    const checker = yield* internalCheckWorker.make
    return yield* internalCore.make(
      internalSqlite.make({ directory, integrityCheck: options.integrityCheck ?? DEFAULT_INTEGRITY_CHECK, checker, readOnly }),
      options
    )
  })

/**
 * The server's default store: `make` as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: LayerOptions): Layer.Layer<ServerStore, StoreError> =>
  Layer.scoped(ServerStore, make(options))

/**
 * `layer` with its options read from `Config`, e.g.
 * `ServerStore.layerConfig({ directory: Config.string("DATA_DIR"), generationFrames: Config.option(...) })`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<LayerOptions>
): Layer.Layer<ServerStore, StoreError | ConfigError.ConfigError> =>
  Layer.scoped(ServerStore, Effect.flatMap(Config.unwrap(config), make))

/**
 * @since 0.1.0
 * @category models
 */
export interface PostgresOptions extends Options {
  /** `postgres://USER:PASSWORD@HOST:PORT/DATABASE` */
  readonly url: string | Redacted.Redacted<string>
  /** The schema the store's tables live in, created on first start (default `effect_sqlite_sync`). */
  readonly schema?: string | undefined
  /** Connections this process keeps to PostgreSQL at most (default 10). */
  readonly maxConnections?: number | undefined
}

/**
 * The store in PostgreSQL, for running several server processes over one PostgreSQL database: any of
 * them can answer any request, with the same guarantees as one process. A push (its conflict decision,
 * frame numbers, commit, baton session and any roll) is one PostgreSQL transaction under the
 * database's row lock, answered after it committed; pending baton frames are stored in PostgreSQL, so a
 * transaction spanning requests continues on any process. The tables are created in their own schema on
 * first start and migrated by version (see docs/server.md).
 *
 * @since 0.1.0
 * @category constructors
 */
export const makePostgres = (options: PostgresOptions): Effect.Effect<Service, StoreError, Scope.Scope> =>
  Effect.gen(function*() {
    const schema = options.schema ?? internalPostgres.DEFAULT_SCHEMA
    const sql = yield* PgClient.make({
      url: typeof options.url === "string" ? Redacted.make(options.url) : options.url,
      maxConnections: options.maxConnections ?? 10,
      applicationName: "effect-sqlite-sync"
    }).pipe(
      Effect.provide(Reactivity.layer),
      Effect.mapError((cause) => new StoreError({ reason: "Storage", message: "cannot connect to PostgreSQL", cause }))
    )
    yield* internalPostgres.migrate(sql, schema)
    const checker = yield* internalCheckWorker.make
    return yield* internalCore.make(
      internalPostgres.make({ sql, schema, integrityCheck: options.integrityCheck ?? DEFAULT_INTEGRITY_CHECK, checker }),
      options
    )
  })

/**
 * `makePostgres` as a layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerPostgres = (options: PostgresOptions): Layer.Layer<ServerStore, StoreError> =>
  Layer.scoped(ServerStore, makePostgres(options))
