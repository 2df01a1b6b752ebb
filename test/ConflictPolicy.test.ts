import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as ConflictPolicy from "../src/ConflictPolicy.js"
import { Resolution } from "../src/ConflictPolicy.js"
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as ConflictLog from "../src/internal/engine/conflictLog.js"
import * as ChangeCapture from "../src/ChangeCapture.js"
import * as ChangeReplay from "../src/ChangeReplay.js"
import { dump, exec, on, open } from "./support/changeSync.js"

const literalArb = fc.oneof(
  fc.constant("NULL"),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String),
  fc.string().map((s) => `'${s.replace(/'/g, "''")}'`)
)
const imageArb = fc.dictionary(fc.constantFrom("id", "a", "b", "c"), literalArb, { minKeys: 1 })
const kindArb = fc.constantFrom<ConflictPolicy.ConflictKind>("RowChanged", "RowMissing", "KeyExists", "Constraint")
const changeKindArb = fc.constantFrom<ChangeCapture.Change["kind"]>("insert", "update", "delete")

const conflictArb = fc.record({
  kind: kindArb,
  changeKind: changeKindArb,
  before: fc.option(imageArb, { nil: null }),
  after: fc.option(imageArb, { nil: null }),
  remote: fc.option(imageArb, { nil: null }),
  mode: fc.constantFrom<"push" | "pull">("push", "pull")
}).map((c): ConflictPolicy.Conflict => ({
  kind: c.kind,
  table: "t",
  key: [["id", "1"]],
  change: { id: 1, txId: 1, table: "t", kind: c.changeKind, before: c.before, after: c.after },
  remote: c.remote,
  mode: c.mode
}))

