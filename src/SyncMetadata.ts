/**
 * The client's `<path>-info` file: which generation and frame the synced copy holds, which change ids
 * reached the remote, which copy serves reads, and whether a copy or a generation roll is under way.
 * Schema-validated JSON, replaced atomically (temp file, fsync, rename, directory fsync).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as SyncFiles from "./SyncFiles.js"
import { StorageError } from "./SyncError.js"

/**
 * Where a copy stands on the remote's history: generation and frame number.
 *
 * @since 0.1.0
 * @category schemas
 */
export const Position = Schema.Struct({
  generation: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)),
  frame: Schema.Int.pipe(Schema.greaterThanOrEqualTo(0))
})

/**
 * @since 0.1.0
 * @category models
 */
export type Position = typeof Position.Type

/**
 * A WAL file as it stands: its length, its header's salts and its last frame's checksum. Any committed
 * write changes it (appends grow it; a restarted WAL has new salts).
 *
 * @since 0.1.0
 * @category schemas
 */
export const WalIdentity = Schema.Struct({
  bytes: Schema.Int.pipe(Schema.greaterThanOrEqualTo(0)),
  salt1: Schema.Number,
  salt2: Schema.Number,
  checksum1: Schema.Number,
  checksum2: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type WalIdentity = typeof WalIdentity.Type

const PageNumbers = Schema.Array(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)))

/**
 * What the client knows about how the draft copy's files differ from the synced copy, so that a pull
 * rewrites only those pages of the draft copy:
 * - the draft copy's database file equals the synced copy at `fileBase` except on `filePages`;
 * - the synced copy's database file equals itself at `fileBase` except on `syncedPages` and on the pages
 *   its WAL holds;
 * - with `copy`: the draft copy's WAL begins with a transaction of `copy.frames` frames after which the
 *   draft copy equals the synced copy at `copy.at` except on `copy.replayPages` (its pending changes).
 *
 * @since 0.1.0
 * @category schemas
 */
export const DraftPages = Schema.Struct({
  fileBase: Position,
  filePages: PageNumbers,
  syncedPages: PageNumbers,
  copy: Schema.optional(Schema.Struct({
    at: Position,
    frames: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)),
    replayPages: PageNumbers
  }))
})

/**
 * @since 0.1.0
 * @category models
 */
export type DraftPages = typeof DraftPages.Type

/**
 * @since 0.1.0
 * @category schemas
 */
export const Metadata = Schema.Struct({
  version: Schema.Literal(1),
  clientId: Schema.String.pipe(Schema.minLength(1)),
  /** Generation whose base is the synced copy's database file. */
  generation: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)),
  /** Frames of `generation` in the synced copy's WAL at rest (all of them the remote's). */
  syncedFrame: Schema.Int.pipe(Schema.greaterThanOrEqualTo(0)),
  /** Highest local change id known to be on the remote (its progress row for this client). */
  lastPushedChangeId: Schema.Int.pipe(Schema.greaterThanOrEqualTo(0)),
  /** Set while a push whose outcome is unknown is in flight; settled from the progress row by the next pull. */
  transferredChangeId: Schema.optional(Schema.Int),
  /** Which copy serves reads. "synced" only while the draft copy is being replaced. */
  activeCopy: Schema.Literal("draft", "synced"),
  /**
   * `<path>-draft-wal.next` is complete and replaces the draft copy's WAL (redone on open) if that WAL is
   * still `draftWalBeforeCopy`.
   */
  copyInProgress: Schema.Boolean,
  /**
   * The draft copy's WAL when the copy flagged by `copyInProgress` was prepared: on open, a WAL still equal
   * to it gets the copy, one that differs either has it (the fresh WAL is gone) or took a local write
   * since (the copy is dropped).
   */
  draftWalBeforeCopy: Schema.optional(WalIdentity),
  /** `<path>-synced.next` is the base of `generation` and must replace the synced copy (redone on open). */
  rollInProgress: Schema.Boolean,
  /** The synced position the draft copy was last copied from; a pull with nothing new skips the copy. */
  draftBase: Schema.optional(Position),
  /**
   * Frames of `generation` folded into the synced copy's database file (its WAL holds frames
   * `foldedFrame + 1..syncedFrame`). Absent: 0.
   */
  foldedFrame: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(0))),
  /** `<path>-synced-wal.next` holds the synced frames after `foldedFrame` and must replace the synced WAL (redone on open). */
  foldInProgress: Schema.optional(Schema.Boolean),
  /** Which pages of the draft copy can differ from the synced copy; absent: unknown (the next pull copies every page). */
  draftPages: Schema.optional(DraftPages),
  /** A fold of the draft copy's WAL is recorded in `draftPages` but may not have reached its file (redone on open). */
  draftFoldInProgress: Schema.optional(Schema.Boolean),
  lastPushAt: Schema.optional(Schema.Number),
  lastPullAt: Schema.optional(Schema.Number),
  /** The database URL this local database syncs with (recorded at bootstrap; changed only when moved). */
  remoteUrl: Schema.optional(Schema.String),
  /** The server database's identity (`database_id` of `/info`) recorded at bootstrap. */
  databaseId: Schema.optional(Schema.String),
  /**
   * True while a `SyncDatabase` has the files open; false after it closed them. Found true on open: the
   * last owner did not close (a crash), so the copies get SQLite's integrity check before use.
   */
  inUse: Schema.optional(Schema.Boolean)
})

