/**
 * A local database belongs to one server database: the URL and the database identity recorded at
 * bootstrap must still hold, and the remote must still hold what this client knows it acknowledged.
 * Pure decisions first, then the one check a push or a pull runs before it pulls (`verify`).
 *
 * Why the frame at the synced position is compared, not only counted: a server restored from an older
 * backup that other replicas pushed to since has as many frames as this client knows, or more, but other
 * ones; appending its later frames to ours, or pushing ours on top of its, would corrupt both sides.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { RemoteMismatch } from "../../SyncError.js"
import type * as SyncError from "../../SyncError.js"
import type * as SyncRemote from "../../SyncRemote.js"
import * as WalFrame from "../../WalFrame.js"

/** Whether the open may go on with the remote's URL, and whether the metadata must record it. */
export const urlDecision = (
  recorded: string | undefined,
  actual: string | undefined,
  allowChange: boolean
): Either.Either<"keep" | "record", RemoteMismatch> => {
  if (actual === undefined || recorded === actual) return Either.right("keep")
  if (recorded === undefined || allowChange) return Either.right("record")
  return Either.left(
    new RemoteMismatch({
      reason: "UrlChanged",
      message: `this local database syncs with ${recorded}, not ${actual}; if that server database moved to ` +
        "this address, open it with allowUrlChange: true (command line: --allow-url-change)",
      expected: recorded,
      actual
    })
  )
}

/** Whether the remote's identity is the recorded one (`record`: none was recorded yet). */
export const identityDecision = (
  recorded: string | undefined,
  actual: string | undefined
): Either.Either<"keep" | "record", RemoteMismatch> => {
  if (actual === undefined || recorded === actual) return Either.right("keep")
  if (recorded === undefined) return Either.right("record")
  return Either.left(
    new RemoteMismatch({
      reason: "DatabaseReplaced",
      message: `the server database is not the one this local database was made from (identity ${actual}, ` +
        `recorded ${recorded}): it was wiped or replaced; nothing was changed. rebootstrap takes its current ` +
        "state and keeps the local changes not pushed yet",
      expected: recorded,
      actual
    })
  )
}

/** What the remote said about the frame at this client's synced position. */
export type HeadAnswer =
  | { readonly _tag: "Frame"; readonly same: boolean }
  | { readonly _tag: "Ends"; readonly maxFrameNo: number }
  | { readonly _tag: "Missing" }

/** Whether the remote still holds the synced position (generation, frame) this client knows it has. */
export const headDecision = (
  known: { readonly generation: number; readonly syncedFrame: number },
  remoteGeneration: number,
  answer: HeadAnswer | undefined
): Either.Either<void, RemoteMismatch> => {
  const behind = (what: string) =>
    Either.left(
      new RemoteMismatch({
        reason: "RemoteBehind",
        message: `the remote ${what}: it lost acknowledged data (restored from an older backup?); nothing was ` +
          "changed. rebootstrap takes its current state and keeps the local changes not pushed yet",
        expected: `generation ${known.generation}, frame ${known.syncedFrame}`
      })
    )
  if (remoteGeneration < known.generation) {
    return behind(`is at generation ${remoteGeneration}, this client already synced generation ${known.generation}`)
  }
  if (answer === undefined) return Either.right(undefined)
  switch (answer._tag) {
    case "Frame":
      return answer.same
        ? Either.right(undefined)
        : behind(`holds another frame ${known.syncedFrame} of generation ${known.generation} than the one it acknowledged`)
    case "Ends":
      return answer.maxFrameNo >= known.syncedFrame
        ? Either.right(undefined)
        : behind(`has fewer frames of generation ${known.generation} than the ${known.syncedFrame} this client synced`)
    case "Missing":
      return behind(`does not know generation ${known.generation}`)
  }
}

/**
 * A rewind answer to a push (`ok` or `conflict` below its start) is the server asking for frames again.
 * The one legitimate case asks for the last synced frame once more (the server telling a pusher that lost
 * its session from a newcomer); anything lower means the server lost frames it acknowledged, and resending
 * them would put them on top of whatever it holds now.
 */
export const rewindDecision = (start: number, maxFrameNo: number): Either.Either<void, RemoteMismatch> =>
  maxFrameNo >= start - 2
    ? Either.right(undefined)
    : Either.left(
      new RemoteMismatch({
        reason: "RemoteBehind",
        message: `the remote asks for frames from ${maxFrameNo + 1} again, this client synced ${start - 1}: ` +
          "it lost acknowledged frames; nothing was sent. rebootstrap takes its current state and keeps the " +
          "local changes not pushed yet",
        expected: `frame ${start - 1}`,
        actual: `frame ${maxFrameNo}`
      })
    )

