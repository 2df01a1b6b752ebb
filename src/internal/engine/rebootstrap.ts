/**
 * Re-bootstrap: Synced becomes the remote's current base (its generation, frame 0) through the roll's
 * crash-safe file steps (`<path>-synced.next`, flagged in the metadata, renamed; open finishes a flagged
 * one). Draft and its pending changes stay as they are: the next pull replays them onto the new base and
 * the next push sends them, once (changes at or below `lastPushedChangeId` never again).
 *
 * `GenerationGone` (the remote dropped the synced generation; the engine does it by itself) still
 * requires the recorded identity; `Requested` (the app's call after a `RemoteMismatch`) takes the remote's.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as SynchronizedRef from "effect/SynchronizedRef"
import type * as SyncError from "../../SyncError.js"
import * as Files from "../sqlite/files.js"
import * as PageCopy from "../sqlite/pageCopy.js"
import { validBase } from "./bootstrap.js"
import * as DraftPages from "./draftPages.js"
import * as RemoteBinding from "./remoteBinding.js"
import { finishRollFiles } from "./roll.js"
import { type RebootstrapReason, received, type State, updateMetadata } from "./state.js"

/** The re-bootstrap's steps; Synced is left closed. @internal */
export const replaceSynced = Effect.fn("Engine.replaceSynced")(
  function*(state: State, reason: RebootstrapReason) {
    const before = yield* SynchronizedRef.get(state.metadata)
    const info = yield* state.remote.info
    if (reason !== "Requested") yield* RemoteBinding.identityDecision(before.databaseId, info.databaseId)
    const base = yield* state.remote.export(info.generation)
    yield* received(state, 0, base.byteLength)
    yield* validBase(base, info.generation)
    yield* state.synced.close
    yield* Ref.set(state.syncedPrefix, undefined)
    yield* Files.remove(state.paths.syncedNext)
    yield* Files.writeNew(state.paths.syncedNext, base)
    const at = { generation: info.generation, frame: 0 }
    // Draft is no copy of the new position, whatever it was a copy of: every page of its file, or of the
    // new base, may differ, so the next copy step writes them all.
    const pages = yield* Files.attempt(state.paths.draft, "cannot read", (fs) =>
      Math.max(PageCopy.headerPages(fs, state.paths.draft), PageCopy.headerPages(fs, state.paths.syncedNext)))
    yield* updateMetadata(state, (m) => {
      const { databaseId: _, draftBase: __, draftPages: ___, ...rest } = m
      return {
        ...rest,
        draftPages: DraftPages.unknown(at, pages),
        generation: info.generation,
        syncedFrame: 0,
        foldedFrame: 0,
        rollInProgress: true,
        ...(info.databaseId === undefined ? {} : { databaseId: info.databaseId }),
        ...(state.remote.url === undefined ? {} : { remoteUrl: state.remote.url })
      }
    })
    yield* finishRollFiles(state.paths)
    yield* updateMetadata(state, (m) => ({ ...m, rollInProgress: false }))
    yield* Effect.logInfo(`rebuilt the synced copy from generation ${info.generation} of the remote (${reason})`)
    if (state.options.observer) yield* state.options.observer.rebootstrapped(reason, before.generation, info.generation)
  }
)

/** `replaceSynced`, with Synced open again afterwards whatever happened (push and pull expect it open). */
export const rebootstrapSynced = (state: State, reason: RebootstrapReason) =>
  Effect.ensuring(replaceSynced(state, reason), Effect.ignore(state.synced.open))

/** Step a; a synced generation the remote no longer keeps (410) is followed by a re-bootstrap. */
export const pullFollowingRemote = <A>(
  state: State,
  pull: (state: State) => Effect.Effect<A, SyncError.SyncError>
): Effect.Effect<A, SyncError.SyncError> =>
  pull(state).pipe(
    Effect.catchIf(
      (error) => error._tag === "RemoteError" && error.reason === "GenerationGone",
      () => Effect.zipRight(rebootstrapSynced(state, "GenerationGone"), pull(state))
    )
  )
