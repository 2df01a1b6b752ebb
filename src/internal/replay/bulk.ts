/**
 * Replay of a run of changes as one statement, when the change log is readable on the target's own
 * connection (Draft's file attached to Synced's connection during a push).
 *
 * A run is a stretch of consecutive changes of one local transaction, one table, one kind and one column
 * list. Carried out change by change, each value crosses into JavaScript twice (read from the log, bound
 * to a statement); here SQLite copies them from the log to the table itself. The run is written this way
 * only when that gives what replaying it change by change gives, which is when no change of it meets a
 * conflict:
 *
 * - inserts: every key is non-NULL and free (`ON CONFLICT DO NOTHING` wrote every row);
 * - updates and deletes: every change finds the row at its key holding exactly its before image (same
 *   storage class and bytes; a REAL zero is not trusted, since `=` does not tell -0.0 from 0.0), no two
 *   changes of the run touch the same key, and no update moves its key; an update then writes its after
 *   image, which differs from the row only in the columns the change changed.
 *
 * Anything else (a conflict, a constraint failure, a column list that is not the table's) rolls the run
 * back to its savepoint and replay takes it change by change, where the conflict rules and the policy
 * apply. The statement texts are pure; running them takes an executor.
 *
 * @internal
 */
import type { Executor } from "../sqlite/executor.js"
import { ident } from "../sqlite/sqlText.js"
import type * as TableInfo from "../sqlite/tableInfo.js"
import { MAX_PAIRED, valueColumn } from "../capture/changeLog.js"

/** Runs shorter than this are replayed change by change (a bulk attempt costs a few statements). */
export const MIN_RUN = 32

/**
 * The most changes one bulk statement writes: a longer run goes as several pieces, with the event loop
 * free between them (one statement of a 200 000-row transaction would hold it for the whole copy). A
 * piece of a run is a run: the same transaction, table, kind and column list, in id order.
 */
export const MAX_RUN = 2048

/** Run starts read per statement. */
export const RUNS_PER_READ = 1024

/** The start of a run: the first change of a stretch with one transaction, table, kind and column list. */
export interface RunStart {
  readonly id: number
  readonly txId: number
  readonly table: string
  readonly kind: string
  readonly cols: string | null
}

/**
 * A run: changes `first..last` (ids; some ids in between may not exist), a piece of the whole run
 * `runId..runLast` (the same when the run is short).
 */
export interface Run extends RunStart {
  readonly last: number
  readonly runId: number
  readonly runLast: number
  /** The number of changes `first..last`, when finding the run's end counted them (else counted when tried). */
  readonly count?: number | undefined
}

/**
 * Pure: the statement listing run starts after change `$after` (at most `$limit` of them) in the log
 * `schema`, in id order: the changes whose transaction, table, kind or column list differs from the
 * change before. (A gap in the ids also starts a run: a run split in two is only slower.)
 */
export const runStartsText = (schema: string) => {
  const log = `${ident(schema)}._sync_changes`
  return `SELECT l.id, l.tx_id, l.tbl, l.kind, l.cols FROM ${log} AS l
    LEFT JOIN ${log} AS p ON p.id = l.id - 1 AND p.id > $after
    WHERE l.id > $after AND (p.id IS NULL OR p.tx_id IS NOT l.tx_id OR p.tbl IS NOT l.tbl OR p.kind IS NOT l.kind
      OR p.cols IS NOT l.cols)
    ORDER BY l.id LIMIT $limit`
}

/** Pure: the statement reading the change after `$after` with its run's header. */
export const headText = (schema: string) =>
  `SELECT id, tx_id, tbl, kind, cols FROM ${ident(schema)}._sync_changes WHERE id > $after ORDER BY id LIMIT 1`

/**
 * Pure: the statement finding where the run that starts at `$first` ends within its next {@link MAX_RUN}
 * ids: the first change there whose header differs (none: the run goes on, or the log ends). One pass over
 * those changes, which stops at the end of the run.
 */
