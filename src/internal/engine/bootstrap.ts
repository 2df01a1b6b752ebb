/**
 * Opening a brand-new local database: Synced = the remote's head snapshot (or current base), Draft = a
 * copy of it, then the metadata, whose presence says the bootstrap completed.
 *
 * Durable steps: both copies written and fsynced with their directory, and the metadata written beside its
 * place and fsynced, all at once (`bootstrap:copiesWritten`); then the metadata renamed into place (its
 * directory's fsync in flight while the open opens the copies; the open returns once it is done).
 * Killed before the metadata, the next open finds copies that were never opened and no metadata
 * (`unfinished`) and bootstraps again; after it, the open is an ordinary one.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Crypto from "node:crypto"
import * as SyncError from "../../SyncError.js"
import * as SyncFiles from "../../SyncFiles.js"
import type * as SyncMetadata from "../../SyncMetadata.js"
import type * as SyncRemote from "../../SyncRemote.js"
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

/** The remote's failures that mean it does not serve the head snapshot (a server without the extension). */
const noSnapshot = (error: SyncError.RemoteFailure) =>
  error._tag === "RemoteError" && (error.reason === "NotFound" || error.reason === "Refused" || error.reason === "Protocol")

/** The head snapshot, `undefined` from a remote that does not serve it. */
export type EarlySnapshot = Effect.Effect<SyncRemote.RemoteSnapshot | undefined, SyncError.RemoteFailure>

/** The head snapshot asked for, `undefined` from a remote without the extension. */
export const headSnapshot = (remote: SyncRemote.Service): EarlySnapshot =>
  remote.snapshot.pipe(Effect.catchIf(noSnapshot, () => Effect.succeed(undefined)))

/**
 * What the bootstrap starts from: the head snapshot, asked for at once (one request: it names its
 * generation, frame and database identity), when the app wants the head; else, or from a remote that does
 * not serve it, `/info` and the current generation's base (frame 0; the pull on open follows). `early`: the
 * head snapshot's answer, asked for before the open took the owner lock (`Engine.askEarly`).
 */
const download = (opening: Opening, early: EarlySnapshot | undefined) =>
  Effect.gen(function*() {
    const { remote } = opening
    const snapshot = (opening.options.bootstrap ?? "head") === "head" ? yield* (early ?? headSnapshot(remote)) : undefined
    if (snapshot !== undefined) {
      return { generation: snapshot.generation, frame: snapshot.frameNo, bytes: snapshot.bytes, databaseId: snapshot.databaseId, head: true }
    }
    const info = yield* remote.info
    const bytes = yield* remote.export(info.generation)
    return { generation: info.generation, frame: 0, bytes, databaseId: info.databaseId, head: false }
  })

/**
 * Whether the local files without metadata are what a bootstrap interrupted before its metadata write
 * leaves: neither copy was ever opened (SQLite creates a copy's `-wal` when it opens it, and the engine
 * opens them only once the metadata exists) and Draft is absent or byte-identical to Synced. Starting over
 * from them loses nothing: Draft holds nothing Synced does not, and Synced's file holds only the remote's.
 * Anything else may hold local changes not pushed yet (`metadataLost`).
 */
export const unfinished = (paths: Paths) =>
  Files.attempt(paths.info, "cannot read", (fs) => {
    const opened = [paths.draft, paths.synced].some((f) => fs.existsSync(Files.walPath(f)) || fs.existsSync(Files.shmPath(f)))
    if (opened || !fs.existsSync(paths.synced)) return false
    if (!fs.existsSync(paths.draft)) return true
    return Buffer.compare(fs.readFileSync(paths.draft), fs.readFileSync(paths.synced)) === 0
  })

/**
 * Every file a bootstrap starts without (`allFiles`, and the temp files of a metadata write cut short,
 * `<path>-info.tmp-*`): one listing of their directory, and each that is there removed.
 */
const removeLeftovers = (paths: Paths) => {
  const names = new Set(allFiles(paths).map((file) => file.slice(file.lastIndexOf("/") + 1)))
  const temps = Files.tempPrefix(paths.info)
  return Files.removeInDirectory(
    paths.info,
    (name) => names.has(name) || name.startsWith(temps),
    "cannot remove the leftovers of"
  )
}

