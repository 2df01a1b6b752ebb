/**
 * Reference model of the fuzzer (test/Fuzz.test.ts): what SyncDatabase replicas and the server must hold
 * under row-level last push wins (the `lastPushWinsRow` policy the runner opens them with).
 *
 * - A replica's local state changes only by its own statements and by pulls. Its statements are turned into
 *   the row changes capture records (insert / update with full before and after images / delete / DDL).
 * - A push accepted by the server replays the replica's pending changes, in order, onto the server state
 *   at the moment of acceptance (`replay`): insert → upsert of the after image's columns, update → the
 *   columns whose literal changed (or an upsert of the after image if the row is gone), delete → delete
 *   by key, DDL → run unless already applied. An update that meets a row changed since its before image
 *   (RowChanged) writes its whole after image instead (ConflictPolicy's lastPushWinsRow `Replace`). Columns
 *   the target does not have are ignored; columns the change does not name keep their value (or get
 *   their default on a fresh row).
 * - A pull makes the local state = the server state at the frame pulled, with the still-pending local
 *   changes replayed on top (same rules).
 * The acceptance order of concurrent pushes is not predicted: the runner reads it from the server's
 * commits (which `_sync_progress` row each commit advanced), then the model replays in that order.
 */
import * as fc from "fast-check"

export type Lit = string
export type Row = Record<string, Lit>

type ColumnType = "int" | "text" | "real" | "blob"

interface TableDef {
  readonly create: string
  readonly key: ReadonlyArray<string>
  readonly columns: ReadonlyArray<readonly [string, ColumnType]>
  readonly extra: ReadonlyArray<{ readonly name: string; readonly type: ColumnType; readonly decl: string; readonly dflt: Lit }>
  /** Literal pools for the key columns. */
  readonly keys: ReadonlyArray<ReadonlyArray<Lit>>
}

/** t0 exists from the start (created by replica 0); t1 and t2 are created by random DDL. */
export const TABLES: Record<string, TableDef> = {
  t0: {
    create: "CREATE TABLE t0 (k INTEGER PRIMARY KEY, v INTEGER, s TEXT)",
    key: ["k"],
    columns: [["k", "int"], ["v", "int"], ["s", "text"]],
    extra: [
      { name: "x", type: "int", decl: "INTEGER", dflt: "NULL" },
      { name: "y", type: "text", decl: "TEXT DEFAULT 'dflt'", dflt: "'dflt'" }
    ],
    keys: [["0", "1", "2", "9223372036854775807"]]
  },
  t1: {
    create: "CREATE TABLE t1 (a TEXT NOT NULL, b INTEGER NOT NULL, r REAL, PRIMARY KEY (a, b)) WITHOUT ROWID",
    key: ["a", "b"],
    columns: [["a", "text"], ["b", "int"], ["r", "real"]],
    extra: [{ name: "x", type: "int", decl: "INTEGER DEFAULT 7", dflt: "7" }],
    keys: [["'a'", "'b'"], ["1", "-9223372036854775807"]]
  },
  t2: {
    create: "CREATE TABLE t2 (id TEXT PRIMARY KEY, n INTEGER, d BLOB)",
    key: ["id"],
    columns: [["id", "text"], ["n", "int"], ["d", "blob"]],
    extra: [
      { name: "x", type: "int", decl: "INTEGER", dflt: "NULL" },
      { name: "y", type: "text", decl: "TEXT DEFAULT 'dflt'", dflt: "'dflt'" }
    ],
    keys: [["'p'", "'q'", "'it''s'"]]
  }
}
export const TABLE_NAMES = Object.keys(TABLES)

export const INDEXES: Record<string, { readonly table: string; readonly column: string }> = {
  i0: { table: "t0", column: "v" },
  i1: { table: "t0", column: "x" },
  i2: { table: "t1", column: "r" },
  i3: { table: "t2", column: "y" }
}

/**
 * Literal pools per column type, in the canonical form the runner reads back (see {@link exact}): besides
 * ordinary values, the 64-bit integer limits, infinities and subnormals (a REAL column keeps them; it turns
 * -0.0 into 0.0, so -0.0 goes to the BLOB column, which keeps any value as it is), TEXT holding a NUL and
 * TEXT that is not valid UTF-8, and BLOBs across several overflow pages.
 */
