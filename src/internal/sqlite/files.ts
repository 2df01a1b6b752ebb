/**
 * File operations on the client's SQLite copies: reading and extending a WAL while no connection is open,
 * cutting it back, materializing base + frames into a new file. Synchronous node:fs calls wrapped as
 * Effects; every failure is a StorageError naming the path.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as NodeFs from "node:fs"
import { type Service as FileService, current as currentFiles, fsyncDirectory } from "../../SyncFiles.js"
import { StorageError } from "../../SyncError.js"
import * as WalFrame from "../../WalFrame.js"
import * as WalIndex from "./walIndex.js"

/** @internal */
export const walPath = (db: string) => `${db}-wal`
/** @internal */
export const shmPath = (db: string) => `${db}-shm`

/** @internal */
export const attempt = <A>(path: string, message: string, f: (fs: FileService) => A): Effect.Effect<A, StorageError> =>
  Effect.flatMap(currentFiles, (fs) =>
    Effect.try({
      try: () => f(fs),
      catch: (cause) => new StorageError({ reason: "Files", message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}`, path, cause })
    }))

/** @internal */
export const exists = (path: string) => attempt(path, "cannot stat", (fs) => fs.existsSync(path))

/** @internal */
export const fileSize = (path: string): Effect.Effect<number, StorageError> =>
  attempt(path, "cannot stat", (fs) => (fs.existsSync(path) ? fs.sizeSync(path) : 0))

/** @internal */
export const remove = (path: string) => attempt(path, "cannot remove", (fs) => fs.removeSync(path))

/**
 * Removes the files of `path`'s directory whose names `matches` accepts, from one listing of it. Only for
 * files the caller's owner lock keeps anyone else from using. @internal
 */
export const removeInDirectory = (path: string, matches: (name: string) => boolean, what = "cannot remove files beside") =>
  attempt(path, what, (fs) => {
    const directory = dirnameOf(path)
    for (const name of NodeFs.readdirSync(directory)) {
      if (matches(name)) fs.removeSync(`${directory}/${name}`)
    }
  })

/** The prefix of the temp files an atomic write of `path` makes (`<path>.tmp-*`, see SyncMetadata's writes). @internal */
export const tempPrefix = (path: string) => `${path.slice(path.lastIndexOf("/") + 1)}.tmp-`

/**
 * Removes the temp files an atomic write of `path` leaves when the process dies before its rename. Only
 * their owner writes them, and the caller holds the database's owner lock, so none is in use. @internal
 */
export const removeTemps = (path: string) =>
  removeInDirectory(path, (name) => name.startsWith(tempPrefix(path)), "cannot remove the temp files of")

const fsyncFile = (fs: FileService, path: string) => {
  const fd = fs.openSync(path, "r+")
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** fsync of the file `path`, if it exists (one removed since needs none). @internal */
export const syncFile = (path: string) =>
  attempt(path, "cannot fsync", (fs) => {
    if (fs.existsSync(path)) fsyncFile(fs, path)
  })

/** @internal */
export const rename = (from: string, to: string) =>
  attempt(to, `cannot rename ${from}`, (fs) => {
    fs.renameSync(from, to)
    fsyncDirectory(fs, dirnameOf(to))
  })

/**
 * Renames without the directory's fsync, for a step inside the write gate: the caller makes it durable
 * afterwards (`syncDirectoryOf`) and recovery tells whether it happened.
 *
 * @internal
 */
export const renameUnsynced = (from: string, to: string) =>
  attempt(to, `cannot rename ${from}`, (fs) => fs.renameSync(from, to))

/** fsync of the directory holding `path`, so that renames and removals in it survive a crash. @internal */
export const syncDirectoryOf = (path: string) =>
  attempt(path, "cannot fsync the directory of", (fs) => fsyncDirectory(fs, dirnameOf(path)))

/** The directory of `path` (`.` for a bare name). @internal */
export const dirnameOf = (path: string) => {
  const i = path.lastIndexOf("/")
  return i <= 0 ? (i === 0 ? "/" : ".") : path.slice(0, i)
}

/** Writes `bytes` as a new file `path` and fsyncs it (not its directory). @internal */
export const writeFileSynced = (fs: FileService, path: string, bytes: Uint8Array) => {
  const fd = fs.openSync(path, "w")
  try {
    fs.writeSync(fd, bytes)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Writes `bytes` as a new file `path` and fsyncs it and its directory. @internal */
export const writeNew = (path: string, bytes: Uint8Array) =>
  attempt(path, "cannot write", (fs) => {
    writeFileSynced(fs, path, bytes)
    fsyncDirectory(fs, dirnameOf(path))
  })

/**
 * `opened` (which fills `fds`), then fsyncs of `fds`, all in flight at once and off the event loop when the
 * file service can (`fsyncAll`: the file system commits them together, and other fibers run meanwhile),
 * else one after the other; then closes every one of them whatever happened, a failure of `opened` too
 * (the first close that fails is the error when nothing failed before it). Uninterruptible: a descriptor is
 * never closed under its fsync.
 */
const syncAndClose = (
  fs: FileService,
  opened: Effect.Effect<void, StorageError>,
  fds: Array<number>,
  failed: (cause: unknown) => StorageError
) => {
  const synced = Effect.suspend(() =>
    fs.fsyncAll === undefined
      ? Effect.try({ try: () => fds.forEach((fd) => fs.fsyncSync(fd)), catch: failed })
      : Effect.tryPromise({ try: () => fs.fsyncAll!(fds), catch: failed })
  )
  const closed = Effect.try({
    try: () => {
      let error: unknown
      for (const fd of fds.splice(0)) {
        try {
          fs.closeSync(fd)
        } catch (e) {
          error ??= e
        }
      }
      if (error !== undefined) throw error
    },
    catch: failed
  })
  return Effect.matchCauseEffect(Effect.zipRight(opened, synced), {
    onFailure: (cause) => Effect.zipRight(Effect.ignore(closed), Effect.failCause(cause)),
    onSuccess: () => closed
  }).pipe(Effect.uninterruptible)
}

/**
 * fsyncs of the files `paths` that exist (one removed since needs none) and of the directories holding
 * `renamed` (so that renames and removals there survive a crash), all at once and off the event loop when
 * the file service can (`syncAndClose`). For a step that waits on several fsyncs whose order does not
 * matter, none of them holding up the thread. @internal
 */
export const syncAll = (paths: ReadonlyArray<string>, renamed: ReadonlyArray<string> = []) =>
  Effect.flatMap(currentFiles, (fs) => {
    const failed = (cause: unknown) =>
      new StorageError({ reason: "Files", message: `cannot fsync: ${cause instanceof Error ? cause.message : String(cause)}`, path: paths[0] ?? renamed[0], cause })
    const fds: Array<number> = []
    const opened = Effect.try({
      try: () => {
        for (const path of paths) if (fs.existsSync(path)) fds.push(fs.openSync(path, "r+"))
        for (const directory of new Set(renamed.map(dirnameOf))) fds.push(fs.openSync(directory, "r"))
      },
      catch: failed
    })
    return syncAndClose(fs, opened, fds, failed)
  })

/**
 * `writeNew` of several files in one directory, created in order: their fsyncs and the directory's (which
 * makes their names durable) all in flight at once when the file service can (`fsyncAll`: the file system
 * commits them together, and the fiber waits off the event loop, so other work runs meanwhile), else one
 * after the other. Uninterruptible: a descriptor is never closed under its fsync. @internal
 */
export const writeNewFiles = (paths: ReadonlyArray<string>, bytes: Uint8Array) =>
  Effect.flatMap(currentFiles, (fs) => {
    const failed = (cause: unknown) =>
      new StorageError({ reason: "Files", message: `cannot write: ${cause instanceof Error ? cause.message : String(cause)}`, path: paths[0], cause })
    const fds: Array<number> = []
    const written = Effect.try({
      try: () => {
        for (const path of paths) {
          fds.push(fs.openSync(path, "w"))
          fs.writeSync(fds[fds.length - 1], bytes)
        }
        // Opened once every name exists: its fsync covers them all.
        fds.push(fs.openSync(dirnameOf(paths[0]), "r"))
      },
      catch: failed
    })
    return syncAndClose(fs, written, fds, failed)
  })

/** The committed frames of `<db>-wal`, `None` when there is no valid WAL. @internal */
export const readWal = (db: string): Effect.Effect<Option.Option<WalFrame.Wal>, StorageError> =>
  attempt(walPath(db), "cannot read WAL", (fs) =>
    fs.existsSync(walPath(db)) ? WalFrame.parse(fs.readFileSync(walPath(db))) : Option.none()
  )

/**
 * Cuts `<db>-wal` to exactly `frames` frames and removes `<db>-shm` so the next open recovers from the
 * WAL. Only with every connection to `db` closed.
 *
 * @internal
 */
export const truncateWal = (db: string, frames: number) =>
  attempt(walPath(db), "cannot truncate WAL", (fs) => {
    const wal = walPath(db)
    if (fs.existsSync(wal) && fs.sizeSync(wal) > WalFrame.walSize(frames)) {
      fs.truncateSync(wal, frames === 0 ? 0 : WalFrame.walSize(frames))
      fsyncFile(fs, wal)
    }
    fs.removeSync(shmPath(db))
  })

/**
 * Appends frames after the first `current` frames of `<db>-wal` (whatever follows is cut off), with this
 * WAL's salts and checksums, fsyncs (unless `sync: false`: the caller fsyncs before anything durable counts
 * on the frames), and removes `<db>-shm`. Only with every connection to `db` closed.
 * Fails when the WAL holds fewer than `current` valid frames.
 *
 * @internal
 */
export const appendWal = (
  db: string,
  current: number,
  frames: ReadonlyArray<WalFrame.Frame>,
  prefix?: WalState | undefined,
  options?: { readonly sync?: boolean | undefined }
) =>
  Effect.flatMap(truncateWal(db, current), () =>
    attempt(walPath(db), "cannot append to WAL", (fs): WalState => {
      const path = walPath(db)
      let wal: WalFrame.Wal
      let fresh = false
      if (prefix !== undefined && prefix.frames === current && current > 0) {
        // The running checksum at `current` is known: no need to read the frames before it.
        wal = { header: prefix.header, frames: [], checksum: prefix.checksum }
      } else {
        const parsed = fs.existsSync(path) ? WalFrame.parse(fs.readFileSync(path)) : Option.none()
        if (Option.isSome(parsed)) {
          wal = parsed.value
          if (wal.frames.length !== current) {
            throw new Error(`WAL holds ${wal.frames.length} committed frames, expected ${current}`)
          }
        } else if (current === 0) {
          fresh = true
          wal = WalFrame.make({
            salt1: (Math.random() * 0x100000000) >>> 0,
            salt2: (Math.random() * 0x100000000) >>> 0
          })
        } else {
          throw new Error(`no valid WAL but ${current} frames expected`)
        }
      }
      const appended = WalFrame.append(wal, frames)
      const fd = fs.openSync(path, fresh ? "w" : "r+")
      try {
        if (fresh) fs.writeSync(fd, WalFrame.encodeHeader(wal), 0, WalFrame.WAL_HEADER_SIZE, 0)
        fs.writeSync(fd, appended.bytes, 0, appended.bytes.byteLength, WalFrame.walSize(current))
        fs.ftruncateSync(fd, WalFrame.walSize(current + frames.length))
        if (options?.sync !== false) fs.fsyncSync(fd)
      } finally {
        fs.closeSync(fd)
      }
      fs.removeSync(shmPath(db))
      return { frames: current + frames.length, header: wal.header, checksum: appended.wal.checksum }
    }))

/**
 * Writes `base` with `frames` applied (newest copy of each page; cut to the last commit size) to the
 * new file `target`, fsynced: byte-identical to `WalFrame.applyFrames` and to a TRUNCATE checkpoint,
 * without holding the whole database in memory.
 *
 * @internal
 */
export const materialize = (basePath: string, frames: ReadonlyArray<WalFrame.Frame>, target: string) =>
  attempt(target, "cannot materialize", (fs) => {
    fs.removeSync(target)
    fs.copyFileSync(basePath, target)
    applyFramesToFile(fs, target, frames)
    fsyncDirectory(fs, dirnameOf(target))
  })

/**
 * Where a WAL stands after its first `frames` frames: enough to validate what follows without reading
 * (or checksumming) those frames again.
 *
 * @internal
 */
export interface WalState {
  readonly frames: number
  readonly header: WalFrame.WalHeader
  readonly checksum: readonly [number, number]
}

/** @internal */
export const stateOf = (wal: WalFrame.Wal): WalState => ({ frames: wal.frames.length, header: wal.header, checksum: wal.checksum })

/**
 * The state of `<db>-wal` after exactly `frames` frames (parsing only that prefix); fails when the WAL
 * holds fewer valid frames. `undefined` for 0 frames (SQLite writes a new header on its first frame).
 *
 * @internal
 */
export const prefixState = (db: string, frames: number) =>
  attempt(walPath(db), "cannot read WAL", (fs): WalState | undefined => {
    if (frames === 0) return undefined
    const fd = fs.openSync(walPath(db), "r")
    try {
      const bytes = new Uint8Array(WalFrame.walSize(frames))
      const read = fs.readSync(fd, bytes, 0, bytes.byteLength, 0)
      const wal = WalFrame.parse(bytes.subarray(0, read))
      if (Option.isNone(wal) || wal.value.frames.length !== frames) {
        throw new Error(`WAL does not hold ${frames} valid committed frames`)
      }
      return stateOf(wal.value)
    } finally {
      fs.closeSync(fd)
    }
  })

/**
 * The committed frames of `<db>-wal` after the first `prefix.frames`, validated (salts and cumulative
 * checksums) from the prefix's running checksum on: reads and checks only the tail, so the cost follows
 * the frames a replay just wrote, not the size of the WAL. Without a prefix the whole WAL is parsed.
 * Returns the frames and the state after them.
 *
 * @internal
 */
export const readWalTail = (db: string, prefix: WalState | undefined) =>
  attempt(walPath(db), "cannot read WAL", (fs): { readonly frames: ReadonlyArray<WalFrame.Frame>; readonly state: WalState | undefined } => {
    if (prefix === undefined) {
      const wal = fs.existsSync(walPath(db)) ? WalFrame.parse(fs.readFileSync(walPath(db))) : Option.none()
      return Option.match(wal, {
        onNone: () => ({ frames: [], state: undefined }),
        onSome: (w) => ({ frames: w.frames, state: stateOf(w) })
      })
    }
    const start = WalFrame.walSize(prefix.frames)
    const fd = fs.openSync(walPath(db), "r")
    let bytes: Uint8Array
    try {
      const size = fs.fsizeSync(fd)
      bytes = new Uint8Array(Math.max(0, size - start))
      if (bytes.byteLength > 0) fs.readSync(fd, bytes, 0, bytes.byteLength, start)
    } finally {
      fs.closeSync(fd)
    }
    const tail = WalFrame.parseFrames(bytes, prefix.header, prefix.checksum)
    return {
      frames: tail.frames,
      state: { frames: prefix.frames + tail.frames.length, header: prefix.header, checksum: tail.checksum }
    }
  })

/**
 * Where the tail of the WAL open as `fd` starts: `known`, or without it the WAL's beginning, its header
 * saying where the checksum starts (undefined: no valid header, so no frames).
 */
const tailStart = (fs: FileService, fd: number, known: WalState | undefined): WalState | undefined => {
  if (known !== undefined) return known
  const header = new Uint8Array(WalFrame.WAL_HEADER_SIZE)
  const wal = WalFrame.parse(header.subarray(0, fs.readSync(fd, header, 0, header.byteLength, 0)))
  return Option.isNone(wal) ? undefined : stateOf(wal.value)
}

/**
 * What {@link scanWalTail} finds, without reading the tail: the committed frames after `known` as SQLite's
 * wal-index has them (`mxFrame`), and the running checksum SQLite wrote into the last of them. For frames
 * SQLite itself just wrote through a connection that still has `db` open (a push's replay): what is sent is
 * then exactly what SQLite reads, and the tail is not read twice (checking it costs about a fifth of a large
 * push's client time). `undefined` when the index does not plainly describe this WAL (absent or being
 * written, other salts, a WAL file not exactly as long as its frames, a last frame that is not the commit
 * the index names or whose checksum is not the one the index keeps): the caller scans then.
 *
 * @internal
 */
export const walTailByIndex = (db: string, known: WalState | undefined) =>
  attempt(walPath(db), "cannot read WAL", (fs): { readonly count: number; readonly state: WalState | undefined } | undefined => {
    const path = walPath(db)
    if (!fs.existsSync(path)) return undefined
    const index = WalIndex.readIndexHeader(fs, db)
    if (index === undefined || index.backfilled !== 0) return undefined
    const fd = fs.openSync(path, "r")
    try {
      if (fs.fsizeSync(fd) !== WalFrame.walSize(index.frames)) return undefined
      const prefix = tailStart(fs, fd, known)
      if (prefix === undefined) return undefined
      const salts = new DataView(index.salt.buffer, index.salt.byteOffset, 8)
      if (salts.getUint32(0) !== prefix.header.salt1 || salts.getUint32(4) !== prefix.header.salt2) return undefined
      if (index.frames < prefix.frames) return undefined
      if (index.frames === prefix.frames) return { count: 0, state: undefined }
      const last = new Uint8Array(WalFrame.FRAME_HEADER_SIZE)
      if (fs.readSync(fd, last, 0, last.byteLength, WalFrame.walSize(index.frames - 1)) !== last.byteLength) return undefined
      const view = new DataView(last.buffer)
      const commitSize = view.getUint32(4)
      const checksum: [number, number] = [view.getUint32(16), view.getUint32(20)]
      if (
        view.getUint32(0) === 0 || commitSize === 0 || commitSize !== index.dbPages ||
        view.getUint32(8) !== prefix.header.salt1 || view.getUint32(12) !== prefix.header.salt2 ||
        checksum[0] !== index.frameChecksum[0] || checksum[1] !== index.frameChecksum[1]
      ) return undefined
      return { count: index.frames - prefix.frames, state: { frames: index.frames, header: prefix.header, checksum } }
    } finally {
      fs.closeSync(fd)
    }
  })

/**
 * Validates the frames of `<db>-wal` after the first `prefix.frames`, `chunk` frames at a time (bounded
 * memory, whatever the tail's length): the number of them up to the last commit frame, and the WAL's state
 * after that frame (undefined when none). Read them with {@link readWalFrames}. `scratch`, when given and
 * large enough, holds each chunk (see scratch.ts) instead of a buffer of its own.
 *
 * @internal
 */
export const scanWalTail = (db: string, known: WalState | undefined, chunk: number, scratch?: Uint8Array) =>
  attempt(walPath(db), "cannot read WAL", (fs): { readonly count: number; readonly state: WalState | undefined } => {
    if (!fs.existsSync(walPath(db))) return { count: 0, state: undefined }
    const fd = fs.openSync(walPath(db), "r")
    try {
      // without a known prefix, the tail is the whole WAL
      const prefix = tailStart(fs, fd, known)
      if (prefix === undefined) return { count: 0, state: undefined }
      const size = chunk * WalFrame.FRAME_SIZE
      const bytes = scratch !== undefined && scratch.byteLength >= size ? scratch.subarray(0, size) : new Uint8Array(size)
      let checksum = prefix.checksum
      let scanned = 0
      let count = 0
      let committedChecksum = prefix.checksum
      for (;;) {
        const read = fs.readSync(fd, bytes, 0, bytes.byteLength, WalFrame.walSize(prefix.frames + scanned))
        const scan = WalFrame.scanFrames(bytes.subarray(0, read), prefix.header, checksum)
        if (scan.committed > 0) {
          count = scanned + scan.committed
          committedChecksum = scan.committedChecksum
        }
        scanned += scan.valid
        checksum = scan.checksum
        if (scan.valid < chunk) break
      }
      return {
        count,
        state: count === 0 ? undefined : { frames: prefix.frames + count, header: prefix.header, checksum: committedChecksum }
      }
    } finally {
      fs.closeSync(fd)
    }
  })

/**
 * `count` frames of `<db>-wal` after the first `skip`, read by position, without validation: only for
 * frames this client already validated (the synced frames).
 *
 * @internal
 */
export const readWalFrames = (db: string, count: number, skip = 0) =>
  attempt(walPath(db), "cannot read WAL", (fs): ReadonlyArray<WalFrame.Frame> => {
    if (count === 0) return []
    const fd = fs.openSync(walPath(db), "r")
    const bytes = new Uint8Array(count * WalFrame.FRAME_SIZE)
    try {
      const read = fs.readSync(fd, bytes, 0, bytes.byteLength, WalFrame.walSize(skip))
      if (read !== bytes.byteLength) throw new Error(`WAL holds fewer than ${count} frames`)
    } finally {
      fs.closeSync(fd)
    }
    const view = new DataView(bytes.buffer)
    const frames: Array<WalFrame.Frame> = []
    for (let i = 0; i < count; i++) {
      const offset = i * WalFrame.FRAME_SIZE
      frames.push({
        pgno: view.getUint32(offset),
        commitSize: view.getUint32(offset + 4),
        page: bytes.subarray(offset + WalFrame.FRAME_HEADER_SIZE, offset + WalFrame.FRAME_SIZE)
      })
    }
    return frames
  })

/**
 * `count` frames of `<db>-wal` after the first `skip`, as {@link readWalFrames} reads them, into `into` (at
 * least `count` frames long) and laid out in wire form there: each frame's salts and checksums are zeroed
 * in place, so that `WalFrame.encodeWire` of the answer is a view of `into`, not a copy. The frames are
 * views of `into`: valid until it is written again.
 *
 * @internal
 */
export const readWireFrames = (db: string, count: number, skip: number, into: Uint8Array) =>
  attempt(walPath(db), "cannot read WAL", (fs): ReadonlyArray<WalFrame.Frame> => {
    if (count === 0) return []
    const bytes = into.subarray(0, count * WalFrame.FRAME_SIZE)
    const fd = fs.openSync(walPath(db), "r")
    try {
      const read = fs.readSync(fd, bytes, 0, bytes.byteLength, WalFrame.walSize(skip))
      if (read !== bytes.byteLength) throw new Error(`WAL holds fewer than ${count} frames`)
    } finally {
      fs.closeSync(fd)
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const frames: Array<WalFrame.Frame> = new Array(count)
    for (let i = 0; i < count; i++) {
      const offset = i * WalFrame.FRAME_SIZE
      bytes.fill(0, offset + 8, offset + WalFrame.FRAME_HEADER_SIZE)
      frames[i] = {
        pgno: view.getUint32(offset),
        commitSize: view.getUint32(offset + 4),
        page: bytes.subarray(offset + WalFrame.FRAME_HEADER_SIZE, offset + WalFrame.FRAME_SIZE)
      }
    }
    return frames
  })

/**
 * Applies committed frames onto the existing file `target` in place (newest copy of each page, cut or
 * extended to the last commit size) and fsyncs it. Runs of consecutive pages are written at once.
 *
 * @internal
 */
export const applyInPlace = (target: string, frames: ReadonlyArray<WalFrame.Frame>) =>
  attempt(target, "cannot apply frames", (fs) => applyFramesToFile(fs, target, frames))

const applyFramesToFile = (fs: FileService, target: string, frames: ReadonlyArray<WalFrame.Frame>) => {
  const committed = WalFrame.committedLength(frames)
  const fd = fs.openSync(target, "r+")
  try {
    if (committed > 0) writePages(fs, fd, frames.slice(0, committed))
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

const writePages = (fs: FileService, fd: number, committed: ReadonlyArray<WalFrame.Frame>) => {
  const pages = committed[committed.length - 1].commitSize
  const newest = new Map<number, WalFrame.Frame>()
  for (const frame of committed) newest.set(frame.pgno, frame)
  fs.ftruncateSync(fd, pages * WalFrame.PAGE_SIZE)
  const pgnos = [...newest.keys()].filter((p) => p <= pages).sort((a, b) => a - b)
  const RUN = 256
  for (let i = 0; i < pgnos.length;) {
    let j = i + 1
    while (j < pgnos.length && j - i < RUN && pgnos[j] === pgnos[j - 1] + 1) j++
    const run = Buffer.allocUnsafe((j - i) * WalFrame.PAGE_SIZE)
    for (let k = i; k < j; k++) run.set(newest.get(pgnos[k])!.page, (k - i) * WalFrame.PAGE_SIZE)
    fs.writeSync(fd, run, 0, run.byteLength, (pgnos[i] - 1) * WalFrame.PAGE_SIZE)
    i = j
  }
}
