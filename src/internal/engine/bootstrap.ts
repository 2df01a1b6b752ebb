/**
 * Opening a brand-new local database: Synced = the remote's current base, Draft = a copy of it, then the
 * metadata, whose presence says the bootstrap completed.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Crypto from "node:crypto"
import * as SyncError from "../../SyncError.js"
import type * as SyncMetadata from "../../SyncMetadata.js"
import * as Files from "../sqlite/files.js"
import * as DraftPages from "./draftPages.js"
import { type Opening, type Paths, received } from "./state.js"
import * as Validate from "./validate.js"

/** Every file of both copies, with their WALs and the files of unfinished copies and rolls. */
export const allFiles = (paths: Paths) => [
  paths.draft, Files.walPath(paths.draft), Files.shmPath(paths.draft), paths.draftNew, paths.draftWalNext,
  paths.synced, Files.walPath(paths.synced), Files.shmPath(paths.synced), paths.syncedNext, paths.syncedWalNext
]

/** A base from `/export`: its header, then SQLite's check of its pages (nothing is written before). */
export const validBase = (base: Uint8Array, generation: number) =>
  Effect.zipRight(Validate.base(base, generation), Validate.databaseBytes(base, `the base of generation ${generation}`))

/** A brand-new local database: Synced = the remote's head snapshot or current base, Draft = a copy of it. */
export const bootstrap = Effect.fn("Engine.bootstrap")(
  function*(opening: Opening) {
    const { paths, remote } = opening
    for (const file of allFiles(paths)) yield* Files.remove(file)
    const info = yield* remote.info
    const { databaseId } = info
    // The head as one file when the server offers it and the app wants the head: one database to download,
    // not a base plus the generation's history. Else the base (frame 0), and the pull on open follows.
    const snapshot = info.snapshot === true && (opening.options.bootstrap ?? "head") === "head"
      ? yield* remote.snapshot.pipe(
        // A server that announced the extension but no longer serves it: the base will do.
        Effect.catchIf((e) => e._tag === "RemoteError" && e.reason === "NotFound", () => Effect.succeed(undefined))
      )
      : undefined
    // The snapshot names its own generation (the server may have rolled since `/info`).
    const generation = snapshot?.generation ?? info.generation
    const at = { generation, frame: snapshot?.frameNo ?? 0 }
    const base = snapshot?.bytes ?? (yield* remote.export(generation))
    yield* received(opening, 0, base.byteLength)
    yield* validBase(base, generation).pipe(
      Effect.mapError((e) => new SyncError.BootstrapError({ reason: "InvalidBase", message: e.message, cause: e }))
    )
    yield* Files.writeNew(paths.synced, base)
    yield* Files.writeNew(paths.draft, base)
    const metadata: SyncMetadata.Metadata = {
      version: 1,
      clientId: `${opening.options.clientName ?? "client"}-${Crypto.randomUUID()}`,
      generation,
      syncedFrame: at.frame,
      foldedFrame: at.frame,
      lastPushedChangeId: 0,
      activeCopy: "draft",
      copyInProgress: false,
      rollInProgress: false,
      draftBase: at,
      draftPages: DraftPages.fresh(at),
      // The open that bootstraps holds the files from here (the engine records it only for later opens).
      inUse: true,
      // The head snapshot is the remote's state as a pull would bring it: no catch-up pull on open.
      ...(snapshot === undefined ? {} : { lastPullAt: Date.now() }),
      ...(remote.url === undefined ? {} : { remoteUrl: remote.url }),
      ...(databaseId === undefined ? {} : { databaseId })
    }
    // Written last: the metadata file is what says a bootstrap completed.
    yield* opening.metadataStore.write(metadata)
    return metadata
  },
  Effect.mapError((cause) =>
    cause._tag === "BootstrapError" ? cause : new SyncError.BootstrapError({
      reason: cause._tag === "StorageError" ? "Storage" : "Remote",
      message: `cannot create a local database from the remote: ${cause.message}`,
      cause
    })
  ),
  (effect, opening) => Effect.tapError(effect, () => Effect.forEach(allFiles(opening.paths), (f) => Effect.ignore(Files.remove(f))))
)