const VALUES: Record<ColumnType, ReadonlyArray<Lit>> = {
  int: ["NULL", "0", "1", "42", "-5", "9007199254740993", "9223372036854775807", "-9223372036854775807", "-9223372036854775808"],
  text: ["NULL", "''", "'x'", "'y'", "'it''s'", `'${"long".repeat(600)}'`, "'ünï'", "CAST(X'610062' AS TEXT)", "CAST(X'FF61C3' AS TEXT)"],
  real: ["NULL", "0.5", "-2.25", "3.75", "1.0", "9.0e+999", "-9.0e+999", "4.9406564584124654e-324", "2.2250738585072009e-308"],
  blob: ["NULL", "X''", "X'00FF'", `X'${"AB".repeat(3000)}'`, "-0.0", "-9.0e+999", `X'${"CD".repeat(40000)}'`]
}

const utf8Hex = (text: string) => Buffer.from(text, "utf8").toString("hex").toUpperCase()

/**
 * A literal as the runner reads values back (test/support/fuzz.ts `snapshot`): TEXT by its bytes
 * (`CAST(X'..' AS TEXT)`, so a NUL or invalid UTF-8 is compared exactly), anything else as `quote()` writes
 * it, -0.0 as `-0.0`.
 */
export const exact = (lit: Lit): string =>
  lit.startsWith("'") ? `CAST(X'${utf8Hex(lit.slice(1, -1).replaceAll("''", "'"))}' AS TEXT)` : lit

// ---------------------------------------------------------------------------------------------------------
// Operations (abstract; resolved against a replica's model state when they run)
// ---------------------------------------------------------------------------------------------------------

export interface Write {
  readonly _tag: "upsert" | "update" | "delete"
  readonly table: number
  /** Seeds of the key literals; `all` = every row (update/delete only). */
  readonly key: ReadonlyArray<number> | "all"
  readonly set: ReadonlyArray<readonly [number, number]>
  readonly plain: boolean
}

export type Ddl =
  | { readonly _tag: "createTable"; readonly table: string }
  | { readonly _tag: "addColumn"; readonly table: string; readonly column: string }
  | { readonly _tag: "createIndex"; readonly index: string }

export type SyncKind = "push" | "pull" | "sync"

export type Op =
  | { readonly _tag: "write"; readonly client: number; readonly writes: ReadonlyArray<Write> }
  | { readonly _tag: "ddl"; readonly client: number; readonly ddl: Ddl }
  | { readonly _tag: "sync"; readonly client: number; readonly kind: SyncKind }
  /** Several replicas push/pull/sync at the same time. */
  | { readonly _tag: "group"; readonly members: ReadonlyArray<readonly [number, SyncKind]> }
  /** The libSQL reader pulls (ignored when there is none). */
  | { readonly _tag: "reader" }

const write: fc.Arbitrary<Write> = fc.record({
  _tag: fc.constantFrom("upsert" as const, "upsert" as const, "update" as const, "delete" as const),
  table: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.nat(TABLE_NAMES.length - 1) }),
  key: fc.oneof({ weight: 5, arbitrary: fc.array(fc.nat(99), { minLength: 2, maxLength: 2 }) }, { weight: 1, arbitrary: fc.constant("all" as const) }),
  set: fc.array(fc.tuple(fc.nat(99), fc.nat(99)), { minLength: 1, maxLength: 3 }),
  plain: fc.boolean()
})

export const ops = (clients: number, options: { readonly reader: boolean }): fc.Arbitrary<ReadonlyArray<Op>> => {
  const client = fc.nat(clients - 1)
  const kind = fc.constantFrom<SyncKind>("push", "pull", "sync")
  const ddl: fc.Arbitrary<Ddl> = fc.oneof(
    fc.record({ _tag: fc.constant("createTable" as const), table: fc.constantFrom("t1", "t2") }),
    fc.constantFrom(...TABLE_NAMES.flatMap((table) => TABLES[table]!.extra.map((c) => ({ _tag: "addColumn" as const, table, column: c.name })))),
    fc.record({ _tag: fc.constant("createIndex" as const), index: fc.constantFrom(...Object.keys(INDEXES)) })
  )
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 10, arbitrary: fc.record({ _tag: fc.constant("write" as const), client, writes: fc.array(write, { minLength: 1, maxLength: 3 }) }) },
    { weight: 3, arbitrary: fc.record({ _tag: fc.constant("ddl" as const), client, ddl }) },
    { weight: 4, arbitrary: fc.record({ _tag: fc.constant("sync" as const), client, kind }) },
    {
      weight: 2,
      arbitrary: fc.uniqueArray(fc.tuple(client, kind), { minLength: 2, maxLength: clients, selector: ([c]) => c })
        .map((members) => ({ _tag: "group" as const, members }))
    },
    ...(options.reader ? [{ weight: 1, arbitrary: fc.constant({ _tag: "reader" as const }) }] : [])
  )
  return fc.array(op, { minLength: 10, maxLength: 40 })
}