export const runEndText = (schema: string) =>
  `SELECT id FROM ${ident(schema)}._sync_changes WHERE id > $from AND id <= $from + ${MAX_RUN}
    AND (tx_id IS NOT $tx OR tbl IS NOT $tbl OR kind IS NOT $kind OR cols IS NOT $cols) ORDER BY id LIMIT 1`

/**
 * Pure: the statement scanning piece `$from..$to` of the run whose first change has the header `$tx`,
 * `$tbl`, `$kind`, `$cols`, in one pass: the first change there whose header differs (NULL: none), and the
 * number and last id of the changes whose header is the run's. When the last of those comes before the
 * first that differs, they are exactly the run's changes in the piece: counted here, not again when the
 * piece is tried. (Used past a run's first piece: a run known to be long is scanned to the piece's end
 * anyway, where {@link runEndText} stops at a short run's end.)
 */
export const pieceText = (schema: string) =>
  `SELECT min(id) FILTER (WHERE d), count(*) FILTER (WHERE NOT d), max(id) FILTER (WHERE NOT d)
    FROM (SELECT id, (tx_id IS NOT $tx OR tbl IS NOT $tbl OR kind IS NOT $kind OR cols IS NOT $cols) AS d
      FROM ${ident(schema)}._sync_changes WHERE id BETWEEN $from AND $to)`

/**
 * The condition that a change of the log (`l`) has the header `$tx`, `$tbl`, `$kind`, `$cols` (a statement
 * given it reads only the changes of one run, whatever else its range of ids holds).
 */
const HEADER = `l.tx_id = $tx AND l.tbl = $tbl AND l.kind = $kind AND l.cols = $cols`

/** The parameters of {@link HEADER} for the run that `start` starts. */
const headerParams = (start: RunStart) => ({ tx: start.txId, tbl: start.table, kind: start.kind, cols: start.cols })

/**
 * Reads the runs after change `afterId` (up to {@link RUNS_PER_READ}), each with its last id. Inside the
 * replay's transaction the attached log is read from one snapshot, so the last run ends at the last
 * change this snapshot has.
 *
 * A long run (the changes of one large statement) is followed to its end a piece at a time, comparing
 * each change with the run's first (its pieces after the first counted on the way, see {@link pieceText});
 * where runs are short, their starts are listed by one statement comparing each change with the one
 * before ({@link runStartsText}).
 */
export const readRuns = (exec: Executor, schema: string, afterId: number): ReadonlyArray<Run> => {
  const runs: Array<Run> = []
  let after = afterId
  let max: number | undefined
  const maxId = () => (max ??= Number(exec.values(`SELECT max(id) FROM ${ident(schema)}._sync_changes`)[0]![0]))
  while (runs.length < RUNS_PER_READ) {
    const head = exec.values(headText(schema), [{ after }])[0]
    if (head === undefined) return runs
    const start = runStart(head)
    const header = { tx: start.txId, tbl: start.table, kind: start.kind, cols: start.cols }
    // the counts of the pieces after the first, by their first id
    const counts = new Map<number, number>()
    let last: number
    const end = exec.values(runEndText(schema), [{ from: start.id, ...header }])[0]
    if (end !== undefined) {
      last = Number(end[0]) - 1
    } else if (start.id + MAX_RUN >= maxId()) {
      last = maxId()
    } else {
      for (let from = start.id + MAX_RUN;; from += MAX_RUN) {
        const to = from + MAX_RUN - 1
        const [differs, same, lastSame] = exec.values(pieceText(schema), [{ from, to, ...header }])[0]!
        if (differs !== null) {
          last = Number(differs) - 1
          if (lastSame === null || Number(lastSame) < Number(differs)) counts.set(from, Number(same))
          break
        }
        counts.set(from, Number(same))
        if (to >= maxId()) {
          last = maxId()
          break
        }
      }
    }
    if (last - start.id + 1 < MIN_RUN) return runs.length > 0 ? runs : readRunStarts(exec, schema, after)
    const first = runs.length
    pieces(runs, start, last)
    for (let i = first; i < runs.length; i++) {
      const count = counts.get(runs[i]!.id)
      if (count !== undefined) runs[i] = { ...runs[i]!, count }
    }
    after = last
  }
  return runs
}

