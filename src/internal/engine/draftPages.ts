/**
 * Which pages of the draft copy a pull must rewrite: the pure bookkeeping behind a copy step whose cost
 * follows the changes, not the database size.
 *
 * The draft copy's database file is kept equal to "the synced copy at `fileBase`, except on `filePages`".
 * The synced copy's file drifts away from that position as confirmed frames are folded into it; the pages
 * those frames wrote are `syncedPages` (frames still in its WAL are read from the WAL itself). A pull makes
 * the draft copy equal to "the synced copy now, plus the pending local changes replayed": every page on which
 * the two can differ is in `filePages ∪ syncedPages ∪ pages of the synced WAL` (the replay's frames are at
 * the end of that WAL). Those pages, taken from the synced copy, form one transaction written as the draft
 * copy's new WAL (`copy`); folding the draft copy's WAL into its file later moves `fileBase` to `copy.at`.
 *
 * Over-approximating a set costs writes, never correctness; missing a page would be a silent divergence,
 * which is what the property tests check.
 *
 * @internal
 */
import type { DraftPages, Position } from "../../SyncMetadata.js"

export type { DraftPages, Position }

/** Orders positions: generation first, then frame. */
export const compare = (a: Position, b: Position): number =>
  a.generation !== b.generation ? a.generation - b.generation : a.frame - b.frame

const union = (a: ReadonlyArray<number>, b: Iterable<number>): ReadonlyArray<number> => {
  const set = new Set(a)
  for (const p of b) set.add(p)
  return set.size === a.length ? a : [...set].sort((x, y) => x - y)
}

/** Both copies' files hold the synced copy at `at` (a bootstrap). */
export const fresh = (at: Position): DraftPages => ({ fileBase: at, filePages: [], syncedPages: [] })

/**
 * Nothing is known about the draft copy's file (metadata of an older version): every page it has may
 * differ from the synced copy's file, which is at `syncedFileAt`.
 */
export const unknown = (syncedFileAt: Position, draftFilePages: number): DraftPages => ({
  fileBase: syncedFileAt,
  filePages: Array.from({ length: draftFilePages }, (_, i) => i + 1),
  syncedPages: []
})

/**
 * The record as kept, or, when there is none (lost, or dropped with a copy that did not happen), "every
 * page may differ": never "the draft copy equals the synced copy". `draftFilePages`: the larger of the
 * draft copy's size and of the size a copy will write.
 */
export const orUnknown = (t: DraftPages | undefined, syncedFileAt: Position, draftFilePages: number): DraftPages =>
  t ?? unknown(syncedFileAt, draftFilePages)

/**
 * The synced copy's file moved to `to` by folding frames that wrote `pages` (a local fold, or a roll to
 * the next generation's base, whose frame 0 is after every frame of the previous one).
 */
export const syncedFolded = (t: DraftPages, to: Position, pages: Iterable<number>): DraftPages =>
  compare(to, t.fileBase) <= 0 ? t : { ...t, syncedPages: union(t.syncedPages, pages) }

/**
 * The pages a copy writes: every page on which the draft copy's file can differ from the synced copy now
 * (`syncedWalPages`: the pages of every frame in the synced WAL, the replay's included), limited to the
 * target's `targetPages`; page 1 always (it carries the change counter, and a transaction needs a frame).
 */
export const copyPages = (
  t: DraftPages,
  syncedWalPages: Iterable<number>,
  targetPages: number
): ReadonlyArray<number> => {
  const set = new Set<number>([1])
  // The last copy's replay pages too: its pages may have reached the draft copy's file before the record
  // of that did (`copyApplied` is recorded after the pages are written).
  for (const source of [t.filePages, t.syncedPages, syncedWalPages, t.copy?.replayPages ?? []]) {
    for (const p of source) if (p <= targetPages) set.add(p)
  }
  return [...set].sort((a, b) => a - b)
}

/**
 * A copy transaction of `frames` frames, making the draft copy the synced copy at `at` + `replayPages`, is
 * the draft WAL now. The previous copy's replay pages may have reached the draft copy's file unrecorded
 * (a crash while `copyApplied`'s pages were written): they stay among the file's differing pages.
 */
export const copied = (t: DraftPages, at: Position, frames: number, replayPages: Iterable<number>): DraftPages => ({
  ...t,
  filePages: union(t.filePages, t.copy?.replayPages ?? []),
  copy: { at, frames, replayPages: union([], replayPages) }
})

/**
 * The pages a fold records for local frames that wrote `localPages`: those, and the `margin` pages after the
 * last of them, which the file is likely to grow into next. Recording a page that does not differ costs a
 * copy of it at most (and nothing while the synced copy does not have it either); it lets the following
 * folds of a growing file find their pages recorded already.
 */
export const withGrowth = (localPages: ReadonlyArray<number>, margin: number): ReadonlyArray<number> => {
  if (localPages.length === 0 || margin <= 0) return localPages
  const last = localPages.reduce((a, b) => Math.max(a, b), 0)
  return union(localPages, Array.from({ length: margin }, (_, i) => last + 1 + i))
}

/**
 * Whether folding local frames that wrote `localPages` changes the record: not when no copy transaction
 * is in the WAL and every page is recorded already (the fold then needs no record written first).
 */
export const foldChanges = (t: DraftPages, localPages: Iterable<number>): boolean => {
  if (t.copy !== undefined) return true
  const recorded = new Set(t.filePages)
  for (const p of localPages) if (!recorded.has(p)) return true
  return false
}

/**
 * The draft copy's WAL was folded into its file. `localPages`: pages of the WAL's frames after the copy
 * transaction (all of them without one). `syncedFileAt`: where the synced copy's file stands.
 */
export const draftFolded = (t: DraftPages, localPages: Iterable<number>, syncedFileAt: Position): DraftPages => {
  if (t.copy === undefined) return { ...t, filePages: union(t.filePages, localPages) }
  const at = t.copy.at
  return {
    fileBase: at,
    filePages: union(t.copy.replayPages, localPages),
    syncedPages: compare(syncedFileAt, at) <= 0 ? [] : t.syncedPages
  }
}

/**
 * The copy transaction's pages were also written into the draft copy's file (its WAL still holds them, so
 * SQLite reads the same pages either way): the file is now the synced copy at `copy.at` except on the
 * replay's pages. The copy stays recorded, since the WAL still begins with it.
 */
export const copyApplied = (t: DraftPages, syncedFileAt: Position): DraftPages =>
  t.copy === undefined ? t : { ...draftFolded(t, [], syncedFileAt), copy: t.copy }
