/**
 * Reactive queries: a query's rows as a Stream that emits at once and again after every change to a table
 * the query reads. The tables come from SQLite's own plan of the statement (`EXPLAIN`: every b-tree it opens
 * for reading, tables and indexes, through views, joins, subqueries and CTEs, mapped to their table by root
 * page); the changes come from `changes.ts` through a `Reactivity` service.
 *
 * @internal
 */
import type * as Reactivity from "@effect/experimental/Reactivity"
import type { ReadonlyRecord } from "effect/Record"
import * as Effect from "effect/Effect"
import * as Mailbox from "effect/Mailbox"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as SyncError from "../../SyncError.js"
import type * as Executor from "../sqlite/executor.js"
import * as Changes from "./changes.js"

type Keys = ReadonlyArray<unknown> | ReadonlyRecord<string, ReadonlyArray<unknown>>

const OPENS_BTREE = new Set(["OpenRead", "OpenWrite", "ReopenIdx"])

/**
 * The keys of the tables `sql` reads, by its plan: `OpenRead` (and kin) name a b-tree by root page (p2) in a
 * database (p3: 0 main, 1 temp); an index counts as its table. A virtual table (`VOpen`), a temp or
 * attached database's table, or a root page not in the schema adds `ANY`: such a query runs again after
 * every change.
 */
export const tablesRead = (exec: Executor.Executor, sql: string, params: ReadonlyArray<unknown>): ReadonlyArray<string> => {
  const plan = exec.values(`EXPLAIN ${sql}`, params)
  const roots = new Map<number, string>()
  for (const [rootpage, table] of exec.values("SELECT rootpage, tbl_name FROM main.sqlite_schema WHERE rootpage > 0")) {
    roots.set(Number(rootpage), String(table))
  }
  const keys = new Set<string>()
  for (const [, opcode, , p2, p3] of plan) {
    if (opcode === "VOpen") keys.add(Changes.ANY)
    if (!OPENS_BTREE.has(String(opcode))) continue
    const table = Number(p3) === 0 ? (Number(p2) === 1 ? "sqlite_schema" : roots.get(Number(p2))) : undefined
    keys.add(table === undefined ? Changes.ANY : Changes.key(table))
  }
  return [...keys].sort()
}

const sameKeys = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) =>
  a.length === b.length && a.every((k, i) => k === b[i])

const sameValue = (a: unknown, b: unknown): boolean => {
  if (a === b) return true
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    return a.byteLength === b.byteLength && a.every((x, i) => x === b[i])
  }
  if (typeof a === "number" && typeof b === "number") return Number.isNaN(a) && Number.isNaN(b)
  return false
}

/** Whether two results hold the same rows, columns and values in the same order. */
export const sameRows = (a: ReadonlyArray<object>, b: ReadonlyArray<object>): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as Record<string, unknown>
    const y = b[i] as Record<string, unknown>
    const columns = Object.keys(x)
    if (columns.length !== Object.keys(y).length) return false
    for (const c of columns) if (!(c in y) || !sameValue(x[c], y[c])) return false
  }
  return true
}

/** What a reactive query needs of the database. */
export interface Source {
  readonly tracker: Changes.Tracker
  /** One more watcher for the scope's life (see Changes.watch). */
  readonly watch: Effect.Effect<void, never, Scope.Scope>
  readonly tablesRead: (sql: string, params: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<string>, SyncError.SqlStatementError>
  readonly query: <Row extends object>(
    sql: string,
    params: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<Row>, SyncError.SqlStatementError>
}

/**
 * The rows of `sql`, now and after every change to a table it reads. Changes arriving while it runs make
 * one more run (a burst is one run, the last state is never skipped); a consumer slower than the changes
 * gets the newest rows. A rerun that only pulls asked for (they may change any table) and that finds the
 * rows it emitted last emits nothing.
 */
export const reactive = <Row extends object>(
  source: Source,
  sql: string,
  params: ReadonlyArray<unknown>
): Stream.Stream<ReadonlyArray<Row>, SyncError.SqlStatementError> =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const bound = [...params]
    yield* source.watch
    const rows = yield* Mailbox.make<ReadonlyArray<Row>, SyncError.SqlStatementError>({ capacity: 1, strategy: "sliding" })
    const wake = yield* Queue.sliding<void>(1)
    let keys: ReadonlyArray<string> = []
    let cancel = () => {}
    yield* Effect.addFinalizer(() => Effect.sync(() => cancel()))
    const register = (next: ReadonlyArray<string>) => {
      // The new registration first: a change between the two is not missed.
      const previous = cancel
      cancel = source.tracker.reactivity.unsafeRegister([...next, Changes.ALL], () => wake.unsafeOffer(undefined))
      previous()
      keys = next
    }
    const loop = Effect.gen(function*() {
      let last: ReadonlyArray<Row> | undefined
      let stamp: ReadonlyArray<number> = []
      for (;;) {
        // Read again each run: a schema change may change what a view reads.
        const tables = yield* source.tablesRead(sql, bound)
        const moved = last === undefined || !sameKeys(tables, keys)
        if (moved) register(tables)
        const now = Changes.versionsOf(source.tracker, keys)
        const result = yield* source.query<Row>(sql, bound)
        if (moved || !sameVersions(now, stamp) || !sameRows(result, last!)) {
          yield* rows.offer(result)
          last = result
        }
        stamp = now
        yield* Queue.take(wake)
      }
    })
    yield* loop.pipe(Effect.catchAll((error) => rows.fail(error)), Effect.forkScoped)
    return Mailbox.toStream(rows)
  }))

const sameVersions = (a: ReadonlyArray<number>, b: ReadonlyArray<number>) =>
  a.length === b.length && a.every((v, i) => v === b[i])

/** Keys as given plus their lower-case forms (tables are told in lower case), and `ALL`. */
const normalize = (keys: Keys): Keys => {
  if (Array.isArray(keys)) {
    const out = new Set<unknown>([Changes.ALL])
    for (const k of keys) {
      out.add(k)
      if (typeof k === "string") out.add(Changes.key(k))
    }
    return [...out]
  }
  const record: Record<string, ReadonlyArray<unknown>> = { [Changes.ALL]: [] }
  for (const [k, ids] of Object.entries(keys as ReadonlyRecord<string, ReadonlyArray<unknown>>)) {
    record[k] = ids
    // A lower-case twin with no ids: registered on the bare table key, which every write to it tells.
    if (Changes.key(k) !== k) record[Changes.key(k)] = []
  }
  return record
}

/**
 * The database's `Reactivity` as apps and @effect/sql see it: `query`, `stream` and `unsafeRegister` count
 * as watchers (so writes are told while they live), and every registration also hears `ALL` (a schema
 * change or a pull). Keys are table names, in any case.
 */
export const service = (
  tracker: Changes.Tracker,
  watch: Effect.Effect<void, never, Scope.Scope>
): Reactivity.Reactivity.Service => {
  const base = tracker.reactivity
  const query: Reactivity.Reactivity.Service["query"] = (keys, effect) =>
    Effect.zipRight(watch, base.query(normalize(keys), effect))
  return {
    ...base,
    query,
    stream: (keys, effect) => Stream.unwrapScoped(Effect.map(query(keys, effect), Mailbox.toStream)),
    unsafeRegister: (keys, handler) => {
      tracker.watchers++
      const cancel = base.unsafeRegister(normalize(keys), handler)
      let done = false
      return () => {
        if (done) return
        done = true
        tracker.watchers--
        cancel()
      }
    }
  }
}