const runStart = (row: ReadonlyArray<unknown>): RunStart => ({
  id: Number(row[0]),
  txId: Number(row[1]),
  table: row[2] as string,
  kind: row[3] as string,
  cols: row[4] as string | null
})

/** The runs after change `afterId` from their starts, listed by {@link runStartsText}. */
const readRunStarts = (exec: Executor, schema: string, afterId: number): ReadonlyArray<Run> => {
  const rows = exec.values(runStartsText(schema), [{ after: afterId, limit: RUNS_PER_READ + 1 }])
  if (rows.length === 0) return []
  const starts = rows.map(runStart)
  const runs: Array<Run> = []
  for (let i = 0; i + 1 < starts.length; i++) pieces(runs, starts[i]!, starts[i + 1]!.id - 1)
  if (starts.length <= RUNS_PER_READ) {
    const max = Number(exec.values(`SELECT max(id) FROM ${ident(schema)}._sync_changes`)[0]![0])
    pieces(runs, starts[starts.length - 1]!, max)
  }
  return runs
}

/** Pure: the run `start..last` as pieces of at most {@link MAX_RUN} ids, appended to `runs`. */
export const pieces = (runs: Array<Run>, start: RunStart, last: number): void => {
  for (let id = start.id; id <= last; id += MAX_RUN) {
    runs.push({ ...start, id, last: Math.min(last, id + MAX_RUN - 1), runId: start.id, runLast: last })
  }
}

/** Pure: whether a run is long enough and of a kind to try in bulk (before its table is looked at). */
export const mayTry = (run: Run): boolean =>
  run.cols !== null && run.last - run.id + 1 >= MIN_RUN &&
  (run.kind === "insert" || run.kind === "update" || run.kind === "delete")

/**
 * Pure: whether a run of `table` may be tried in bulk, with the positions of the key columns in the log's
 * column list. Undefined: change by change.
 */
export const eligible = (run: Run, table: TableInfo.TableInfo | undefined): ReadonlyArray<number> | undefined => {
  if (table === undefined || !mayTry(run) || table.primaryKey.length === 0) return undefined
  const n = table.columns.length
  if (n === 0 || n > MAX_PAIRED) return undefined
  // the log's column list must be the table's as it is now (a column dropped or added since: change by change)
  if (run.cols !== JSON.stringify(table.columns)) return undefined
  const keys = table.primaryKey.map((column) => table.columns.indexOf(column))
  if (keys.some((position) => position < 0)) return undefined
  return keys
}

/** `a` and `b` hold the same value exactly (see the module comment: a REAL zero never counts as equal). */
const exactlyEqual = (a: string, b: string) =>
  // (in this order, the cheapest first: `b <> 0` holds for every value but a numeric zero, whose storage class
  // then decides; a NULL `b` makes it NULL, and `typeof(b) <> 'real'` true)
  `(${a} IS ${b} COLLATE BINARY AND typeof(${a}) = typeof(${b}) AND (${b} <> 0 OR typeof(${b}) <> 'real'))`

const v = (i: number) => `l.${valueColumn(i)}`

/**
 * Pure: the statements of a bulk run on `table` reading the log `schema` (`$first`, `$last`: the run's first
 * and last id): `count` answers the number of changes; `write` writes the changes that meet no conflict and
 * no NULL key, each at most once per row. The run went as change by change would have it exactly when
 * `write` wrote `count` rows: an insert meeting a taken key (ON CONFLICT DO NOTHING), an update or delete
 * meeting a row that is not its before image, a key moved, or two changes meeting one row (a row is
 * updated or deleted once by one statement) all write fewer. One pass over the run, no separate check.
 */
