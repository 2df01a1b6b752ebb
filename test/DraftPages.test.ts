/**
 * The bookkeeping of which pages a pull rewrites in the draft copy (src/internal/engine/draftPages.ts),
 * checked against a model of both copies page by page: remote frames arrive, the synced copy folds them
 * into its file or rolls to the next generation, local writes land in the draft WAL, the draft WAL is
 * folded, and pulls copy (then write the copy's pages into the draft file too, or crash part way through
 * that, or lose the record altogether). After every copy the draft copy must equal "the synced copy + the
 * replayed pending changes" on every page, having been written only the pages `copyPages` chose.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as DraftPages from "../src/internal/engine/draftPages.js"

const PAGES = 12

type Op =
  | { readonly _tag: "remote"; readonly pages: ReadonlyArray<number> }
  | { readonly _tag: "pull" }
  | { readonly _tag: "syncedFold"; readonly keep: number }
  | { readonly _tag: "roll" }
  | { readonly _tag: "local"; readonly pages: ReadonlyArray<number> }
  | { readonly _tag: "draftFold" }
  | { readonly _tag: "copy"; readonly replay: ReadonlyArray<number> }
  | { readonly _tag: "copyApplied" }
  | { readonly _tag: "copyAppliedInPart"; readonly pages: ReadonlyArray<number> }
  | { readonly _tag: "forget" }

const pages = fc.uniqueArray(fc.integer({ min: 1, max: PAGES }), { minLength: 1, maxLength: 4 })
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: pages.map((p) => ({ _tag: "remote" as const, pages: p })) },
  { weight: 3, arbitrary: fc.constant({ _tag: "pull" as const }) },
  { weight: 2, arbitrary: fc.nat(3).map((keep) => ({ _tag: "syncedFold" as const, keep })) },
  { weight: 1, arbitrary: fc.constant({ _tag: "roll" as const }) },
  { weight: 4, arbitrary: pages.map((p) => ({ _tag: "local" as const, pages: p })) },
  { weight: 2, arbitrary: fc.constant({ _tag: "draftFold" as const }) },
  { weight: 3, arbitrary: fc.array(fc.integer({ min: 1, max: PAGES }), { maxLength: 3 }).map((replay) => ({ _tag: "copy" as const, replay })) },
  { weight: 2, arbitrary: fc.constant({ _tag: "copyApplied" as const }) },
  { weight: 1, arbitrary: pages.map((p) => ({ _tag: "copyAppliedInPart" as const, pages: p })) },
  { weight: 1, arbitrary: fc.constant({ _tag: "forget" as const }) }
)

type Image = Map<number, string>
interface Frame {
  readonly pgno: number
  readonly value: string
}

const apply = (image: Image, frames: ReadonlyArray<Frame>): Image => {
  const out = new Map(image)
  for (const f of frames) out.set(f.pgno, f.value)
  return out
}

const run = (ops: ReadonlyArray<Op>) => {
  let counter = 0
  const value = (what: string) => `${what}${++counter}`
  // The remote: generation g's base and frames.
  const bases: Array<Image> = [new Map(Array.from({ length: PAGES }, (_, i) => [i + 1, "base"]))]
  const history: Array<Array<Frame>> = [[]]
  let generation = 1
  const syncedAt = (g: number, f: number) => apply(bases[g - 1]!, history[g - 1]!.slice(0, f))
  // The synced copy: its file at (generation, folded), its WAL = frames folded+1..syncedFrame.
  let folded = 0
  let syncedFrame = 0
  let syncedFile = syncedAt(1, 0)
  // The draft copy: its file and its WAL.
  let draftFile = syncedAt(1, 0)
  let draftWal: Array<Frame> = []
  let t: DraftPages.DraftPages | undefined = DraftPages.fresh({ generation: 1, frame: 0 })
  // The last copy's frames while the draft WAL still begins with them; pages of them written into the draft
  // file without the record saying so (a crash while they were written).
  let copyFrames: Array<Frame> | undefined
  let aheadOfRecord = new Map<number, string>()
  let copies = 0
  let written = 0

  const syncedWal = () => history[generation - 1]!.slice(folded, syncedFrame)
  const checkInvariants = (where: string) => {
    if (t === undefined) return
    const fileBase = syncedAt(t.fileBase.generation, t.fileBase.frame)
    for (let p = 1; p <= PAGES; p++) {
      if (!t.filePages.includes(p) && draftFile.get(p) !== aheadOfRecord.get(p)) {
        expect(draftFile.get(p), `${where}: draft file page ${p}`).toBe(fileBase.get(p))
      }
      if (!t.syncedPages.includes(p) && !syncedWal().some((f) => f.pgno === p)) {
        expect(syncedFile.get(p), `${where}: synced file page ${p}`).toBe(fileBase.get(p))
      }
    }
  }

  for (const [i, o] of ops.entries()) {
    const where = `op ${i} ${o._tag}`
    switch (o._tag) {
      case "remote":
        for (const pgno of o.pages) history[generation - 1]!.push({ pgno, value: value("r") })
        break
      case "pull":
        syncedFrame = history[generation - 1]!.length
        break
      case "syncedFold": {
        const to = Math.max(folded, syncedFrame - o.keep)
        const frames = history[generation - 1]!.slice(folded, to)
        syncedFile = apply(syncedFile, frames)
        folded = to
        if (t) t = DraftPages.syncedFolded(t, { generation, frame: folded }, frames.map((f) => f.pgno))
        break
      }
      case "roll": {
        // Only once the synced copy has every frame of its generation (a pull that meets the roll).
        syncedFrame = history[generation - 1]!.length
        const frames = syncedWal()
        bases.push(syncedAt(generation, syncedFrame))
        history.push([])
        generation++
        syncedFile = bases[generation - 1]!
        folded = 0
        syncedFrame = 0
        if (t) t = DraftPages.syncedFolded(t, { generation, frame: 0 }, frames.map((f) => f.pgno))
        break
      }
      case "local":
        for (const pgno of o.pages) draftWal.push({ pgno, value: value("l") })
        break
      case "draftFold": {
        // As fold.ts: without a record, every page of the file may differ.
        const known = DraftPages.orUnknown(t, { generation, frame: folded }, PAGES)
        const local = draftWal.slice(known.copy?.frames ?? 0).map((f) => f.pgno)
        draftFile = apply(draftFile, draftWal)
        draftWal = []
        copyFrames = undefined
        aheadOfRecord = new Map()
        // As fold.ts: nothing recorded when every page is already; else the pages and a growth margin.
        if (t === undefined || DraftPages.foldChanges(known, local)) {
          t = DraftPages.draftFolded(known, DraftPages.withGrowth(local, 2), { generation, frame: folded })
        }
        break
      }
      case "copyApplied":
        // The copy's pages written into the draft file too, then recorded (copy.ts, `settle`).
        if (copyFrames === undefined || t === undefined) break
        draftFile = apply(draftFile, copyFrames)
        aheadOfRecord = new Map()
        t = DraftPages.copyApplied(t, { generation, frame: folded })
        break
      case "copyAppliedInPart":
        // A crash while they were written: some reached the file, the record did not move.
        if (copyFrames === undefined) break
        for (const f of copyFrames) {
          if (o.pages.includes(f.pgno)) {
            draftFile = apply(draftFile, [f])
            aheadOfRecord.set(f.pgno, f.value)
          }
        }
        break
      case "forget":
        t = undefined
        break
      case "copy": {
        const replay: Array<Frame> = o.replay.map((pgno) => ({ pgno, value: value("p") }))
        const target = apply(apply(syncedFile, syncedWal()), replay)
        const walPages = [...syncedWal(), ...replay].map((f) => f.pgno)
        const known = DraftPages.orUnknown(t, { generation, frame: folded }, PAGES)
        const chosen = DraftPages.copyPages(known, walPages, PAGES)
        draftWal = chosen.map((pgno) => ({ pgno, value: target.get(pgno)! }))
        copyFrames = [...draftWal]
        written += chosen.length
        t = DraftPages.copied(known, { generation, frame: syncedFrame }, chosen.length, replay.map((f) => f.pgno))
        const draft = apply(draftFile, draftWal)
        for (let p = 1; p <= PAGES; p++) expect(draft.get(p), `${where}: page ${p} after the copy`).toBe(target.get(p))
        copies++
        break
      }
    }
    checkInvariants(where)
  }
  return { copies, written }
}

describe("DraftPages", () => {
  it("a copy of the chosen pages makes the draft copy equal to the synced copy + the replay, on every page", () => {
    let copies = 0
    fc.assert(fc.property(fc.array(op, { minLength: 1, maxLength: 60 }), (ops) => {
      copies += run(ops).copies
    }), { numRuns: 2000 })
    expect(copies).toBeGreaterThan(1000)
  })

  it("a pull after a fold writes only the pages changed since (remote frames + replays)", () => {
    const result = run([
      { _tag: "local", pages: [1, 2, 3, 4, 5, 6] },
      { _tag: "copy", replay: [5, 6] },
      { _tag: "draftFold" },
      { _tag: "syncedFold", keep: 0 },
      { _tag: "remote", pages: [9] },
      { _tag: "pull" },
      { _tag: "copy", replay: [5] }
    ])
    // First copy: page 1 + the replay (5, 6); the second: page 1, the remote page 9, this replay (5) and
    // the previous one (6).
    expect(result.written).toBe(3 + 4)
  })

  it("metadata of unknown origin makes a copy write every page", () => {
    const t = DraftPages.unknown({ generation: 2, frame: 0 }, 5)
    expect(DraftPages.copyPages(t, [7], 7)).toEqual([1, 2, 3, 4, 5, 7])
    expect(DraftPages.copyPages(t, [9], 4)).toEqual([1, 2, 3, 4])
  })

  it("no record at all is never read as \"the draft copy equals the synced copy\": a copy writes every page", () => {
    const at = { generation: 3, frame: 7 }
    expect(DraftPages.copyPages(DraftPages.orUnknown(undefined, at, 6), [2], 6)).toEqual([1, 2, 3, 4, 5, 6])
    const kept = DraftPages.fresh(at)
    expect(DraftPages.orUnknown(kept, at, 6)).toBe(kept)
    // The model: the record lost before a copy; the copy still makes the draft equal to the target.
    const result = run([
      { _tag: "local", pages: [2, 3] },
      { _tag: "draftFold" },
      { _tag: "forget" },
      { _tag: "remote", pages: [9] },
      { _tag: "pull" },
      { _tag: "copy", replay: [] }
    ])
    expect(result.written).toBe(PAGES)
  })
})
