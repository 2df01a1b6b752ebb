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

/**
 * The length an SQLite file's header gives (page size × in-header page count), when that count is valid
 * (its change counter matches "version-valid-for", sqlite.org/fileformat.html); otherwise undefined.
 *
 * @internal
 */
export const baseLength = (file: Uint8Array): number | undefined => {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength)
  const raw = view.getUint16(16)
  const pageSize = raw === 1 ? 65536 : raw
  const pages = view.getUint32(28)
  return pages > 0 && view.getUint32(24) === view.getUint32(92) ? pages * pageSize : undefined
}

/** Every file of both copies, with their WALs and the files of unfinished copies and rolls. */
export const allFiles = (paths: Paths) => [
  paths.draft, Files.walPath(paths.draft), Files.shmPath(paths.draft), paths.draftNew, paths.draftWalNext,
  paths.synced, Files.walPath(paths.synced), Files.shmPath(paths.synced), paths.syncedNext, paths.syncedWalNext
]

/** Why a base the remote sent cannot be a database, if it cannot. */
const invalidBase = (generation: number, base: Uint8Array): SyncError.BootstrapError | undefined => {
  if (base.byteLength < 100 || new TextDecoder().decode(base.subarray(0, 15)) !== "SQLite format 3") {
    return new SyncError.BootstrapError({
      reason: "InvalidBase",
      message: `the base of generation ${generation} (${base.byteLength} bytes) is not an SQLite database`
    })
  }
  // A base cut short (whole pages, so the transport did not notice) would be written and its metadata
  // with it: every later open would fail on a malformed Synced. Its header says how long it is.
  const expectedBytes = baseLength(base)
  if (expectedBytes !== undefined && expectedBytes !== base.byteLength) {
    return new SyncError.BootstrapError({
      reason: "InvalidBase",
      message: `the base of generation ${generation} has ${base.byteLength} bytes, its header says ${expectedBytes}`
    })
  }
  return undefined
}

/** A brand-new local database: Synced = the remote's current base, Draft = a copy of it. */
export const bootstrap = Effect.fn("Engine.bootstrap")(
  function*(opening: Opening) {
    const { paths, remote } = opening
    for (const file of allFiles(paths)) yield* Files.remove(file)
    const { generation } = yield* remote.info
    const base = yield* remote.export(generation)
    yield* received(opening, 0, base.byteLength)
    const invalid = invalidBase(generation, base)
    if (invalid !== undefined) return yield* invalid
    yield* Files.writeNew(paths.synced, base)
    yield* Files.writeNew(paths.draft, base)
    const at = { generation, frame: 0 }
    const metadata: SyncMetadata.Metadata = {
      version: 1,
      clientId: `${opening.options.clientName ?? "client"}-${Crypto.randomUUID()}`,
      generation,
      syncedFrame: 0,
      foldedFrame: 0,
      lastPushedChangeId: 0,
      activeCopy: "draft",
      copyInProgress: false,
      rollInProgress: false,
      draftBase: at,
      draftPages: DraftPages.fresh(at)
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