/**
 * fsync of the directory holding `path`, started now off the event loop when the file service can
 * (`fsyncAll`), else done now; the effect returned waits for it and closes the descriptor (once, however
 * often it runs: the open runs it when it returns and when it fails). The file operations happen in the
 * caller's order: the open and the fsync's start now, the close when the caller waits.
 */
const syncDirectoryInFlight = (path: string) =>
  Effect.flatMap(SyncFiles.current, (fs): Effect.Effect<Effect.Effect<void, SyncError.StorageError>, SyncError.StorageError> => {
    if (fs.fsyncAll === undefined) return Effect.as(Files.syncDirectoryOf(path), Effect.void)
    const directory = Files.dirnameOf(path)
    const failed = (cause: unknown) =>
      new SyncError.StorageError({ reason: "Files", message: `cannot fsync the directory of ${path}`, path, cause })
    return Effect.try({
      try: () => {
        const fd = fs.openSync(directory, "r")
        let fsynced: Promise<unknown>
        try {
          // Settles with the failure, never rejects: the wait below reads it.
          fsynced = fs.fsyncAll!([fd]).then(() => undefined, (cause) => cause ?? new Error("fsync failed"))
        } catch (error) {
          fs.closeSync(fd)
          throw error
        }
        let closed = false
        return Effect.flatMap(Effect.promise(() => fsynced), (cause) =>
          Effect.suspend(() => {
            if (closed) return Effect.void
            closed = true
            let error = cause
            try {
              fs.closeSync(fd)
            } catch (e) {
              error ??= e
            }
            return error === undefined ? Effect.void : Effect.fail(failed(error))
          })).pipe(Effect.uninterruptible)
      },
      catch: failed
    })
  })

/**
 * A brand-new local database: Synced = the remote's head snapshot or current base, Draft = a copy of it,
 * then the metadata, whose presence says the bootstrap completed.
 */
export const bootstrap = Effect.fn("Engine.bootstrap")(
  function*(opening: Opening, early?: EarlySnapshot) {
    const { paths, remote } = opening
    yield* removeLeftovers(paths)
    const { bytes: base, databaseId, frame, generation, head } = yield* download(opening, early)
    const at = { generation, frame }
    yield* received(opening, 0, base.byteLength)
    const invalid = (e: SyncError.RemoteError) =>
      new SyncError.BootstrapError({ reason: "InvalidBase", message: e.message, cause: e })
    // Its header before anything is written.
    yield* Effect.mapError(Validate.base(base, generation), invalid)
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
      ...(head ? { lastPullAt: Date.now() } : {}),
      ...(remote.url === undefined ? {} : { remoteUrl: remote.url }),
      ...(databaseId === undefined ? {} : { databaseId })
    }
    // Synced first, so that a crash leaves Synced alone or both (`unfinished` tells them from a database
    // whose metadata was lost); their fsyncs and their directory's together. The metadata is written
    // beside its place and fsynced at the same time, and SQLite checks the pages while the fsyncs
    // are in flight (a base it refuses is removed with the copies). The metadata is put in place last, once
    // the copies are durable: the metadata file is what says a bootstrap completed.
    // The rename's own durability (the directory's fsync) is in flight while the open goes on to open the
    // copies: `renameDurable`, which the open awaits before it returns. A kill meanwhile loses nothing (the
    // rename is done); a journaling file system commits the copies' WALs, created after the rename, in a
    // later transaction than it, so no crash finds them without the metadata.
    const renameDurable = yield* Effect.scoped(Effect.gen(function*() {
      const [, prepared] = yield* Effect.all([
        Files.writeNewFiles([paths.synced, paths.draft], base),
        // Dropped unless put in place.
        Effect.acquireRelease(
          opening.metadataStore.prepare(metadata, { renameDurable: false }),
          (p, exit) => Exit.isFailure(exit) ? p.discard : Effect.void
        ),
        Effect.mapError(Validate.databaseBytes(base, `the base of generation ${generation}`), invalid)
      ], { concurrency: 3 })
      if (opening.options.onStep) yield* opening.options.onStep("bootstrap:copiesWritten")
      yield* prepared.commit
      return yield* syncDirectoryInFlight(paths.info)
    }))
    return { metadata, renameDurable }
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