/**
 * @since 0.1.0
 * @category models
 */
export type Metadata = typeof Metadata.Type

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** The stored metadata, `None` for a database that was never bootstrapped. */
  readonly read: Effect.Effect<Option.Option<Metadata>, StorageError>
  /**
   * Replaces the metadata durably. `{ renameDurable: false }`: the new record's contents are durable but
   * its replacing of the old one may be undone by a crash (the old record is found again), for a record
   * whose loss costs only work, like the one written on close; one directory fsync fewer.
   */
  readonly write: (metadata: Metadata, options?: WriteOptions) => Effect.Effect<void, StorageError>
  /**
   * `write` in two steps, for a caller with other work to do while the new record becomes durable: the
   * record written beside the current one with its contents durable (waiting off the calling thread when
   * the file service can), then `commit` replaces the current one with it (as `write` would). Until then
   * the current record stands; `discard` drops the new one.
   */
  readonly prepare: (metadata: Metadata, options?: WriteOptions) => Effect.Effect<Prepared, StorageError>
  /** Removes the metadata (a bootstrap that failed half-way). */
  readonly remove: Effect.Effect<void, StorageError>
}

/**
 * A record written and durable, not yet in place (`Service.prepare`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Prepared {
  readonly commit: Effect.Effect<void, StorageError>
  readonly discard: Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface WriteOptions {
  /** Whether the rename over the old record is made durable too (a directory fsync); default true. */
  readonly renameDurable?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class SyncMetadata extends Context.Tag("effect-sqlite-sync/SyncMetadata")<SyncMetadata, Service>() {}

const decode = Schema.decodeUnknownEither(Schema.parseJson(Metadata))
/**
 * `Metadata`'s encoded form is its type (no transformations), so writing is `JSON.stringify`: the schema's
 * encoder checks every element of the page lists on every write, 0.3 ms for a small record and tens of ms
 * for a large database's lists, on each step of every push and pull. Reads still decode with the schema.
 */
const encode = (metadata: Metadata): string => JSON.stringify(metadata)

const metadataError = (path: string) => (e: StorageError) =>
  new StorageError({ reason: "Metadata", message: e.message, path, cause: e.cause })

const storageError = (path: string, message: string) => (cause: unknown) =>
  new StorageError({ reason: "Metadata", message, path, cause })

/**
 * Writes `bytes` to `path` so that after a crash the file is either the old one or the new one:
 * temp file in the same directory, fsync, rename over, fsync the directory.
 *
 * @since 0.1.0
 * @category utils
 */
export const writeFileAtomic = (
  path: string,
  bytes: Uint8Array | string,
  options?: WriteOptions
): Effect.Effect<void, StorageError> =>
  Effect.flatMap(SyncFiles.current, (fs) =>
    Effect.try({
      try: () => {
        const temp = tempPath(path)
        const fd = fs.openSync(temp, "w")
        try {
          fs.writeSync(fd, typeof bytes === "string" ? Buffer.from(bytes) : bytes)
          fs.fsyncSync(fd)
        } finally {
          fs.closeSync(fd)
        }
        fs.renameSync(temp, path)
        if (options?.renameDurable !== false) SyncFiles.fsyncDirectory(fs, NodePath.dirname(path))
      },
      catch: (cause) => new StorageError({ reason: "Files", message: `cannot write ${path}`, path, cause })
    }))

const tempPath = (path: string) => `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`