export const statements = (
  kind: "insert" | "update" | "delete",
  table: TableInfo.TableInfo,
  keys: ReadonlyArray<number>,
  schema: string,
  filtered = false
): { readonly count: string; readonly write: string } | undefined => {
  const log = `${ident(schema)}._sync_changes`
  const target = `main.${ident(table.name)}`
  const n = table.columns.length
  const range = filtered ? `l.id BETWEEN $first AND $last AND ${HEADER}` : `l.id BETWEEN $first AND $last`
  const count = `SELECT count(*) FROM ${log} AS l WHERE ${range}`
  const keyNotNull = keys.map((k) => `${v(k)} IS NOT NULL`).join(" AND ")
  if (kind === "insert") {
    const columns = table.columns.map(ident).join(", ")
    const values = table.columns.map((_, i) => v(i)).join(", ")
    return {
      count,
      // (ORDER BY: the rows are written in the order they were captured, as change by change)
      write: `INSERT INTO ${target} (${columns}) SELECT ${values} FROM ${log} AS l WHERE ${range} AND ${keyNotNull} ` +
        `ORDER BY l.id ON CONFLICT DO NOTHING`
    }
  }
  const join = table.primaryKey.map((column, j) => `t.${ident(column)} = ${v(keys[j]!)}`).join(" AND ")
  const matches = [keyNotNull, ...table.columns.map((column, i) => exactlyEqual(`t.${ident(column)}`, v(i)))]
  if (kind === "update") {
    // the key stays where it is: before and after key the same
    for (const k of keys) matches.push(exactlyEqual(v(k), v(n + k)))
  }
  if (kind === "delete") {
    // the rows' own keys, as the table holds them: a row met by two changes is in the list once
    const keyColumns = table.primaryKey.map(ident)
    const left = keyColumns.length === 1 ? keyColumns[0]! : `(${keyColumns.join(", ")})`
    const rowKeys = keyColumns.map((column) => `t.${column}`).join(", ")
    return {
      count,
      write: `DELETE FROM ${target} WHERE ${left} IN (SELECT ${rowKeys} FROM ${log} AS l JOIN ${target} AS t ON ${join} ` +
        `WHERE ${range} AND ${matches.join(" AND ")})`
    }
  }
  const keySet = new Set(keys)
  const assignments = table.columns.flatMap((column, i) => keySet.has(i) ? [] : [`${ident(column)} = ${v(n + i)}`])
  if (assignments.length === 0) return undefined
  return {
    count,
    write: `UPDATE ${target} AS t SET ${assignments.join(", ")} FROM (SELECT * FROM ${log} AS l WHERE ${range}) AS l ` +
      `WHERE ${join} AND ${matches.join(" AND ")}`
  }
}

/**
 * Pure: the check of a run of deletes that may remove every row (see {@link attemptClear}), in one pass:
 * how many of its changes meet the row at their key holding exactly their before image, and how many
 * distinct rows they meet (told apart by the rows' own keys, as the table holds them).
 */
export const clearCheck = (
  table: TableInfo.TableInfo,
  keys: ReadonlyArray<number>,
  schema: string,
  filtered = false
): string => {
  const log = `${ident(schema)}._sync_changes`
  const target = `main.${ident(table.name)}`
  const join = table.primaryKey.map((column, j) => `t.${ident(column)} = ${v(keys[j]!)}`).join(" AND ")
  const matches = table.columns.map((column, i) => exactlyEqual(`t.${ident(column)}`, v(i)))
  const rowKeys = table.primaryKey.map((column) => `t.${ident(column)}`).join(", ")
  return `SELECT coalesce(sum(c), 0), count(*) FROM (SELECT count(*) AS c FROM ${log} AS l JOIN ${target} AS t ON ${join}
    WHERE l.id BETWEEN $first AND $last${filtered ? ` AND ${HEADER}` : ""} AND ${matches.join(" AND ")} GROUP BY ${rowKeys})`
}

/**
 * Tries a run in bulk inside a savepoint: the number of changes written, or undefined when the run must
 * go change by change (nothing of it is left written): a conflict, or a failure of the write (a constraint
 * of the table), which change by change meets again. Failures of the other statements are thrown.
 */
export const attempt = (
  exec: Executor,
  run: Run,
  table: TableInfo.TableInfo,
  keys: ReadonlyArray<number>,
  schema: string
): number | undefined => {
  const texts = statements(run.kind as "insert" | "update" | "delete", table, keys, schema)
  if (texts === undefined) return undefined
  const count = run.count ?? Number(exec.values(texts.count, [{ first: run.id, last: run.last }])[0]![0])
  if (count === 0) return undefined
  return writeExactly(exec, texts.write, [{ first: run.id, last: run.last }], count)
}

