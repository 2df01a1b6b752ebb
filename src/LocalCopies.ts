/**
 * The client's two SQLite copies of the database:
 * - `Draft` (`<path>-draft`): takes every local write, with change capture installed on its connection;
 * - `Synced` (`<path>-synced`): the remote's base of the synced generation plus exactly the remote's
 *   frames in its WAL; local changes are replayed onto it to make the frames a push sends.
 *
 * Each is an @effect/sql `SqlClient` on a better-sqlite3 connection the engine opens itself (so that replay
 * and capture can run prepared statements on the handle without Effect work per row), under its own tag
 * (never the shared `SqlClient` tag),
 * opened and reopened through scopes because the engine replaces their files. Both run with
 * `wal_autocheckpoint=0` and are closed without checkpointing: a read-only connection is opened and
 * queried before the writer closes and is closed last, so the WAL keeps every frame until the engine
 * folds it (Synced: the frames a reset may need; Draft: the pages its local writes changed).
 *
 * @since 0.1.0
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as Executor from "./internal/sqlite/executor.js"
import { StorageError } from "./SyncError.js"

/**
 * One local copy: its file and its current connection, if open.
 *
 * @since 0.1.0
 * @category models
 */
export interface Copy {
  readonly kind: "draft" | "synced"
  readonly filename: string
  /** The open client. Using a closed copy is an engine bug (a defect). */
  readonly client: Effect.Effect<SqlClient.SqlClient>
  readonly isOpen: Effect.Effect<boolean>
  /** Opens the file (idempotent). */
  readonly open: Effect.Effect<SqlClient.SqlClient, StorageError>
  /** Closes the connection (idempotent); for Synced without checkpointing its WAL. */
  readonly close: Effect.Effect<void>
  /** Closes, runs `effect` on the files, and reopens whatever happens. */
  readonly withClosed: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | StorageError, R>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Draft extends Context.Tag("effect-sqlite-sync/LocalCopies/Draft")<Draft, Copy>() {}

/**
 * @since 0.1.0
 * @category tags
 */
export class Synced extends Context.Tag("effect-sqlite-sync/LocalCopies/Synced")<Synced, Copy>() {}

interface Opened {
  readonly client: SqlClient.SqlClient
  readonly scope: Scope.CloseableScope
}

const openClient = (filename: string) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const client = yield* Executor.makeClient({ filename }).pipe(
      Scope.extend(scope),
      // better-sqlite3 throws from its constructor: a defect here, turned into a StorageError.
      Effect.catchAllDefect((cause) =>
        Effect.zipRight(
          Scope.close(scope, Exit.void),
          Effect.fail(new StorageError({ reason: "Files", message: `cannot open ${filename}: ${cause instanceof Error ? cause.message : String(cause)}`, path: filename, cause }))
        )
      )
    )
    return { client, scope } satisfies Opened
  })

/**
 * A read-only connection to `filename` holding its read lock, or `undefined` when none can be had. The
 * lock comes with any read of the file (in WAL mode SQLite keeps it until the connection closes); reading
 * the header's schema cookie takes it without parsing the schema, as a query of `sqlite_master` would.
 */
const holdingReader = (filename: string): BetterSqlite3.Database | undefined => {
  let reader: BetterSqlite3.Database | undefined
  try {
    reader = new BetterSqlite3(filename, { readonly: true, fileMustExist: true })
    reader.pragma("schema_version", { simple: true })
    return reader
  } catch {
    reader?.close()
    return undefined
  }
}

/**
 * `Copy.withClosed` made of a copy's `close` and `open`: closes, runs the effect, reopens whatever happens.
 *
 * @internal
 */
export const withClosedBy = (close: Copy["close"], open: Copy["open"]): Copy["withClosed"] => (effect) =>
  Effect.zipRight(close, effect).pipe(
    Effect.exit,
    Effect.flatMap((exit) => Effect.zipRight(open, exit))
  )

/**
 * A copy of kind `kind` on `filename`, closed until `open` is called.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (kind: "draft" | "synced", filename: string): Effect.Effect<Copy, never, Scope.Scope> =>
  Effect.gen(function*() {
    const state = yield* SynchronizedRef.make(Option.none<Opened>())

    const open: Copy["open"] = SynchronizedRef.modifyEffect(state, (current) => {
      if (Option.isSome(current)) return Effect.succeed([current.value.client, current] as const)
      return Effect.gen(function*() {
        const opened = yield* openClient(filename)
        yield* opened.client.unsafe("PRAGMA wal_autocheckpoint=0").pipe(
          Effect.catchAll((cause) =>
            Effect.zipRight(
              Scope.close(opened.scope, Exit.void),
              Effect.fail(new StorageError({ reason: "Files", message: `cannot configure ${filename}`, path: filename, cause }))
            )
          )
        )
        return [opened.client, Option.some(opened)] as const
      })
    })

    const closeOpened = (opened: Opened): Effect.Effect<void> => {
      // The last connection to close would checkpoint the WAL into the file and delete it; a read-only
      // connection cannot, so it closes last (a plain handle: it only has to hold its read lock, which a
      // read takes). Both copies keep their WAL: the engine folds it into the file itself, as a recorded
      // step (Synced's frame numbering, Draft's changed pages depend on it).
      return Effect.gen(function*() {
        const reader = holdingReader(filename)
        yield* Scope.close(opened.scope, Exit.void)
        if (reader !== undefined) reader.close()
        else yield* Effect.logWarning(`closing ${filename} without a reader: its WAL may be checkpointed`)
      })
    }

    const close: Copy["close"] = SynchronizedRef.updateEffect(state, (current) =>
      Option.isSome(current) ? Effect.as(closeOpened(current.value), Option.none()) : Effect.succeed(current)
    )

    yield* Effect.addFinalizer(() => close)

    return {
      kind,
      filename,
      client: Effect.flatMap(SynchronizedRef.get(state), (current) =>
        Option.isSome(current)
          ? Effect.succeed(current.value.client)
          : Effect.dieMessage(`LocalCopies: ${kind} copy ${filename} used while closed`)
      ),
      isOpen: Effect.map(SynchronizedRef.get(state), Option.isSome),
      open,
      close,
      withClosed: withClosedBy(close, open)
    } satisfies Copy
  })

/**
 * File names of the copies for a database at `path`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const files = (path: string) => ({
  draft: `${path}-draft`,
  synced: `${path}-synced`,
  info: `${path}-info`,
  draftNew: `${path}-draft.new`,
  syncedNext: `${path}-synced.next`,
  /** A copy step's fresh WAL for Draft, renamed over `<path>-draft-wal`. */
  draftWalNext: `${path}-draft-wal.next`,
  /** A fold's rest of Synced's WAL, renamed over `<path>-synced-wal`. */
  syncedWalNext: `${path}-synced-wal.next`
})

/**
 * Both copies for the database at `path`, closed; the engine opens them after recovery. Closing the layer
 * closes them (Synced without checkpointing).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: { readonly path: string }): Layer.Layer<Draft | Synced> =>
  Layer.scopedContext(
    Effect.gen(function*() {
      const names = files(options.path)
      const draft = yield* make("draft", names.draft)
      const synced = yield* make("synced", names.synced)
      return Context.make(Draft, draft).pipe(Context.add(Synced, synced))
    })
  )