/**
 * `writeFileAtomic` in two steps: the temp file written and fsynced (off the calling thread when the file
 * service can: other fibers run meanwhile), then `commit` renames it over `path` (and fsyncs the
 * directory unless `renameDurable: false`). A failure before the rename removes the temp file.
 *
 * @since 0.1.0
 * @category utils
 */
export const prepareFileAtomic = (
  path: string,
  bytes: Uint8Array | string,
  options?: WriteOptions
): Effect.Effect<Prepared, StorageError> =>
  Effect.flatMap(SyncFiles.current, (fs) => {
    const temp = tempPath(path)
    const failed = (cause: unknown) => new StorageError({ reason: "Files", message: `cannot write ${path}`, path, cause })
    const discard = Effect.sync(() => {
      try {
        fs.removeSync(temp)
      } catch {
        // A temp file left behind is only clutter: the record in place is untouched.
      }
    })
    const written = Effect.try({
      try: () => {
        const fd = fs.openSync(temp, "w")
        try {
          fs.writeSync(fd, typeof bytes === "string" ? Buffer.from(bytes) : bytes)
        } catch (error) {
          fs.closeSync(fd)
          throw error
        }
        return fd
      },
      catch: failed
    })
    const synced = (fd: number) =>
      (fs.fsyncAll === undefined
        ? Effect.try({ try: () => fs.fsyncSync(fd), catch: failed })
        : Effect.tryPromise({ try: () => fs.fsyncAll!([fd]), catch: failed })).pipe(
          Effect.matchCauseEffect({
            onFailure: (cause) => Effect.zipRight(Effect.ignore(Effect.try(() => fs.closeSync(fd))), Effect.failCause(cause)),
            onSuccess: () => Effect.try({ try: () => fs.closeSync(fd), catch: failed })
          })
        )
    const commit = Effect.zipRight(
      Effect.tapError(Effect.try({ try: () => fs.renameSync(temp, path), catch: failed }), () => discard),
      options?.renameDurable === false
        ? Effect.void
        : Effect.try({ try: () => SyncFiles.fsyncDirectory(fs, NodePath.dirname(path)), catch: failed })
    )
    return Effect.flatMap(written, synced).pipe(
      Effect.tapError(() => discard),
      Effect.as({ commit, discard } satisfies Prepared),
      // A descriptor is never closed under its fsync.
      Effect.uninterruptible
    )
  })

/**
 * fsync of a directory, so that a rename or unlink in it survives a crash.
 *
 * @since 0.1.0
 * @category utils
 */
export const fsyncDirectorySync = (directory: string): void => {
  const fd = Fs.openSync(directory, "r")
  try {
    Fs.fsyncSync(fd)
  } finally {
    Fs.closeSync(fd)
  }
}

/**
 * The metadata in the file `path` (the client uses `<path>-info`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (path: string): Service => ({
  read: Effect.flatMap(
    Effect.try({
      try: () => (Fs.existsSync(path) ? Option.some(Fs.readFileSync(path, "utf8")) : Option.none()),
      catch: storageError(path, `cannot read ${path}`)
    }),
    Option.match({
      onNone: () => Effect.succeed(Option.none()),
      onSome: (text) =>
        decode(text).pipe(
          Effect.mapBoth({
            onFailure: storageError(path, `${path} is not valid sync metadata`),
            onSuccess: Option.some
          })
        )
    })
  ),
  write: (metadata, options) => Effect.mapError(writeFileAtomic(path, encode(metadata), options), metadataError(path)),
  prepare: (metadata, options) =>
    prepareFileAtomic(path, encode(metadata), options).pipe(
      Effect.map((prepared) => ({ ...prepared, commit: Effect.mapError(prepared.commit, metadataError(path)) })),
      Effect.mapError(metadataError(path))
    ),
  remove: Effect.try({
    try: () => Fs.rmSync(path, { force: true }),
    catch: storageError(path, `cannot remove ${path}`)
  })
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (path: string): Layer.Layer<SyncMetadata> => Layer.succeed(SyncMetadata, make(path))

/**
 * Metadata that lives in memory only (tests of the engine's decisions without files).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<SyncMetadata> = Layer.effect(
  SyncMetadata,
  Effect.map(Ref.make(Option.none<Metadata>()), (ref) => ({
    read: Ref.get(ref),
    write: (metadata: Metadata) => Ref.set(ref, Option.some(metadata)),
    prepare: (metadata: Metadata) => Effect.succeed({ commit: Ref.set(ref, Option.some(metadata)), discard: Effect.void }),
    remove: Ref.set(ref, Option.none())
  }))
)