describe("ConflictPolicy.builtin", () => {
  it("remoteWins keeps the remote row for every kind of conflict but a delete of a row deleted remotely too", () =>
    fc.assert(fc.property(conflictArb, (conflict) => {
      const agree = conflict.kind === "RowMissing" && conflict.change.kind === "delete"
      const resolution = ConflictPolicy.builtin("remoteWins", conflict)
      expect(resolution).toEqual(agree ? Resolution.KeepLocal() : Resolution.KeepRemote())
      expect(ConflictPolicy.dropsTransaction(resolution)).toBe(!agree)
    })))

  it("every built-in policy lets a delete of a row deleted remotely go through", () =>
    fc.assert(fc.property(conflictArb, fc.constantFrom<ConflictPolicy.Builtin>("lastPushWins", "lastPushWinsRow", "remoteWins", "mergeColumns"), (conflict, policy) => {
      const missingDelete = { ...conflict, kind: "RowMissing" as const, change: { ...conflict.change, kind: "delete" as const } }
      expect(ConflictPolicy.builtin(policy, missingDelete)).toEqual(Resolution.KeepLocal())
    })))

  it("lastPushWinsRow never drops a transaction; constraints are not its to settle", () =>
    fc.assert(fc.property(conflictArb, (conflict) => {
      const resolution = ConflictPolicy.builtin("lastPushWinsRow", conflict)
      expect(ConflictPolicy.dropsTransaction(resolution)).toBe(false)
      expect(resolution._tag === "Fail").toBe(conflict.kind === "Constraint")
    })))

  it("lastPushWins (and its former name mergeColumns) never drops a transaction; constraints and inserts over another replica's row are left to the application", () =>
    fc.assert(fc.property(conflictArb, fc.constantFrom<ConflictPolicy.Builtin>("lastPushWins", "mergeColumns"), (conflict, policy) => {
      const resolution = ConflictPolicy.builtin(policy, conflict)
      expect(ConflictPolicy.dropsTransaction(resolution)).toBe(false)
      expect(resolution._tag === "Fail").toBe(conflict.kind === "Constraint" || conflict.kind === "KeyExists")
      if (conflict.kind === "KeyExists" && resolution._tag === "Fail") expect(resolution.message).toContain("another replica inserted")
    })))

  it("lastPushWins keeps every other local change as captured (its changed columns only); mergeColumns answers the same", () =>
    fc.assert(fc.property(conflictArb.filter((c) => c.kind !== "Constraint" && c.kind !== "KeyExists"), (conflict) => {
      expect(ConflictPolicy.builtin("lastPushWins", conflict)).toEqual(Resolution.KeepLocal())
      expect(ConflictPolicy.builtin("mergeColumns", conflict)).toEqual(Resolution.KeepLocal())
    })))

  it("lastPushWinsRow overwrites a row at an inserted key (KeepLocal)", () =>
    fc.assert(fc.property(conflictArb.map((c) => ({ ...c, kind: "KeyExists" as const })), (conflict) => {
      expect(ConflictPolicy.builtin("lastPushWinsRow", conflict)).toEqual(Resolution.KeepLocal())
    })))

  it("column-level last push wins: the row ends with the local value where the local transaction changed a column, the remote value elsewhere", () =>
    fc.assert(fc.property(imageArb, imageArb, imageArb, (beforeRest, afterRest, remoteRest) => {
      // one row of a table (id, a, b, c) as the local transaction found it, left it, and the remote holds it now
      const full = (image: ChangeCapture.Image, base: ChangeCapture.Image): ChangeCapture.Image => ({ ...base, ...image, id: "1" })
      const before = full(beforeRest, { a: "NULL", b: "NULL", c: "NULL" })
      const after = full(afterRest, before)
      const remote = full(remoteRest, before)
      const table: ChangeReplay.TableInfo = {
        name: "t", columns: ["id", "a", "b", "c"], primaryKey: ["id"], withoutRowid: false, rowidAlias: null,
        uniqueIndexes: [], allColumns: ["id", "a", "b", "c"]
      }
      const change: ChangeCapture.Change = { id: 1, txId: 1, table: "t", kind: "update", before, after }
      const decision = ChangeReplay.decide(change, remote, table)
      const changed = table.columns.filter((column) => before[column] !== after[column])
      const conflict = table.columns.some((column) => before[column] !== remote[column])
      if (conflict) {
        const kind = "RowChanged" as const
        expect(ConflictPolicy.builtin("lastPushWins", { kind, table: "t", key: [["id", "1"]], change, remote, mode: "push" }))
          .toEqual(Resolution.KeepLocal())
      }
      const result: Record<string, string> = { ...remote }
      if (decision._tag === "Update") Object.assign(result, decision.set)
      else expect(decision._tag).toBe("Skip")
      for (const column of table.columns) {
        expect(result[column]).toBe(changed.includes(column) ? after[column] : remote[column])
      }
    })))

  it("lastPushWinsRow writes the whole local row over a row changed remotely, keeping columns only the remote has", () =>
    fc.assert(fc.property(imageArb, imageArb, imageArb, (before, after, remote) => {
      const conflict: ConflictPolicy.Conflict = {
        kind: "RowChanged", table: "t", key: [["id", "1"]], remote, mode: "push",
        change: { id: 1, txId: 1, table: "t", kind: "update", before, after }
      }
      const resolution = ConflictPolicy.builtin("lastPushWinsRow", conflict)
      expect(resolution._tag).toBe("Replace")
      if (resolution._tag === "Replace") {
        for (const [column, value] of Object.entries(after)) expect(resolution.row[column]).toBe(value)
        for (const [column, value] of Object.entries(remote)) {
          if (!(column in after)) expect(resolution.row[column]).toBe(value)
        }
      }
    })))

  it("resolver(policy) answers what builtin answers; a function is used as is", async () => {
    const conflicts = fc.sample(conflictArb, 50)
    for (const conflict of conflicts) {
      for (const policy of ["lastPushWins", "lastPushWinsRow", "remoteWins", "mergeColumns"] as const) {
        expect(await Effect.runPromise(ConflictPolicy.resolver<never>(policy)(conflict))).toEqual(
          ConflictPolicy.builtin(policy, conflict)
        )
      }
    }
  })
})

describe("ConflictPolicy.literal / value", () => {
  const db = new BetterSqlite3(":memory:")
  db.defaultSafeIntegers(true)
  const quote = db.prepare("SELECT quote(?) AS q")
  it("literal agrees with SQLite's quote() and value inverts it", () =>
    fc.assert(fc.property(
      fc.oneof(
        fc.constant(null),
        fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
        fc.integer(),
        fc.string(),
        fc.uint8Array({ maxLength: 32 })
      ),
      (v) => {
        const text = ConflictPolicy.literal(v)
        const bound = typeof v === "number" ? BigInt(v) : v instanceof Uint8Array ? Buffer.from(v) : v
        expect(text).toBe((quote.get(bound) as { q: string }).q)
        const back = ConflictPolicy.value(text)
        if (typeof v === "bigint") expect(BigInt(back as number | bigint)).toBe(v)
        else expect(back).toEqual(v)
      }
    )))

  it("a literal of a REAL stays a REAL in SQLite", () =>
    fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
      const row = db.prepare(`SELECT typeof(${ConflictPolicy.literal(x)}) AS t, ${ConflictPolicy.literal(x)} AS v`).get() as { t: string; v: number | bigint }
      if (Number.isInteger(x) && Number.isSafeInteger(x)) expect(row.t).toBe("integer")
      else {
        expect(row.t).toBe("real")
        expect(Number(row.v)).toBe(x)
      }
    })))
})