// ---------------------------------------------------------------------------------------------------------
// States and changes
// ---------------------------------------------------------------------------------------------------------

export interface TableState {
  readonly name: string
  columns: Array<string>
  rows: Map<string, Row>
}

export interface State {
  readonly tables: Map<string, TableState>
  readonly indexes: Set<string>
}

export type Change =
  | { readonly kind: "ddl"; readonly ddl: Ddl }
  | { readonly kind: "insert"; readonly table: string; readonly after: Row }
  | { readonly kind: "update"; readonly table: string; readonly before: Row; readonly after: Row }
  | { readonly kind: "delete"; readonly table: string; readonly before: Row }

export const empty = (): State => ({ tables: new Map(), indexes: new Set() })

export const clone = (state: State): State => ({
  tables: new Map(
    [...state.tables].map(([name, t]) => [name, { name, columns: [...t.columns], rows: new Map([...t.rows].map(([k, r]) => [k, { ...r }])) }])
  ),
  indexes: new Set(state.indexes)
})

const keyString = (table: string, row: Row) => TABLES[table]!.key.map((c) => row[c]).join("|")

const dflt = (table: string, column: string): Lit => TABLES[table]!.extra.find((c) => c.name === column)?.dflt ?? "NULL"

const typeOf = (table: string, column: string): ColumnType => {
  const def = TABLES[table]!
  return def.columns.find(([c]) => c === column)?.[1] ?? def.extra.find((c) => c.name === column)!.type
}

export const ddlSql = (ddl: Ddl): string => {
  switch (ddl._tag) {
    case "createTable":
      return TABLES[ddl.table]!.create
    case "addColumn": {
      const c = TABLES[ddl.table]!.extra.find((e) => e.name === ddl.column)!
      return `ALTER TABLE ${ddl.table} ADD COLUMN ${c.name} ${c.decl}`
    }
    case "createIndex": {
      const i = INDEXES[ddl.index]!
      return `CREATE INDEX ${ddl.index} ON ${i.table} (${i.column})`
    }
  }
}

/** Whether a replica holding `state` can run `ddl` (otherwise the op is skipped, not sent). */
export const ddlApplicable = (state: State, ddl: Ddl): boolean => {
  switch (ddl._tag) {
    case "createTable":
      return !state.tables.has(ddl.table)
    case "addColumn": {
      const t = state.tables.get(ddl.table)
      return t !== undefined && !t.columns.includes(ddl.column)
    }
    case "createIndex": {
      const i = INDEXES[ddl.index]!
      return !state.indexes.has(ddl.index) && (state.tables.get(i.table)?.columns.includes(i.column) ?? false)
    }
  }
}

/** Runs DDL on a state (idempotently, as replay does). */
const runDdl = (state: State, ddl: Ddl): void => {
  switch (ddl._tag) {
    case "createTable":
      if (!state.tables.has(ddl.table)) {
        state.tables.set(ddl.table, { name: ddl.table, columns: TABLES[ddl.table]!.columns.map(([c]) => c), rows: new Map() })
      }
      return
    case "addColumn": {
      const t = state.tables.get(ddl.table)
      if (t === undefined || t.columns.includes(ddl.column)) return
      t.columns.push(ddl.column)
      for (const row of t.rows.values()) row[ddl.column] = dflt(ddl.table, ddl.column)
      return
    }
    case "createIndex":
      state.indexes.add(ddl.index)
  }
}

/** Replays one captured change onto `state` under last push wins (see the module comment). */
export const replay = (state: State, change: Change): void => {
  if (change.kind === "ddl") return runDdl(state, change.ddl)
  const t = state.tables.get(change.table)
  if (t === undefined) throw new Error(`model: replay onto missing table ${change.table}`)
  const image = change.kind === "delete" ? change.before : change.kind === "insert" ? change.after : change.before
  const key = keyString(change.table, image)
  const current = t.rows.get(key)
  const upsertFresh = (after: Row) => {
    const row: Row = Object.fromEntries(t.columns.map((c) => [c, dflt(change.table, c)]))
    for (const c of t.columns) if (Object.hasOwn(after, c)) row[c] = after[c]!
    t.rows.set(keyString(change.table, after), row)
  }
  switch (change.kind) {
    case "insert":
      if (current === undefined) return upsertFresh(change.after)
      for (const c of t.columns) if (Object.hasOwn(change.after, c)) current[c] = change.after[c]!
      return
    case "update": {
      if (current === undefined) return upsertFresh(change.after)
      // RowChanged (the row differs from the local before image on a column both have): the whole local row wins
      const changed = Object.keys(change.before).some((c) => Object.hasOwn(current, c) && change.before[c] !== current[c])
      for (const c of t.columns) {
        if (Object.hasOwn(change.after, c) && (changed || change.before[c] !== change.after[c])) current[c] = change.after[c]!
      }
      return
    }
    case "delete":
      t.rows.delete(key)
  }
}

