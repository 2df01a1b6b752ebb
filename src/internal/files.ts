/**
 * File operations on the client's SQLite copies: reading and extending a WAL while no connection is open,
 * cutting it back, materializing base + frames into a new file. Synchronous node:fs calls wrapped as
 * Effects; every failure is a StorageError naming the path.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import { fsyncDirectorySync } from "../SyncMetadata.js"
import { StorageError } from "../SyncError.js"
import * as WalFrame from "../WalFrame.js"

/** @internal */
export const walPath = (db: string) => `${db}-wal`
/** @internal */
export const shmPath = (db: string) => `${db}-shm`

/** @internal */
export const attempt = <A>(path: string, message: string, f: () => A): Effect.Effect<A, StorageError> =>
  Effect.try({ try: f, catch: (cause) => new StorageError({ reason: "Files", message: `${message}: ${String(cause)}`, path, cause }) })

/** @internal */
export const exists = (path: string) => attempt(path, "cannot stat", () => Fs.existsSync(path))

/** @internal */
export const fileSize = (path: string): Effect.Effect<number, StorageError> =>
  attempt(path, "cannot stat", () => (Fs.existsSync(path) ? Fs.statSync(path).size : 0))

/** @internal */
export const remove = (path: string) => attempt(path, "cannot remove", () => Fs.rmSync(path, { force: true }))

const fsyncFile = (path: string) => {
  const fd = Fs.openSync(path, "r+")
  try {
    Fs.fsyncSync(fd)
  } finally {
    Fs.closeSync(fd)
  }
}

/** @internal */
export const rename = (from: string, to: string) =>
  attempt(to, `cannot rename ${from}`, () => {
    Fs.renameSync(from, to)
    fsyncDirectorySync(dirnameOf(to))
  })

const dirnameOf = (path: string) => {
  const i = path.lastIndexOf("/")
  return i <= 0 ? (i === 0 ? "/" : ".") : path.slice(0, i)
}

/** Writes `bytes` as a new file `path` and fsyncs it and its directory. @internal */
export const writeNew = (path: string, bytes: Uint8Array) =>
  attempt(path, "cannot write", () => {
    const fd = Fs.openSync(path, "w")
    try {
      Fs.writeSync(fd, bytes)
      Fs.fsyncSync(fd)
    } finally {
      Fs.closeSync(fd)
    }
    fsyncDirectorySync(dirnameOf(path))
  })

/** The committed frames of `<db>-wal`, `None` when there is no valid WAL. @internal */
export const readWal = (db: string): Effect.Effect<Option.Option<WalFrame.Wal>, StorageError> =>
  attempt(walPath(db), "cannot read WAL", () =>
    Fs.existsSync(walPath(db)) ? WalFrame.parse(Fs.readFileSync(walPath(db))) : Option.none()
  )

/**
 * Cuts `<db>-wal` to exactly `frames` frames and removes `<db>-shm` so the next open recovers from the
 * WAL. Only with every connection to `db` closed.
 *
 * @internal
 */
export const truncateWal = (db: string, frames: number) =>
  attempt(walPath(db), "cannot truncate WAL", () => {
    const wal = walPath(db)
    if (Fs.existsSync(wal) && Fs.statSync(wal).size > WalFrame.walSize(frames)) {
      Fs.truncateSync(wal, frames === 0 ? 0 : WalFrame.walSize(frames))
      fsyncFile(wal)
    }
    Fs.rmSync(shmPath(db), { force: true })
  })

/**
 * Appends frames after the first `current` frames of `<db>-wal` (whatever follows is cut off), with this
 * WAL's salts and checksums, fsyncs, and removes `<db>-shm`. Only with every connection to `db` closed.
 * Fails when the WAL holds fewer than `current` valid frames.
 *
 * @internal
 */
export const appendWal = (db: string, current: number, frames: ReadonlyArray<WalFrame.Frame>) =>
  Effect.flatMap(truncateWal(db, current), () =>
    attempt(walPath(db), "cannot append to WAL", () => {
      const path = walPath(db)
      const parsed = Fs.existsSync(path) ? WalFrame.parse(Fs.readFileSync(path)) : Option.none()
      let wal: WalFrame.Wal
      if (Option.isSome(parsed)) {
        wal = parsed.value
      } else if (current === 0) {
        wal = WalFrame.make({
          salt1: (Math.random() * 0x100000000) >>> 0,
          salt2: (Math.random() * 0x100000000) >>> 0
        })
      } else {
        throw new Error(`no valid WAL but ${current} frames expected`)
      }
      if (wal.frames.length !== current) {
        throw new Error(`WAL holds ${wal.frames.length} committed frames, expected ${current}`)
      }
      const appended = WalFrame.append(wal, frames)
      const fd = Fs.openSync(path, Option.isSome(parsed) ? "r+" : "w")
      try {
        if (Option.isNone(parsed)) Fs.writeSync(fd, WalFrame.encodeHeader(wal), 0, WalFrame.WAL_HEADER_SIZE, 0)
        Fs.writeSync(fd, appended.bytes, 0, appended.bytes.byteLength, WalFrame.walSize(current))
        Fs.ftruncateSync(fd, WalFrame.walSize(current + frames.length))
        Fs.fsyncSync(fd)
      } finally {
        Fs.closeSync(fd)
      }
      Fs.rmSync(shmPath(db), { force: true })
      return appended.wal.frames.length
    }))

/**
 * Writes `base` with `frames` applied (newest copy of each page; cut to the last commit size) to the
 * new file `target`, fsynced: byte-identical to `WalFrame.applyFrames` and to a TRUNCATE checkpoint,
 * without holding the whole database in memory.
 *
 * @internal
 */
export const materialize = (basePath: string, frames: ReadonlyArray<WalFrame.Frame>, target: string) =>
  attempt(target, "cannot materialize", () => {
    Fs.rmSync(target, { force: true })
    Fs.copyFileSync(basePath, target)
    const committed = WalFrame.committedLength(frames)
    const fd = Fs.openSync(target, "r+")
    try {
      if (committed > 0) {
        const pages = frames[committed - 1].commitSize
        const newest = new Map<number, WalFrame.Frame>()
        for (let i = 0; i < committed; i++) newest.set(frames[i].pgno, frames[i])
        Fs.ftruncateSync(fd, pages * WalFrame.PAGE_SIZE)
        for (const [pgno, frame] of newest) {
          if (pgno <= pages) Fs.writeSync(fd, frame.page, 0, WalFrame.PAGE_SIZE, (pgno - 1) * WalFrame.PAGE_SIZE)
        }
      }
      Fs.fsyncSync(fd)
    } finally {
      Fs.closeSync(fd)
    }
    fsyncDirectorySync(dirnameOf(target))
  })
