/**
 * Which tables of the local copy changed, told to a `Reactivity` service keyed by table name (lower case),
 * so reactive queries run again only when a table they read changed.
 *
 * - A local write: the change log already names every table it touched (triggers fire for cascades and
 *   user triggers too), so after each write commits, still under its write permit, the log's rows after
 *   the last one seen give the tables. A schema change (a `ddl` row) changes what every query may read.
 * - A pull that replaced the local copy: every table may have changed (`ALL`); the reactive query compares
 *   its rows with the ones it last emitted and stays silent when they are equal (see reactive.ts).
 *
 * The log is read only while something watches (`watchers > 0`): an app without reactive queries pays
 * nothing per write.
 *
 * @internal
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as LocalCopies from "../../LocalCopies.js"
import * as Executor from "../sqlite/executor.js"
import * as Gates from "../engine/gates.js"

/** Runs `f` on the copy's connection, synchronously (its executor goes straight to the handle). */
const on = <A>(copy: LocalCopies.Copy, f: (exec: Executor.Executor) => A): Effect.Effect<A, SqlError> =>
  Effect.flatMap(copy.client, (client) => Effect.provideService(Executor.withExecutor(f), SqlClient.SqlClient, client))

/** Invalidated when the changed tables are unknown (schema changes, pulls): every registration includes it. */
export const ALL = "effect-sqlite-sync:all-tables"

/**
 * Invalidated by every change: registered by queries whose sources cannot be named (virtual tables, temp
 * tables, attached databases), which so run again after any change.
 */
export const ANY = "effect-sqlite-sync:any-change"

/** The key of a table: SQLite's names are case-insensitive. */
export const key = (table: string): string => table.toLowerCase()

export interface Tracker {
  readonly reactivity: Reactivity.Reactivity.Service
  /** Subscriptions (reactive queries) alive now; while 0 the log is not read after writes. */
  watchers: number
  /** The last change log id whose tables were told; undefined while nobody watches. */
  seen: number | undefined
  /** Per key, how many local writes changed it: a query tells a rerun for its own tables from one for a pull. */
  readonly versions: Map<string, number>
  /** Called after every local write commits (live sync pushes soon after). */
  readonly writeListeners: Set<() => void>
  /**
   * Called when a pull moved the synced position (its frames are in Synced, the copy to Draft may still be
   * under way): live sync asks the remote for what is after them meanwhile.
   */
  readonly positionListeners: Set<() => void>
}

export const make: Effect.Effect<Tracker> = Effect.map(Reactivity.make, (reactivity) => ({
  reactivity,
  watchers: 0,
  seen: undefined,
  versions: new Map(),
  writeListeners: new Set(),
  positionListeners: new Set()
}))

// the log's highest id: rows after it are new (a pruned log reads 0, which misses nothing)
const LAST_ID = "SELECT coalesce((SELECT max(id) FROM main._sync_changes), 0)"
const SINCE = "SELECT tbl, kind, max(id) FROM main._sync_changes WHERE id > ? GROUP BY tbl, kind"

/** The tables (keys) the log's rows after `seen` name, and the new last id; `ALL` for a schema change. */
export const changedSince = (exec: Executor.Executor, seen: number): { keys: ReadonlyArray<string>; last: number } => {
  const keys = new Set<string>()
  let last = seen
  for (const [tbl, kind, id] of exec.values(SINCE, [seen])) {
    last = Math.max(last, Number(id))
    if (kind === "ddl" || typeof tbl !== "string" || tbl === "") keys.add(ALL)
    else keys.add(key(tbl))
  }
  return { keys: [...keys], last }
}

const lastId = (exec: Executor.Executor): number => Number(exec.values(LAST_ID)[0]?.[0] ?? 0)

/** Tells the keys' subscribers; ANY always (queries of unknown sources run again after any change). */
const invalidate = (tracker: Tracker, keys: ReadonlyArray<string>, local: boolean) => {
  if (local) for (const k of keys) tracker.versions.set(k, (tracker.versions.get(k) ?? 0) + 1)
  tracker.reactivity.unsafeInvalidate([...keys, ANY])
}

/**
 * After a local write committed, under its write permit (Draft is the copy it wrote and is not being
 * replaced). Never fails the write: a log that cannot be read tells `ALL`.
 */
export const afterWrite = (tracker: Tracker, draft: LocalCopies.Copy): Effect.Effect<void> =>
  Effect.suspend(() => {
    for (const listener of tracker.writeListeners) listener()
    if (tracker.watchers === 0) {
      tracker.seen = undefined
      return Effect.void
    }
    return on(draft, (exec) => {
        const seen = tracker.seen
        if (seen === undefined) {
          // A registration that could not read the log first (Reactivity.unsafeRegister): say everything.
          tracker.seen = lastId(exec)
          return [ALL]
        }
        const { keys, last } = changedSince(exec, seen)
        tracker.seen = last
        // A write that changed no captured row (a temp table, nothing matched) may still concern a query of
        // unknown sources: ANY is told all the same.
        return keys
      }).pipe(
      Effect.catchAll(() => Effect.sync(() => (tracker.seen = undefined)).pipe(Effect.as([ALL]))),
      Effect.map((keys) => invalidate(tracker, keys, true))
    )
  })

/**
 * Reads moved to Synced holding what Draft is about to become (a pull's copy with writes held, before the
 * copy is written): queries look again at once, on Synced, instead of after Draft was replaced.
 */
export const beforeCopy = (tracker: Tracker): Effect.Effect<void> =>
  Effect.sync(() => {
    if (tracker.watchers > 0) invalidate(tracker, [ALL], false)
  })

/**
 * After a pull replaced Draft (the caller still holds every write permit): the log's position moves to
 * Draft's new one, and every query is asked to look again, unless `shown`: the copy succeeded after
 * `beforeCopy` showed its rows (read from Synced with the replay, writes held since), so Draft now holds
 * exactly what the queries read then.
 */
export const afterCopy = (tracker: Tracker, draft: LocalCopies.Copy, shown = false): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (tracker.watchers === 0) {
      tracker.seen = undefined
      return Effect.void
    }
    return on(draft, lastId).pipe(
      Effect.match({
        onFailure: () => (tracker.seen = undefined),
        onSuccess: (last) => (tracker.seen = last)
      }),
      Effect.zipRight(Effect.sync(() => {
        if (!shown) invalidate(tracker, [ALL], false)
      }))
    )
  })

/**
 * One more watcher for the scope's life. The log's position is read under a write permit (no write is
 * between its commit and its `afterWrite` then), before the watcher runs its first query.
 */
export const watch = (tracker: Tracker, gates: Gates.Gates, draft: LocalCopies.Copy): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      tracker.watchers++
    }),
    () => Effect.sync(() => void tracker.watchers--)
  ).pipe(
    Effect.zipRight(
      Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (transaction) =>
        // Inside layerSqlClient's withTransaction a write permit is held already, and a pull waiting for all
        // of them would wait for this one: the first write after it tells ALL instead.
        tracker.seen !== undefined || transaction._tag === "Some"
          ? Effect.void
          : Gates.writing(
            gates,
            on(draft, lastId).pipe(
              Effect.match({
                onFailure: () => undefined,
                onSuccess: (last) => {
                  if (tracker.seen === undefined) tracker.seen = last
                }
              })
            )
          )
      )
    )
  )

/** The local versions of `keys` now (see `Tracker.versions`). */
export const versionsOf = (tracker: Tracker, keys: ReadonlyArray<string>): ReadonlyArray<number> =>
  keys.map((k) => tracker.versions.get(k) ?? 0)