/**
 * Runs `write` inside a savepoint: `count` when it wrote exactly `count` rows, else undefined with nothing
 * of it left written.
 */
const writeExactly = (exec: Executor, write: string, params: ReadonlyArray<unknown>, count: number): number | undefined => {
  exec.run(`SAVEPOINT _sync_bulk`)
  let written: number
  try {
    written = exec.run(write, params)
  } catch {
    // a constraint of the table (CHECK, NOT NULL, UNIQUE elsewhere): change by change meets it again
    written = -1
  }
  if (written !== count) {
    exec.run(`ROLLBACK TO _sync_bulk`)
    exec.run(`RELEASE _sync_bulk`)
    return undefined
  }
  exec.run(`RELEASE _sync_bulk`)
  return count
}

/**
 * Pure: the statements of a run of deletes that removes every row of `table`: the table's rows, the run's
 * changes, the {@link clearCheck}, and the write, one `DELETE` without a WHERE clause.
 * SQLite carries that out by freeing the table's pages whole (its truncate optimization, when no trigger
 * is on the table), where a delete by key rewrites every page it leaves: a push of the change sends the
 * few pages that record the free pages, not every page of the table.
 */
export const clearStatements = (
  table: TableInfo.TableInfo,
  keys: ReadonlyArray<number>,
  schema: string
): { readonly rows: string; readonly changes: string; readonly check: string; readonly write: string } => {
  const target = `main.${ident(table.name)}`
  return {
    // (counted up to `$limit` rows: a table larger than the run is not read whole)
    rows: `SELECT count(*) FROM (SELECT 1 FROM ${target} LIMIT $limit)`,
    changes: `SELECT count(*) FROM ${ident(schema)}._sync_changes WHERE id BETWEEN $first AND $last`,
    check: clearCheck(table, keys, schema),
    write: `DELETE FROM ${target}`
  }
}

/**
 * Tries the whole run of deletes that `run` starts as one table-wide delete (see {@link clearStatements}):
 * the number of changes written, or undefined when it is not that (the run's pieces then go as usual).
 *
 * Replaying the run change by change removes every row of the table, with no conflict, exactly when the
 * run has as many changes as the table has rows, and the check finds each of them meeting the row at its
 * key holding its before image, and as many distinct rows met: they are then all the table's rows, each
 * met once. A table-wide delete then leaves what the deletes by key leave
 * (an empty table; AUTOINCREMENT's counter untouched either way). User triggers are suspended by replay
 * and no foreign key can act when replay goes in bulk (see replay.ts), so nothing else is written either.
 */
export const attemptClear = (
  exec: Executor,
  run: Run,
  table: TableInfo.TableInfo,
  keys: ReadonlyArray<number>,
  schema: string
): number | undefined => {
  if (run.kind !== "delete" || run.id !== run.runId) return undefined
  const texts = clearStatements(table, keys, schema)
  const range = [{ first: run.runId, last: run.runLast }]
  const span = run.runLast - run.runId + 1
  const rows = Number(exec.values(texts.rows, [{ limit: span + 1 }])[0]![0])
  // (each id holds one change at most: a run of fewer ids than the table has rows cannot remove them all)
  if (rows < MIN_RUN || span < rows) return undefined
  // (a run of exactly as many ids has at most as many changes, and the check counts as many: no count needed)
  if (span !== rows && Number(exec.values(texts.changes, range)[0]![0]) !== rows) return undefined
  const [matched, distinct] = exec.values(texts.check, range)[0]!.map(Number) as [number, number]
  if (matched !== rows || distinct !== rows) return undefined
  return writeExactly(exec, texts.write, [], rows)
}

/** The ids of changes `first..last` in the log (for a local transaction a policy drops after a bulk run). */
export const idsOf = (exec: Executor, schema: string, first: number, last: number): ReadonlyArray<number> =>
  exec.values(`SELECT id FROM ${ident(schema)}._sync_changes WHERE id BETWEEN ? AND ? ORDER BY id`, [first, last])
    .map((row) => Number(row[0]))

