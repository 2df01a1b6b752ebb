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
import * as Pull from "../src/internal/engine/pull.js"
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

describe("movedFromHeld and settledByFrames (a waiting pull from the synced frame as the pull)", () => {
  const frameOf = (n: number): WalFrame.Frame => ({ pgno: n, commitSize: n, page: new Uint8Array([n % 256]) })
  it("from the synced frame, only frames after it or a head elsewhere mean a change", () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 9 }), fc.nat(1000), (n, g, f) => {
      const frames = Array.from({ length: n }, (_, i) => frameOf(i))
      expect(LiveSync.movedFromHeld({ _tag: "Frames", frames })).toBe(n > 1)
      expect(LiveSync.movedFromHeld({ _tag: "CheckpointNeeded", generation: g, maxFrameNo: f })).toBe(true)
    }))
  })
  it("settles the check only for frames of the synced generation from the synced frame, naming the recorded database, whose first is the local one (or a folded one)", () => {
    fc.assert(fc.property(
      fc.record({
        generation: fc.integer({ min: 1, max: 3 }),
        syncedFrame: fc.integer({ min: 0, max: 4 }),
        databaseId: fc.option(fc.constantFrom("db-1", "db-2"), { nil: undefined })
      }),
      fc.integer({ min: 1, max: 3 }),
      fc.integer({ min: 0, max: 4 }),
      fc.option(fc.constantFrom("db-1", "db-2"), { nil: undefined }),
      fc.integer({ min: 0, max: 3 }),
      fc.constantFrom("same", "other", "folded"),
      (known, generation, start, databaseId, count, local) => {
        const frames = Array.from({ length: count }, (_, i) => frameOf(start + i))
        const answer = { generation, start, end: start + 129, result: { _tag: "Frames" as const, frames, databaseId } }
        const localFrame = local === "same" ? frameOf(start) : local === "other" ? frameOf(start + 1) : undefined
        const settled = Pull.settledByFrames(known, answer, localFrame)
        expect(settled).toBe(
          known.syncedFrame > 0 && known.databaseId !== undefined && databaseId === known.databaseId &&
            generation === known.generation && start === known.syncedFrame && count > 0 && local !== "other"
        )
        // A CheckpointNeeded answer never settles it.
        expect(Pull.settledByFrames(known, { ...answer, result: { _tag: "CheckpointNeeded", generation, maxFrameNo: start, databaseId } }, localFrame)).toBe(false)
      }
    ))
  })
})

describe("checkPart and restPart (one pull from the synced frame for the check and the first frames)", () => {
  const frameNo = (pgno: number): WalFrame.Frame => ({ pgno, commitSize: pgno, page: new Uint8Array(0) })
  it("the check reads the frame at the synced position; the rest is the frames after it, in order, or nothing more only when /info's head is there", () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 9 }),
      fc.integer({ min: 1, max: 1000 }),
      fc.nat(300),
      fc.integer({ min: 1, max: 9 }),
      fc.option(fc.nat(1300), { nil: undefined }),
      (generation, frame, more, headGeneration, headFrame) => {
        const frames = Array.from({ length: 1 + more }, (_, i) => frameNo(frame + i))
        const answer = { _tag: "Frames" as const, frames }
        const at = { generation, frame }
        const head = { generation: headGeneration, maxFrameNo: headFrame }
        expect(Pull.checkPart(answer)).toEqual({ _tag: "Frames", frames: [frames[0]] })
        const rest = Pull.restPart(answer, at, head)
        if (more > 0) expect(rest).toEqual({ _tag: "Frames", frames: frames.slice(1) })
        else if (headGeneration === generation && headFrame === frame) {
          expect(rest).toEqual({ _tag: "CheckpointNeeded", generation, maxFrameNo: frame })
        } else expect(rest).toBeUndefined()
      }
    ))
  })
  it("an answer without the synced frame is the check's alone: the pull asks for the rest itself", () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 9 }), fc.nat(1000), fc.nat(1000), (generation, frame, maxFrameNo) => {
      const ends = { _tag: "CheckpointNeeded" as const, generation, maxFrameNo }
      expect(Pull.checkPart(ends)).toEqual(ends)
      expect(Pull.restPart(ends, { generation, frame }, { generation, maxFrameNo: frame })).toBeUndefined()
      const none = { _tag: "Frames" as const, frames: [] }
      expect(Pull.checkPart(none)).toEqual(none)
      expect(Pull.restPart(none, { generation, frame }, { generation, maxFrameNo: frame })).toBeUndefined()
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
