/**
 * The pure decisions of live sync and reactive queries, property-tested: the backoff between attempts, when
 * a waiting pull's answer means the remote moved on, when two results hold the same rows, and which tables a
 * range of the change log names (on a real SQLite change log written by capture).
 */
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as fc from "fast-check"
import * as Changes from "../src/internal/live/changes.js"
import * as LiveSync from "../src/internal/live/liveSync.js"
import * as Reactive from "../src/internal/live/reactive.js"
import * as Executor from "../src/internal/sqlite/executor.js"
import * as WalFrame from "../src/WalFrame.js"

describe("backoffMs", () => {
  it("starts at 250 ms, never shrinks from one attempt to the next, and never passes the cap", () => {
    fc.assert(fc.property(fc.nat(200), fc.integer({ min: 250, max: 600_000 }), (attempt, cap) => {
      const here = LiveSync.backoffMs(attempt, cap)
      expect(here).toBeLessThanOrEqual(cap)
      expect(here).toBeGreaterThanOrEqual(Math.min(250, cap))
      expect(LiveSync.backoffMs(attempt + 1, cap)).toBeGreaterThanOrEqual(here)
      expect(LiveSync.backoffMs(0, cap)).toBe(250)
    }))
  })
  it("reaches the cap within a few dozen attempts", () => {
    expect(LiveSync.backoffMs(30, 10_000)).toBe(10_000)
  })
})

describe("moved", () => {
  const frame: WalFrame.Frame = { pgno: 1, commitSize: 1, page: new Uint8Array(WalFrame.PAGE_SIZE) }
  it("frames always mean a change; CheckpointNeeded only when the head is not the one asked from", () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 9 }), fc.nat(1000), fc.integer({ min: 1, max: 9 }), fc.nat(1000), (g, f, hg, hf) => {
      expect(LiveSync.moved({ _tag: "Frames", frames: [frame] }, g, f)).toBe(true)
      expect(LiveSync.moved({ _tag: "CheckpointNeeded", generation: hg, maxFrameNo: hf }, g, f)).toBe(hg !== g || hf !== f)
    }))
  })
})

describe("sameRows", () => {
  const value = fc.oneof(
    fc.constant(null),
    fc.integer(),
    fc.double(),
    fc.bigInt(),
    fc.string(),
    fc.uint8Array({ maxLength: 8 })
  )
  const rows = fc.array(fc.dictionary(fc.constantFrom("a", "b", "c"), value), { maxLength: 6 })
  const copy = (r: ReadonlyArray<Record<string, unknown>>) =>
    r.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, v instanceof Uint8Array ? Uint8Array.from(v) : v])))

  it("a result equals a copy of itself (blobs compared by bytes, NaN equal to NaN)", () => {
    fc.assert(fc.property(rows, (r) => {
      expect(Reactive.sameRows(r, copy(r))).toBe(true)
    }))
  })
  it("a changed value, a missing row or a missing column is a difference", () => {
    fc.assert(fc.property(rows.filter((r) => r.length > 0 && Object.keys(r[0]).length > 0), (r) => {
      const changed = copy(r)
      const column = Object.keys(changed[0])[0]
      changed[0][column] = typeof changed[0][column] === "string" ? `${changed[0][column]}!` : "other"
      expect(Reactive.sameRows(r, changed)).toBe(false)
      expect(Reactive.sameRows(r, copy(r).slice(1))).toBe(false)
      const fewer = copy(r)
      delete fewer[0][column]
      expect(Reactive.sameRows(r, fewer)).toBe(false)
    }))
  })
})

describe("changedSince", () => {
  it("names, in lower case, exactly the tables whose rows were logged after the position; a schema change is ALL", () => {
    const db = new BetterSqlite3(":memory:")
    db.exec(`CREATE TABLE _sync_changes (id INTEGER PRIMARY KEY AUTOINCREMENT, tx_id INTEGER, tbl TEXT, kind TEXT)`)
    const exec = Executor.fromHandle(db)
    const tables = ["Notes", "tags", "people"]
    fc.assert(fc.property(
      fc.array(fc.record({ tbl: fc.constantFrom(...tables, ""), kind: fc.constantFrom("insert", "update", "delete", "ddl") }), { maxLength: 20 }),
      fc.array(fc.record({ tbl: fc.constantFrom(...tables), kind: fc.constantFrom("insert", "update", "delete") }), { maxLength: 20 }),
      (before, after) => {
        db.exec("DELETE FROM _sync_changes")
        const insert = db.prepare("INSERT INTO _sync_changes (tx_id, tbl, kind) VALUES (1, ?, ?)")
        for (const c of before) insert.run(c.tbl, c.kind === "ddl" ? "insert" : c.kind)
        const seen = Number(db.prepare("SELECT coalesce(max(id), 0) AS m FROM _sync_changes").get()!["m" as never])
        for (const c of after) insert.run(c.tbl, c.kind)
        const { keys, last } = Changes.changedSince(exec, seen)
        expect([...keys].sort()).toEqual([...new Set(after.map((c) => c.tbl.toLowerCase()))].sort())
        expect(last).toBe(Number(db.prepare("SELECT coalesce(max(id), 0) AS m FROM _sync_changes").get()!["m" as never]) || seen)
        insert.run("", "ddl")
        expect(Changes.changedSince(exec, last).keys).toEqual([Changes.ALL])
      }
    ))
  })
})