/**
 * What `/info` alone says about the synced position when that is all a pull of the frame could say: the
 * frame is folded into Synced's file (no local bytes to compare it with, only whether the remote still
 * has it) and `/info` gives the length of that same generation. `undefined`: the frame must be pulled.
 */
export const headFromInfo = (
  known: { readonly generation: number; readonly syncedFrame: number; readonly foldedFrame?: number | undefined },
  info: SyncRemote.Info
): HeadAnswer | undefined =>
  known.syncedFrame <= (known.foldedFrame ?? 0) && info.generation === known.generation && info.maxFrameNo !== undefined
    ? { _tag: "Ends", maxFrameNo: info.maxFrameNo }
    : undefined

/**
 * Whether the check before a pull (`verify`) could be settled by the pull's own first answer, without
 * `/info`: the synced frame is folded into Synced's file (so only the identity and the head are to be
 * checked, no local frame compared) and an identity was recorded to compare the answer's with.
 */
export const settlesByAnswer = (known: {
  readonly syncedFrame: number
  readonly foldedFrame?: number | undefined
  readonly databaseId?: string | undefined
}): boolean => known.databaseId !== undefined && known.syncedFrame <= (known.foldedFrame ?? 0)

/**
 * Whether a pull's first answer settles that check on its own (`settlesByAnswer`): it names the recorded
 * database and says the synced generation ends exactly at the synced frame, which is all `verify` would
 * have learnt from `/info` (same identity, same generation, a head at the synced frame) and means nothing
 * is new. Any other answer (frames, a roll, a shorter or longer head, another or no identity) leaves the
 * check to `verify`, before the answer is used.
 */
export const settledByAnswer = (
  known: {
    readonly generation: number
    readonly syncedFrame: number
    readonly foldedFrame?: number | undefined
    readonly databaseId?: string | undefined
  },
  answer: SyncRemote.PullResult
): boolean =>
  settlesByAnswer(known) && answer._tag === "CheckpointNeeded" && answer.databaseId === known.databaseId &&
  answer.generation === known.generation && answer.maxFrameNo === known.syncedFrame

/**
 * The check before a push or a pull pulls: the identity and generation from `/info`, then the frame at
 * the synced position (pulled again and compared with the local one; a frame folded into Synced's file,
 * whose bytes are no longer at hand, is judged by `/info`'s length of its generation when it gives one).
 * Returns `/info`'s answer.
 */
export const verify = <E>(
  known: {
    readonly generation: number
    readonly syncedFrame: number
    readonly foldedFrame?: number | undefined
    readonly databaseId?: string | undefined
  },
  remote: SyncRemote.Service,
  localFrame: (frame: number) => Effect.Effect<WalFrame.Frame | undefined, E>
): Effect.Effect<SyncRemote.Info, SyncError.RemoteFailure | RemoteMismatch | E> =>
  Effect.gen(function*() {
    const answerOf = (result: SyncRemote.PullResult): Effect.Effect<HeadAnswer, E> =>
      result._tag === "CheckpointNeeded"
        // Nothing at the synced frame: the generation ends before it (whatever generation the answer names).
        ? Effect.succeed({ _tag: "Ends", maxFrameNo: result.generation === known.generation ? result.maxFrameNo : -1 })
        : Effect.map(localFrame(known.syncedFrame), (local) => ({
          _tag: "Frame",
          same: result.frames.length > 0 && (local === undefined || WalFrame.equals(local, result.frames[0]))
        }))
    const pullAt = Effect.either(
      remote.pull(known.generation, known.syncedFrame, known.syncedFrame + 1).pipe(
        Effect.catchIf(
          (error): error is SyncError.RemoteError => error._tag === "RemoteError" && error.reason === "NotFound",
          () => Effect.succeed("Missing" as const)
        )
      )
    )
    // Both questions at once (one round trip); `/info`'s answer is judged first, whatever the pull got. A
    // folded frame is not asked for unless `/info` cannot tell.
    const folded = known.syncedFrame <= (known.foldedFrame ?? 0)
    const [info, early] = yield* Effect.all([
      remote.info,
      known.syncedFrame === 0 || folded ? Effect.succeed(undefined) : pullAt
    ], { concurrency: 2 })
    yield* identityDecision(known.databaseId, info.databaseId)
    yield* headDecision(known, info.generation, undefined)
    if (known.syncedFrame === 0) return info
    const fromInfo = headFromInfo(known, info)
    if (fromInfo !== undefined) {
      yield* headDecision(known, info.generation, fromInfo)
      return info
    }
    const result = yield* (early ?? (yield* pullAt))
    const answer: HeadAnswer = result === "Missing" ? { _tag: "Missing" } : yield* answerOf(result)
    yield* headDecision(known, info.generation, answer)
    return info
  })
