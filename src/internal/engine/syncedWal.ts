/**
 * Synced's WAL around the synced frame (invariant 1): where it stands at that frame, the frames beyond it
 * (a local replay waiting to be pushed), and cutting it back there.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import * as WalFrame from "../../WalFrame.js"
import * as Files from "../sqlite/files.js"
import type * as SyncMetadata from "../../SyncMetadata.js"
import { type State, type SyncedPageIndex, walFrames } from "./state.js"

/**
 * Synced's WAL state at the synced frame (header, running checksum), validated once per process and
 * generation and then cached, so that pushes and pulls read only the frames after it.
 */
export const prefixAtSyncedFrame = (state: State) =>
  Effect.gen(function*() {
    const m = yield* SynchronizedRef.get(state.metadata)
    // `state.frames` counts the WAL's frames: the synced frames not folded into the file.
    const frames = walFrames(m)
    if (frames === 0) return undefined
    const cached = yield* Ref.get(state.syncedPrefix)
    if (cached !== undefined && cached.generation === m.generation && cached.state.frames === frames) {
      return cached.state
    }
    const prefix = yield* Files.prefixState(state.paths.synced, frames)
    if (prefix !== undefined) yield* Ref.set(state.syncedPrefix, { generation: m.generation, state: prefix })
    return prefix
  })

/** Cuts Synced's WAL back to the synced frame if it is longer (invariant 1); Synced is closed meanwhile. */
export const cutToSyncedFrame = (state: State) =>
  Effect.gen(function*() {
    const frames = walFrames(yield* SynchronizedRef.get(state.metadata))
    const size = yield* Files.fileSize(Files.walPath(state.paths.synced))
    if (size > WalFrame.walSize(frames)) {
      yield* state.synced.withClosed(Files.truncateWal(state.paths.synced, frames))
    }
  })

/**
 * Step 2d: cut Synced's WAL back to the synced frame, dropping the frames of the local replay. A WAL with
 * nothing beyond it (no replay, or the replay wrote nothing) is left as it is, Synced open.
 */
export const resetSyncedWal = Effect.fn("Engine.resetSyncedWal")(function*(state: State) {
  const frames = walFrames(yield* SynchronizedRef.get(state.metadata))
  yield* state.step("reset:before")
  if ((yield* Files.fileSize(Files.walPath(state.paths.synced))) <= WalFrame.walSize(frames)) return
  yield* state.synced.withClosed(Files.truncateWal(state.paths.synced, frames))
})

/**
 * The synced frames' page index (`SyncedPageIndex`), read from the WAL where the cached one does not cover
 * them: a pull's check of its frames and a copy read the pages they need, not every frame's header.
 */
export const syncedPageIndex = (state: State, m: SyncMetadata.Metadata, prefix: Files.WalState | undefined) =>
  Effect.gen(function*() {
    const count = walFrames(m)
    // A WAL made again (a fold's rest, a roll, a rebootstrap) has other salts or starts at another frame.
    const key = prefix === undefined
      ? "none"
      : `${m.generation}:${m.foldedFrame ?? 0}:${prefix.header.salt1}:${prefix.header.salt2}`
    const cached = state.syncedPageIndex.current
    const index: SyncedPageIndex = cached !== undefined && cached.key === key && cached.frames <= count
      ? cached
      : { key, frames: 0, lastCommitSize: 0, newest: new Map() }
    if (index.frames < count) {
      const added = yield* Files.readWalFrames(state.paths.synced, count - index.frames, index.frames)
      for (let i = 0; i < added.length; i++) index.newest.set(added[i].pgno, index.frames + i)
      index.frames = count
      index.lastCommitSize = added[added.length - 1].commitSize
    }
    state.syncedPageIndex.current = index
    return index
  })