/**
 * The start of the changes after `afterId` when they begin with a long run (its first {@link MAX_RUN} ids
 * all of its header, or all the log has), with the log's last id: a replay may then take the run a piece
 * at a time up to where a piece is not all of it ({@link attemptPiece}), without reading where it ends
 * first. Undefined: the changes begin otherwise (read their runs with {@link readRuns}).
 */
export const longStart = (
  exec: Executor,
  schema: string,
  afterId: number
): { readonly start: RunStart; readonly maxId: number } | undefined => {
  const head = exec.values(headText(schema), [{ after: afterId }])[0]
  if (head === undefined) return undefined
  const start = runStart(head)
  if (start.cols === null) return undefined
  if (exec.values(runEndText(schema), [{ from: start.id, ...headerParams(start) }])[0] !== undefined) return undefined
  const maxId = Number(exec.values(`SELECT max(id) FROM ${ident(schema)}._sync_changes`)[0]![0])
  return maxId - start.id + 1 < MIN_RUN ? undefined : { start, maxId }
}

/** Pure: the statement counting the changes `$first..$last` of the log, whatever their header. */
export const countText = (schema: string) =>
  `SELECT count(*) FROM ${ident(schema)}._sync_changes WHERE id BETWEEN $first AND $last`

/**
 * Tries changes `first..last` as a piece of the run that `start` starts, not knowing whether each of them
 * is of that run: the write reads only the changes with the run's header, and the piece went as change
 * by change would have it exactly when it wrote as many rows as the range holds changes (then every one
 * of them is of the run, and met no conflict: see {@link statements}). The range is counted only when the
 * write wrote fewer rows than it has ids (a gap in the ids, or the end of the run, or a conflict).
 * The number of changes written, or undefined with nothing of it left written.
 */
export const attemptPiece = (
  exec: Executor,
  start: RunStart,
  first: number,
  last: number,
  table: TableInfo.TableInfo,
  keys: ReadonlyArray<number>,
  schema: string
): number | undefined => {
  const texts = statements(start.kind as "insert" | "update" | "delete", table, keys, schema, true)
  if (texts === undefined) return undefined
  exec.run(`SAVEPOINT _sync_bulk`)
  let written: number
  try {
    written = exec.run(texts.write, [{ first, last, ...headerParams(start) }])
  } catch {
    written = -1
  }
  // (ids are unique: as many rows written as the range has ids are all of its changes)
  const whole = written === last - first + 1 ||
    (written > 0 && written === Number(exec.values(countText(schema), [{ first, last }])[0]![0]))
  if (!whole) {
    exec.run(`ROLLBACK TO _sync_bulk`)
    exec.run(`RELEASE _sync_bulk`)
    return undefined
  }
  exec.run(`RELEASE _sync_bulk`)
  return written
}

/**
 * Tries the run of deletes that `start` starts, taken to reach the log's last id `maxId`, as one
 * table-wide delete ({@link attemptClear}, not knowing the run's end): when the range has as many ids as
 * the table has rows, and as many of its changes, of the run's header, meet the row at their key holding
 * their before image, and as many distinct rows, every id of the range is a change of the run and they
 * remove every row. The number of changes written, or undefined with nothing written.
 */
export const attemptClearTo = (
  exec: Executor,
  start: RunStart,
  maxId: number,
  table: TableInfo.TableInfo,
  keys: ReadonlyArray<number>,
  schema: string
): number | undefined => {
  if (start.kind !== "delete") return undefined
  const texts = clearStatements(table, keys, schema)
  const span = maxId - start.id + 1
  const rows = Number(exec.values(texts.rows, [{ limit: span + 1 }])[0]![0])
  if (rows < MIN_RUN || rows !== span) return undefined
  const [matched, distinct] = exec.values(clearCheck(table, keys, schema, true), [{
    first: start.id,
    last: maxId,
    ...headerParams(start)
  }])[0]!.map(Number) as [number, number]
  if (matched !== rows || distinct !== rows) return undefined
  return writeExactly(exec, texts.write, [], rows)
}
