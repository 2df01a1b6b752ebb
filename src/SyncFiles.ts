/**
 * The file operations the client engine performs on its own files (Synced's and Draft's WAL, the copies it
 * materializes, the metadata file): opening, writing, fsyncing, renaming, truncating, removing. They all go
 * through this service so that tests can make any one of them fail (`FaultInjection.files`); SQLite's own
 * I/O (inside better-sqlite3) does not.
 *
 * The operations are synchronous, like node:fs's `*Sync` calls they stand for: the engine runs each
 * multi-step file change inside one `Effect.try`.
 *
 * The engine uses the service in the context it is built in (e.g. `Layer.provide(SyncFiles.layer)` under a
 * `SyncDatabase` layer) for opening and for every later push, pull and sync; without one, that of the
 * context each operation runs in, else `node` (plain node:fs).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Fs from "node:fs"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly openSync: (path: string, flags: "r" | "r+" | "w") => number
  readonly closeSync: (fd: number) => void
  readonly writeSync: (fd: number, bytes: Uint8Array, offset?: number, length?: number, position?: number) => number
  readonly readSync: (fd: number, bytes: Uint8Array, offset: number, length: number, position: number) => number
  readonly fsyncSync: (fd: number) => void
  readonly ftruncateSync: (fd: number, length: number) => void
  readonly truncateSync: (path: string, length: number) => void
  readonly renameSync: (from: string, to: string) => void
  /** Removes a file; absent is fine. */
  readonly removeSync: (path: string) => void
  readonly copyFileSync: (from: string, to: string) => void
  readonly readFileSync: (path: string) => Uint8Array
  readonly existsSync: (path: string) => boolean
  readonly sizeSync: (path: string) => number
  readonly fsizeSync: (fd: number) => number
  /**
   * fsyncs every descriptor, all of them in flight at once and off the calling thread (the file system
   * commits them together, and the caller's thread does other work meanwhile). Optional: without it they
   * are fsynced one after the other with `fsyncSync`. Settles once every fsync has; rejects if any failed.
   */
  readonly fsyncAll?: ((fds: ReadonlyArray<number>) => Promise<void>) | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class SyncFiles extends Context.Tag("effect-sqlite-sync/SyncFiles")<SyncFiles, Service>() {}

/**
 * node:fs.
 *
 * @since 0.1.0
 * @category constructors
 */
export const node: Service = {
  openSync: (path, flags) => Fs.openSync(path, flags),
  closeSync: (fd) => Fs.closeSync(fd),
  writeSync: (fd, bytes, offset, length, position) =>
    Fs.writeSync(fd, bytes, offset ?? 0, length ?? bytes.byteLength - (offset ?? 0), position ?? null),
  readSync: (fd, bytes, offset, length, position) => Fs.readSync(fd, bytes, offset, length, position),
  fsyncSync: (fd) => Fs.fsyncSync(fd),
  ftruncateSync: (fd, length) => Fs.ftruncateSync(fd, length),
  truncateSync: (path, length) => Fs.truncateSync(path, length),
  renameSync: (from, to) => Fs.renameSync(from, to),
  removeSync: (path) => Fs.rmSync(path, { force: true }),
  copyFileSync: (from, to) => Fs.copyFileSync(from, to),
  readFileSync: (path) => Fs.readFileSync(path),
  existsSync: (path) => Fs.existsSync(path),
  sizeSync: (path) => Fs.statSync(path).size,
  fsizeSync: (fd) => Fs.fstatSync(fd).size,
  fsyncAll: (fds) =>
    Promise.allSettled(fds.map((fd) => new Promise<void>((resolve, reject) => Fs.fsync(fd, (error) => error === null ? resolve() : reject(error)))))
      .then((results) => {
        const failed = results.find((r) => r.status === "rejected")
        if (failed !== undefined) throw failed.reason
      })
}

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<SyncFiles> = Layer.succeed(SyncFiles, node)

/**
 * The service in the context, `node` without one.
 *
 * @since 0.1.0
 * @category accessors
 */
export const current: Effect.Effect<Service> = Effect.map(
  Effect.serviceOption(SyncFiles),
  Option.getOrElse(() => node)
)

/**
 * fsync of a directory, so that a rename or unlink in it survives a crash.
 *
 * @since 0.1.0
 * @category utils
 */
export const fsyncDirectory = (fs: Service, directory: string): void => {
  const fd = fs.openSync(directory, "r")
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}
