/**
 * Local-first SQLite that syncs with a WAL-frame sync server: reads and writes are local; `push` sends
 * local changes, `pull` brings the remote's, `sync` does both. Two copies of the
 * database (Draft takes writes, Synced mirrors the remote), local changes captured on Draft and replayed
 * onto Synced to make the frames a push sends.
 *
 * ```ts
 * import { FetchHttpClient } from "@effect/platform"
 * import { Effect } from "effect"
 * import { SyncDatabase } from "effect-sqlite-sync"
 *
 * const program = Effect.gen(function*() {
 *   const db = yield* SyncDatabase.SyncDatabase
 *   yield* db.execute("CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, body TEXT)")
 *   yield* db.execute("INSERT INTO notes VALUES (?, ?)", ["n1", "hello"])
 *   yield* db.sync
 *   return yield* db.query("SELECT * FROM notes")
 * })
 *
 * program.pipe(
 *   Effect.provide(SyncDatabase.layer({ path: "./notes.db", url: "http://127.0.0.1:8080/db/notes" })),
 *   Effect.provide(FetchHttpClient.layer),
 *   Effect.runPromise
 * )
 * ```
 *
 * @since 0.1.0
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import type * as HttpClient from "@effect/platform/HttpClient"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import type * as Queue from "effect/Queue"
import type * as Redacted from "effect/Redacted"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import type * as SubscriptionRef from "effect/SubscriptionRef"
import * as ConflictPolicy from "./ConflictPolicy.js"
import * as AutoSync from "./internal/engine/autoSync.js"
import * as Engine from "./internal/engine/engine.js"
import * as OwnerLock from "./internal/engine/ownerLock.js"
import * as SqlClientInternal from "./internal/engine/sqlClient.js"
import * as LiveSync from "./internal/live/liveSync.js"
import * as Reactive from "./internal/live/reactive.js"
import * as SyncEventsInternal from "./internal/engine/syncEvents.js"
import * as LocalCopies from "./LocalCopies.js"
import * as SyncError from "./SyncError.js"
import * as SyncMetadata from "./SyncMetadata.js"
import type * as SyncEvents from "./SyncEvents.js"
import * as SyncRemote from "./SyncRemote.js"
import * as CallSpan from "./internal/engine/callSpan.js"

/**
 * Result of `execute`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ExecuteResult {
  /** Rows inserted, updated or deleted by the statement (SQLite's `changes()`). */
  readonly changes: number
  /**
   * The rowid of the last row this statement inserted, as SQLite reports it; 0 when it inserted none
   * (`CREATE`, `UPDATE`, `DELETE`, an `INSERT OR IGNORE` that ignored its row).
   */
  readonly lastInsertRowid: number | bigint
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  readonly clientId: string
  /** Local changes the remote does not have yet (as of the last push or pull). */
  readonly pendingChanges: number
  readonly generation: number
  readonly syncedFrame: number
  readonly lastPushAt: Option.Option<Date>
  readonly lastPullAt: Option.Option<Date>
  /** Frame bytes pushed and frame/base bytes received since this layer was built. */
  readonly bytesSent: number
  readonly bytesReceived: number
  readonly draftWalBytes: number
  readonly syncedWalBytes: number
  /**
   * "synced" while a pull replaces the draft copy, and on a live replica with nothing pending, which reads
   * the remote's changes from its synced copy and brings them to the draft copy once they pause, before its
   * next write, or when it closes.
   */
  readonly activeCopy: "draft" | "synced"
  /**
   * The longest time the last pull that replaced the draft copy held writes back: the swap of the draft
   * copy's WAL, or one read of its change log (the copy itself is made while writes go on).
   */
  readonly lastWriteBlockedMs: Option.Option<number>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly clientId: string
  /** Runs one statement as one local transaction; its changes are captured for the next push. */
  readonly execute: (
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ExecuteResult, SyncError.SqlStatementError>
  /**
   * Runs one read-only statement (SELECT, VALUES, EXPLAIN, WITH … SELECT, PRAGMA without `=`) on the local
   * database; rows as objects. Writes are refused with a `SqlStatementError`: they would bypass capture.
   */
  readonly query: <Row extends object = Record<string, unknown>>(
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<Row>, SyncError.SqlStatementError>
  /**
   * Sends local changes to the remote: replays them onto the synced copy and pushes the frames that makes,
   * again after a conflict. The local copy does not show the remote's changes afterwards; `pull` does. Succeeds with whether anything was pushed.
   */
  readonly push: Effect.Effect<boolean, SyncError.SyncError>
  /** Brings the remote's changes into the local copy, keeping unpushed local changes. */
  readonly pull: Effect.Effect<boolean, SyncError.SyncError>
  /** `push` then `pull`; succeeds with whether the local copy changed. */
  readonly sync: Effect.Effect<boolean, SyncError.SyncError>
  /**
   * Starts over from the remote's current state, keeping the local changes not pushed yet: the synced
   * copy becomes the remote's current base (its identity recorded anew), then a pull replays the pending
   * changes onto it; the next push sends them, once. This is the way on after a `RemoteMismatch`
   * (`DatabaseReplaced`, `RemoteBehind`): changes the remote acknowledged and then lost are not sent again.
   * The engine does the same by itself when the remote no longer keeps the synced generation (an event
   * `Rebootstrapped` says so).
   */
  readonly rebootstrap: Effect.Effect<boolean, SyncError.SyncError>
  readonly stats: Effect.Effect<Stats, SyncError.SyncError>
  /**
   * The local conflict log (`<path>-conflicts`, the last 1000 entries, oldest first): every conflict an
   * acknowledged push met, with table, key, local before/after, remote row, the decision and its time.
   */
  readonly conflicts: Effect.Effect<ReadonlyArray<ConflictPolicy.Entry>, SyncError.SyncError>
  /**
   * What sync does, as it happens: push/pull/sync started, progress (frames and bytes), conflict retries
   * and their resolution, generation changes, finished (with counts) or failed, and local writes. Each
   * run of the stream subscribes anew; events before that are not replayed.
   */
  readonly events: Stream.Stream<SyncEvents.SyncEvent>
  /** A subscription to `events` that exists once this succeeds, for code that must not miss one. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<SyncEvents.SyncEvent>, never, Scope.Scope>
  /** idle / pushing / pulling, pending local changes, the last error, whether the remote answered. */
  readonly status: SubscriptionRef.SubscriptionRef<SyncEvents.Status>
  /**
   * The rows of a read-only statement (as `query` runs it) as a Stream: emitted at once, then again after
   * every local write and every pull that changes a table the statement reads (SQLite's plan of the
   * statement names them: views, joins, subqueries and CTEs are followed). Writes to other tables cause no
   * emission. Changes made while the query runs again make one more run, so a burst of writes may give one
   * emission, and the last state is always emitted; a consumer slower than the changes gets the newest rows.
   * A pull may touch any table: after one, the statement runs again and emits only if its rows differ.
   *
   * ```ts
   * yield* db.reactive("SELECT id, body FROM notes ORDER BY id").pipe(
   *   Stream.runForEach((rows) => Console.log(rows))
   * )
   * ```
   */
  readonly reactive: <Row extends object = Record<string, unknown>>(
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Stream.Stream<ReadonlyArray<Row>, SyncError.SqlStatementError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class SyncDatabase extends Context.Tag("effect-sqlite-sync/SyncDatabase")<SyncDatabase, Service>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<R = never> {
  /**
   * What happens when a local change meets a remote row it did not expect (see docs/conflicts.md):
   * `"lastPushWins"` (default: column-level, an insert over another replica's row fails the push with a
   * `KeyExists` conflict), `"lastPushWinsRow"` (whole rows), `"remoteWins"`, or a resolver
   * `(conflict) => Effect<ConflictPolicy.Resolution, never, R>` that may use services of the environment.
   */
  readonly conflicts?: ConflictPolicy.Policy<R> | undefined
  /** Called for every captured change before it is replayed: keep, skip or rewrite it. */
  readonly transform?: ConflictPolicy.Transform<R> | undefined
  /** Local files are `<path>-draft`, `<path>-synced`, `<path>-info` (and their `-wal`/`-shm`). */
  readonly path: string
  readonly clientName?: string | undefined
  /** Rounds of reset, pull, replay and push before a push fails with ConflictError (default 12). */
  readonly maxPushRounds?: number | undefined
  readonly conflictBackoff?: Duration.DurationInput | undefined
  /**
   * Called before each durable step of push and pull (`"copy:flagged"`, `"push:answered"`, ...): crash
   * tests kill the process there; tracing may log.
   */
  readonly onStep?: ((step: string) => Effect.Effect<void>) | undefined
  /** Sync in the background on this schedule and after local writes, as `autoSync` does, for the layer's life. */
  readonly autoSync?: Schedule.Schedule<unknown, unknown> | undefined
  /**
   * Live sync for the layer's life (`true`, or options): a waiting pull stays open at the remote's head and
   * its changes are pulled as soon as they are committed; local writes are pushed shortly after they
   * commit (a burst goes as one sync); an unreachable remote is tried again with capped exponential backoff,
   * and `status.live` / `Live` events say `connected`, `syncing` or `offline`. Against a server without
   * waiting pulls the remote is polled instead (every 2 seconds by default). An alternative to `autoSync`:
   * giving both fails with `OptionsError`. `push`, `pull` and `sync` keep working.
   */
  readonly live?: boolean | LiveOptions | undefined
  /**
   * A local database belongs to the server database it was made from: its URL is recorded, and another
   * URL is refused (`RemoteMismatch("UrlChanged")`) unless this is true, for when that server database
   * moved (a new host name). The server database's identity is still checked: moving to another
   * database is refused all the same.
   */
  readonly allowUrlChange?: boolean | undefined
  /**
   * When the copies exist but their `<path>-info` file is lost, the open is refused
   * (`StorageError("MetadataLost")`): which local changes were not pushed is unknown. With this true, the
   * local files are discarded instead and the database is made anew from the remote (local changes not
   * pushed are lost). It changes nothing when the metadata file is there.
   */
  readonly startOver?: boolean | undefined
  /**
   * How many frames each local copy's WAL holds at rest before they are folded into its database file
   * (default 1000, about 4 MB): local storage stays about twice the database plus two such WALs.
   */
  readonly maxWalFrames?: number | undefined
  /**
   * What a new local database starts from: `"head"` (default) the remote's current state, so that it opens
   * with the data; `"base"` the base of the remote's current generation only (the libSQL client's way:
   * the rest arrives with the first `pull`).
   */
  readonly bootstrap?: "head" | "base" | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface HttpOptions<R = never> extends Options<R> {
  /** The database URL on a sync server, e.g. `http://127.0.0.1:8080/db/notes`. */
  readonly url: string
  readonly authToken?: Redacted.Redacted | string | undefined
  readonly retrySchedule?: Schedule.Schedule<unknown, SyncError.RemoteFailure> | undefined
  readonly requestTimeout?: Duration.DurationInput | undefined
}

/**
 * Opens (bootstrapping a brand-new database from the remote, or recovering after a crash) with the
 * `SyncRemote`, `LocalCopies` and `SyncMetadata` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <R = never>(options: Options<R>) =>
  Effect.gen(function*() {
    const live = options.live === true ? {} : options.live === false ? undefined : options.live
    if (live !== undefined && options.autoSync !== undefined) {
      return yield* new SyncError.OptionsError({
        reason: "Conflicting",
        message: "live and autoSync are alternatives: give one of them"
      })
    }
    // Events and status: the engine tells the observer of frames as they move; its operations are wrapped.
    const instrumentation = yield* SyncEventsInternal.make
    const remote = yield* SyncRemote.SyncRemote
    const observed = instrumentation.observe(remote)
    // A new database's download starts before the lock is taken (used only if the open bootstraps).
    const early = yield* Engine.askEarly(options, observed)
    // One owner per path, before any file is read; released last, after both copies are closed.
    yield* OwnerLock.acquire(options.path)
    const draft = yield* LocalCopies.Draft
    const synced = yield* LocalCopies.Synced
    yield* Effect.addFinalizer(() => Effect.zipRight(draft.close, synced.close))
    // The policy's and the transform's services come from the environment the layer is built in.
    const context = yield* Effect.context<R>()
    const resolver = ConflictPolicy.resolver(options.conflicts ?? "lastPushWins")
    const transform = options.transform
    const { conflicts: _, transform: __, live: ___, ...engineOptions } = options
    const engine = yield* Engine.make({
      ...engineOptions,
      // A live replica follows the remote on its synced copy (reads there) and copies to Draft when it writes.
      followOnSynced: live !== undefined,
      conflicts: (conflict) => Effect.provide(resolver(conflict), context),
      ...(transform === undefined ? {} : {
        transform: (change, current) => Effect.provide(transform(change, current), context)
      }),
      onConflicts: instrumentation.publishConflicts,
      observer: instrumentation.observer
    }, early).pipe(
      Effect.provideService(SyncRemote.SyncRemote, observed)
    )
    const wrapped = yield* instrumentation.wrap(engine)
    // push, pull, sync and execute get their spans from the wrapper; the reads get theirs here.
    const query: Service["query"] = (sql, params) =>
      CallSpan.around("SyncDatabase.query", { sql })(wrapped.query(sql, params))
    const service: Service & Reactive.Source = {
      ...wrapped,
      query,
      tracker: engine.changes,
      reactive: (sql, params) => Reactive.reactive({ ...engine, tracker: engine.changes, query }, sql, params ?? []),
      stats: Effect.withSpan(wrapped.stats, "SyncDatabase.stats"),
      conflicts: Effect.withSpan(wrapped.conflicts, "SyncDatabase.conflicts")
    }
    if (options.autoSync !== undefined) yield* AutoSync.autoSync(service, options.autoSync)
    if (live !== undefined) {
      yield* instrumentation.reportLive("syncing")
      yield* LiveSync.run({
        push: service.push,
        pull: service.pull,
        received: Effect.match(engine.stats, { onFailure: () => undefined, onSuccess: (s) => s.bytesReceived }),
        position: engine.position,
        tracker: engine.changes,
        offer: engine.offer,
        remote: observed,
        report: instrumentation.reportLive,
        behind: engine.behind,
        catchUp: engine.catchUp
      }, live)
    }
    return service
  })

/**
 * @since 0.1.0
 * @category models
 */
export interface AutoSyncOptions extends AutoSync.Options {}

/**
 * Live sync's settings (`live: { ... }`): `waitSeconds` a waiting pull stays open (default 25, cut to the
 * server's limit), `pushDelay` after a local write before it is pushed (default 2 ms), `pollInterval`
 * against a server without waiting pulls (default 2 seconds), `maxBackoff` between attempts while the
 * remote cannot be reached (default 10 seconds; from 250 ms, doubling), `catchUpDelay` after the last pull
 * before a replica that reads the remote's changes from its synced copy brings its draft copy up to date in
 * the background (default 100 ms).
 *
 * @since 0.1.0
 * @category models
 */
export interface LiveOptions extends LiveSync.Options {}

/**
 * Forks a fiber, for the current scope, that syncs on `schedule` and after local writes (once they have
 * paused for `debounce`, default 1 second), one sync at a time, retrying transient failures (network,
 * conflicts) with backoff (default: exponential from 1 second, at most a minute apart). A sync that has
 * started finishes before the scope closes.
 *
 * ```ts
 * yield* SyncDatabase.autoSync(Schedule.spaced("30 seconds"))
 * ```
 *
 * @since 0.1.0
 * @category background
 */
export const autoSync = <Out, R>(
  schedule: Schedule.Schedule<Out, unknown, R>,
  options?: AutoSyncOptions
): Effect.Effect<void, never, SyncDatabase | Scope.Scope | R> =>
  Effect.flatMap(SyncDatabase, (db) => AutoSync.autoSync(db, schedule, options))

/**
 * A `SyncDatabase` over any `SyncRemote` (for example `StoreRemote.layer` in tests).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRemote = <R = never>(
  options: Options<R>
): Layer.Layer<SyncDatabase, SyncError.SyncError, SyncRemote.SyncRemote | R> =>
  Layer.scoped(SyncDatabase, make(options)).pipe(
    Layer.provide(Layer.merge(LocalCopies.layer({ path: options.path }), SyncMetadata.layer(`${options.path}-info`)))
  )

/**
 * A `SyncDatabase` syncing over HTTP. Requires only an `HttpClient`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = <R = never>(
  options: HttpOptions<R>
): Layer.Layer<SyncDatabase, SyncError.SyncError, HttpClient.HttpClient | R> =>
  layerRemote(options).pipe(
    Layer.provide(
      SyncRemote.layerHttp({
        url: options.url,
        authToken: options.authToken,
        retrySchedule: options.retrySchedule,
        requestTimeout: options.requestTimeout
      })
    )
  )

/**
 * `layer` with its options read from `Config`, e.g.
 * `layerConfig({ path: Config.string("DB_PATH"), url: Config.string("SYNC_URL"), authToken: Config.redacted("SYNC_TOKEN") })`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = <R = never>(
  config: Config.Config.Wrap<{
    readonly path: string
    readonly url: string
    readonly authToken?: Redacted.Redacted | undefined
    readonly clientName?: string | undefined
    readonly live?: boolean | undefined
  }>,
  /** Options that cannot come from `Config` (policy, transform, ...). */
  options?: Omit<HttpOptions<R>, "path" | "url" | "authToken" | "clientName">
): Layer.Layer<SyncDatabase, SyncError.SyncError | ConfigError.ConfigError, HttpClient.HttpClient | R> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(config), (values) => layer<R>({ ...options, ...values })))

/**
 * `layerRemote` that also provides @effect/sql's `SqlClient` on the synced database, so code written
 * against `SqlClient` (`sql` templates, `withTransaction`, `SqlSchema`, `SqlResolver`, `Model`) syncs by
 * adding this layer. Reads follow the active copy; writes are captured for push and wait while a pull
 * replaces the local copy; `withTransaction` is one local transaction (one unit of replay) that holds
 * writes back from a pull's copy step until it ends. It also provides the database's `Reactivity`
 * (@effect/experimental): `sql.reactive(["notes"], ...)` runs again after every write and every pull that
 * changes `notes` (keys are table names, in any case).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerSqlClientRemote = <R = never>(
  options: Options<R>
): Layer.Layer<SyncDatabase | SqlClient.SqlClient | Reactivity.Reactivity, SyncError.SyncError, SyncRemote.SyncRemote | R> =>
  sqlClientFor.pipe(Layer.provideMerge(layerRemote(options)))

/**
 * `layer` (over HTTP) that also provides @effect/sql's `SqlClient`; see `layerSqlClientRemote`.
 *
 * ```ts
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   yield* sql.withTransaction(sql`INSERT INTO notes ${sql.insert({ id: "n1", body: "hi" })}`)
 *   yield* (yield* SyncDatabase.SyncDatabase).sync
 * })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerSqlClient = <R = never>(
  options: HttpOptions<R>
): Layer.Layer<SyncDatabase | SqlClient.SqlClient | Reactivity.Reactivity, SyncError.SyncError, HttpClient.HttpClient | R> =>
  sqlClientFor.pipe(Layer.provideMerge(layer(options)))

/**
 * The SqlClient and the database's Reactivity: `sql.reactive(["notes"], ...)` runs again when a write or a
 * pull changes `notes`, and so do `Reactivity.stream`/`query` of the app on the same keys (table names).
 */
const sqlClientFor: Layer.Layer<SqlClient.SqlClient | Reactivity.Reactivity, never, SyncDatabase> = Layer.unwrapEffect(
  Effect.map(SyncDatabase, (db) => {
    const engine = db as Service & Partial<SqlClientInternal.EngineAccess & Reactive.Source>
    if (engine.executeRows === undefined || engine.transaction === undefined || engine.tracker === undefined) {
      return Layer.die("SyncDatabase.layerSqlClient needs a SyncDatabase built by this module")
    }
    const reactivity = Layer.succeed(Reactivity.Reactivity, Reactive.service(engine.tracker, engine.watch!))
    return Layer.effect(SqlClient.SqlClient, SqlClientInternal.make(engine as Service & SqlClientInternal.EngineAccess)).pipe(
      Layer.provideMerge(reactivity)
    )
  })
)