describe("ChangeReplay.apply with a policy: local transactions are units", () => {
  const opArb = fc.record({
    id: fc.integer({ min: 1, max: 6 }),
    kind: fc.constantFrom("upsert", "delete", "bump"),
    value: fc.integer({ min: 0, max: 50 })
  })
  const statementOf = (op: { id: number; kind: string; value: number }) =>
    op.kind === "upsert"
      ? `INSERT INTO t VALUES (${op.id}, ${op.value}) ON CONFLICT (id) DO UPDATE SET v = excluded.v`
      : op.kind === "delete"
      ? `DELETE FROM t WHERE id = ${op.id}`
      : `UPDATE t SET v = v + 1 WHERE id = ${op.id}`

  it("the target ends exactly as if only the kept transactions had replayed, each in full", () =>
    fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ id: fc.integer({ min: 1, max: 4 }), remove: fc.boolean(), value: fc.integer({ min: 100, max: 200 }) }), { maxLength: 4 }),
        fc.array(fc.array(opArb, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.constantFrom("KeepLocal", "KeepRemote", "Skip") as fc.Arbitrary<"KeepLocal" | "KeepRemote" | "Skip">, { minLength: 1, maxLength: 8 }),
        (remoteOps, transactions, answers) =>
          Effect.runPromise(Effect.scoped(Effect.gen(function*() {
            const a = yield* open()
            const b = yield* open()
            const model = yield* open()
            const schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"
            const rows = "INSERT INTO t VALUES (1, 0), (2, 0), (3, 0), (4, 0)"
            for (const db of [a, b, model]) {
              yield* exec(db, schema)
              yield* exec(db, rows)
            }
            yield* on(a, ChangeCapture.install)
            for (const op of remoteOps) {
              const statement = op.remove ? `DELETE FROM t WHERE id = ${op.id}` : `UPDATE t SET v = ${op.value} WHERE id = ${op.id}`
              yield* exec(b, statement)
              yield* exec(model, statement)
            }
            for (const tx of transactions) {
              yield* on(a, ChangeCapture.transaction(Effect.forEach(tx, (op) => ChangeCapture.execute(statementOf(op)))))
            }
            const changes = yield* on(a, ChangeCapture.pending(0))
            let calls = 0
            const result = yield* on(b, ChangeReplay.apply(changes, {
              mode: "push",
              clientId: "A",
              resolve: () => Effect.succeed(ConflictPolicy.Resolution[answers[calls++ % answers.length]!]())
            }))
            const dropped = new Set(result.dropped ?? [])
            // every transaction is dropped whole or not at all
            for (const group of ChangeReplay.groupByTransaction(changes)) {
              const count = group.filter((change) => dropped.has(change.id)).length
              expect(count === 0 || count === group.length).toBe(true)
            }
            // a dropped transaction is dropped because one of its changes was answered KeepRemote/Skip
            const droppers = new Set(result.conflicts.filter((c) => c.resolution !== undefined && ConflictPolicy.dropsTransaction(c.resolution)).map((c) => c.change.txId))
            for (const change of changes) expect(dropped.has(change.id)).toBe(droppers.has(change.txId))
            const kept = changes.filter((change) => !dropped.has(change.id))
            yield* on(model, ChangeReplay.apply(kept, { mode: "push", clientId: "A" }))
            expect(yield* dump(b)).toBe(yield* dump(model))
          })))
      ),
      { numRuns: 60 }
    ))
})

describe("conflict log", () => {
  it.scoped("keeps the newest LIMIT entries across appends, in order, in its own file", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-conflict-log-"))),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      const log = ConflictLog.make(NodePath.join(dir, "db-conflicts"))
      expect(yield* log.read).toEqual([])
      const entry = (i: number): ConflictPolicy.Entry => ({
        at: i, kind: "RowChanged", table: "t", key: [["id", String(i)]], changeId: i, txId: i,
        localBefore: null, localAfter: { id: String(i) }, remote: null, decision: "KeepLocal"
      })
      yield* log.append(Array.from({ length: 700 }, (_, i) => entry(i)))
      yield* log.append(Array.from({ length: 700 }, (_, i) => entry(700 + i)))
      const kept = yield* log.read
      expect(kept.length).toBe(ConflictLog.LIMIT)
      expect(kept[0]!.changeId).toBe(1400 - ConflictLog.LIMIT)
      expect(kept[kept.length - 1]!.changeId).toBe(1399)
      expect(Fs.readdirSync(dir)).toEqual(["db-conflicts"])
    }))
})