/**
 * Resolves one abstract write against the replica's state: the SQL text to execute and the changes
 * capture must record, applied to `state`. `undefined` when the write cannot run there (no such table).
 */
export const resolveWrite = (state: State, w: Write): { readonly sql: string; readonly changes: Array<Change> } | undefined => {
  const name = TABLE_NAMES[w.table]!
  const def = TABLES[name]!
  const t = state.tables.get(name)
  if (t === undefined) return undefined
  const nonKey = t.columns.filter((c) => !def.key.includes(c))
  const set = new Map<string, Lit>()
  for (const [c, v] of w.set) {
    const column = nonKey[c % nonKey.length]!
    const pool = VALUES[typeOf(name, column)]
    set.set(column, pool[v % pool.length]!)
  }
  const keyLits = w.key === "all" ? undefined : def.key.map((_, i) => def.keys[i]![(w.key as ReadonlyArray<number>)[i]! % def.keys[i]!.length]!)
  const keyRow: Row = keyLits === undefined ? {} : Object.fromEntries(def.key.map((c, i) => [c, keyLits[i]!]))
  const where = keyLits === undefined ? "1" : def.key.map((c, i) => `${c} = ${keyLits[i]}`).join(" AND ")
  const changes: Array<Change> = []
  switch (w._tag) {
    case "upsert": {
      if (keyLits === undefined) return undefined
      const key = keyString(name, keyRow)
      const current = t.rows.get(key)
      const columns = [...def.key, ...set.keys()]
      const values = [...keyLits, ...set.values()]
      const insert = `INSERT INTO ${name} (${columns.join(", ")}) VALUES (${values.join(", ")})`
      if (current === undefined) {
        const after: Row = Object.fromEntries(t.columns.map((c) => [c, dflt(name, c)]))
        Object.assign(after, keyRow, Object.fromEntries(set))
        t.rows.set(key, after)
        changes.push({ kind: "insert", table: name, after: { ...after } })
        return { sql: w.plain ? insert : `${insert} ON CONFLICT DO NOTHING`, changes }
      }
      if (set.size === 0) return { sql: `${insert} ON CONFLICT DO NOTHING`, changes }
      const before = { ...current }
      for (const [c, v] of set) current[c] = v
      changes.push({ kind: "update", table: name, before, after: { ...current } })
      const updates = [...set.keys()].map((c) => `${c} = excluded.${c}`).join(", ")
      return { sql: `${insert} ON CONFLICT (${def.key.join(", ")}) DO UPDATE SET ${updates}`, changes }
    }
    case "update": {
      if (set.size === 0) return undefined
      for (const row of t.rows.values()) {
        if (keyLits !== undefined && def.key.some((c) => row[c] !== keyRow[c])) continue
        const before = { ...row }
        for (const [c, v] of set) row[c] = v
        changes.push({ kind: "update", table: name, before, after: { ...row } })
      }
      return { sql: `UPDATE ${name} SET ${[...set].map(([c, v]) => `${c} = ${v}`).join(", ")} WHERE ${where}`, changes }
    }
    case "delete": {
      for (const [k, row] of [...t.rows]) {
        if (keyLits !== undefined && def.key.some((c) => row[c] !== keyRow[c])) continue
        t.rows.delete(k)
        changes.push({ kind: "delete", table: name, before: row })
      }
      return { sql: `DELETE FROM ${name} WHERE ${where}`, changes }
    }
  }
}

/** A state as sorted lines, the form the runner also reads from SQLite (quote() of every column). */
export const dump = (state: State): Record<string, Array<string>> =>
  Object.fromEntries(
    [...state.tables.values()].sort((a, b) => a.name.localeCompare(b.name)).map((t) => [
      `${t.name}(${t.columns.join(",")})`,
      [...t.rows.values()].map((row) => t.columns.map((c) => exact(row[c]!)).join(" | ")).sort()
    ])
  )
