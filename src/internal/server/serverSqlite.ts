/**
 * The embedded SQLite backend. Layout of `<directory>/<name>/`:
 *
 * - `store.sqlite`: the truth. Tables `generations` (number, last committed frame, dropped flag, start
 *   time) and `frames` (generation, frame number, page number, commit size, page). WAL journal with
 *   `synchronous=FULL`, so a commit's frames are durable when its INSERT transaction returns, which is
 *   before the push is answered. `acked_pending` lists frame numbers answered Ok while still
 *   pending (see `recordAck` in serverCore.ts), so the protection they need survives a restart, which
 *   loses every baton session. `locking_mode=EXCLUSIVE` keeps a second server process out: two
 *   writers would break the frame accounting silently.
 * - `base-<G>.db`: each kept generation's base file, so exports stream from disk. Written (temp file,
 *   fsync, rename, directory fsync) before the generation's row is inserted: a base file without a row is
 *   the leftover of a crash and is deleted on open, a row always has its file. Dropping deletes the rows'
 *   frames first and the files after. Stores written before bases were files keep them in a `bases` table;
 *   open moves them out (file first, row deleted after), so that too survives a crash at any point.
 * - `snapshot-<G>-<N>.db`: the last snapshot served (generation G at frame N), derived data; a newer one
 *   replaces it, and open deletes them all, so it needs no fsync.
 * - `head.db`: the current generation materialised (its base with every committed frame applied),
 *   used to check commits, and copied (by the kernel) as the next generation's base when a commit rolls
 *   while it is that commit's image. It is derived data: rebuilt from `store.sqlite` the first time the
 *   database is used after a start (written to a temp file, fsynced, renamed), so a crash at any point
 *   of a commit leaves nothing to repair.
 *
 * A commit is checked the way SQLite itself will read it: its pages are written over `head.db` as
 * SQLite's checkpoint of them would write them (the pages they replace read first), and a read-only
 * connection (on a worker thread, see checkWorker.ts) runs the check on the file. Meanwhile the frames
 * are inserted into `store.sqlite` in a transaction committed only on a passing verdict; a refused
 * commit's transaction is rolled back and the replaced pages are written back. Both end before the push
 * is answered. A commit whose database (before and after it) is at most `CHECK_HERE_MAX_BYTES` is
 * checked on the calling thread instead, on head.db read into memory with the frames applied (cheaper
 * than the worker's round trip, and than a connection to the file), and written over head.db once stored.
 */
import Database from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { StoreError } from "./storeError.js"
import { isDatabaseName } from "../../SyncProtocol.js"
import * as WalFrame from "../../WalFrame.js"
import type { Checker } from "./checkWorker.js"
import * as ServerBody from "./serverBody.js"
import type { Backend, DatabaseBackend, GenerationRecord } from "./serverCore.js"
import type { IntegrityCheck } from "./sqliteImage.js"
import * as ChangedTables from "./changedTables.js"
import * as serverMetrics from "./serverMetrics.js"
import { checkConnection, checkImage, fixedPlan, planOnImage } from "./sqliteImage.js"

const storage = (message: string) => (cause: unknown) => new StoreError({ reason: "Storage", message, cause })

const fsyncPath = (target: string) => {
  const fd = fs.openSync(target, "r")
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

const writeFileDurably = (target: string, bytes: Uint8Array) => {
  const temp = `${target}.tmp-${process.pid}`
  const fd = fs.openSync(temp, "w")
  try {
    fs.writeSync(fd, bytes)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(temp, target)
  fsyncPath(path.dirname(target))
}

const removeIfPresent = (file: string) => fs.rmSync(file, { force: true })

/** `removeIfPresent` for a file known not to be a directory, in one system call. */
const unlinkIfPresent = (file: string) => {
  try {
    fs.unlinkSync(file)
  } catch (error) {
    if (!isMissing(error)) throw error
  }
}

/** A durable copy of `source` as `target` (temp file, fsync, rename, directory fsync); the kernel copies the bytes. */
const copyFileDurably = (source: string, target: string) => {
  const temp = `${target}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`
  try {
    fs.copyFileSync(source, temp)
    fsyncPath(temp)
    fs.renameSync(temp, target)
  } catch (error) {
    removeIfPresent(temp)
    throw error
  }
  fsyncPath(path.dirname(target))
}

/** Pieces per `writev` (within the usual IOV_MAX of 1024). */
const WRITEV_PAGES = 512

/** Writes `pieces` one after another at `position`, whatever a short write leaves; answers the bytes written. */
const writeFully = (fd: number, pieces: ReadonlyArray<Uint8Array>, position: number): number => {
  const total = pieces.reduce((sum, piece) => sum + piece.byteLength, 0)
  let written = fs.writevSync(fd, pieces as Array<Uint8Array>, position)
  if (written === total) return total
  // A short write (rare on a regular file): the rest piece by piece.
  let at = 0
  for (const piece of pieces) {
    const start = Math.max(0, written - at)
    if (start < piece.byteLength) {
      let offset = start
      while (offset < piece.byteLength) {
        offset += fs.writeSync(fd, piece, offset, piece.byteLength - offset, position + at + offset)
      }
      written += piece.byteLength - start
    }
    at += piece.byteLength
  }
  return total
}

/** Reads the pages `pgnos` (ascending) of `fd`, a run of consecutive pages at a time. */
const readRuns = (fd: number, pgnos: ReadonlyArray<number>): Array<WalFrame.Frame> => {
  const pages: Array<WalFrame.Frame> = []
  for (let first = 0; first < pgnos.length;) {
    let last = first
    while (last + 1 < pgnos.length && pgnos[last + 1] === pgnos[last] + 1 && last + 1 - first < WRITEV_PAGES) last++
    const run = Buffer.allocUnsafe((last - first + 1) * WalFrame.PAGE_SIZE)
    let at = 0
    while (at < run.byteLength) {
      const read = fs.readSync(fd, run, at, run.byteLength - at, (pgnos[first] - 1) * WalFrame.PAGE_SIZE + at)
      if (read === 0) throw new Error(`head.db ended before page ${pgnos[first] + at / WalFrame.PAGE_SIZE}`)
      at += read
    }
    for (let i = first; i <= last; i++) {
      const offset = (i - first) * WalFrame.PAGE_SIZE
      pages.push({ pgno: pgnos[i], commitSize: 0, page: run.subarray(offset, offset + WalFrame.PAGE_SIZE) })
    }
    first = last + 1
  }
  return pages
}

/**
 * Writes each frame's page at its place in `fd`, in order (a later copy of a page lands over an earlier
 * one), a run of consecutive pages per `writev`.
 */
const writeRuns = (fd: number, frames: ReadonlyArray<WalFrame.Frame>) => {
  for (let first = 0; first < frames.length;) {
    let last = first
    while (
      last + 1 < frames.length && frames[last + 1].pgno === frames[last].pgno + 1 && last + 1 - first < WRITEV_PAGES
    ) last++
    writeFully(fd, frames.slice(first, last + 1).map((frame) => frame.page), (frames[first].pgno - 1) * WalFrame.PAGE_SIZE)
    first = last + 1
  }
}

/**
 * Writes whole transactions into a database file as SQLite's checkpoint of them would: each page at its
 * place, in frame order (the newest copy wins), the file cut or extended to the last commit's size.
 */
const writeCommit = (fd: number, frames: ReadonlyArray<WalFrame.Frame>) => {
  const pages = frames[frames.length - 1].commitSize
  fs.ftruncateSync(fd, pages * WalFrame.PAGE_SIZE)
  writeRuns(fd, frames.filter((frame) => frame.pgno <= pages))
}

/**
 * What `writeHead` replaced: head.db's size in pages before, and the pages it overwrote or cut off
 * (undefined: too many to keep), or `copy`, a copy of the whole file made before.
 */
interface HeadUndo {
  readonly pages: number
  readonly saved: ReadonlyArray<WalFrame.Frame> | undefined
  readonly copy?: string | undefined
}

/**
 * A commit that replaces at least 1/HEAD_UNDO_COPY_SHARE of head.db's pages keeps a copy of the whole
 * file (the kernel copies it, about 0.6 ms per MB) rather than reading those pages into memory (about
 * 4.6 ms per MB on a virtualized machine, where each fresh page of memory faults).
 */
const HEAD_UNDO_COPY_SHARE = 8

/**
 * The most pages a commit that shrinks the database may cut off head.db and still be undone in place
 * (16 MiB, read before the cut); a refused commit that cut more has head.db rebuilt from the store.
 */
const HEAD_UNDO_TAIL_MAX_PAGES = 4096

class GenerationGoneError extends Error {
  constructor(readonly generation: number) {
    super(`generation ${generation} is no longer kept`)
  }
}

const gone = (generation: number) =>
  new StoreError({ reason: "GenerationGone", message: `generation ${generation} is no longer kept` })

const SCHEMA = `
CREATE TABLE IF NOT EXISTS generations (
  generation INTEGER PRIMARY KEY,
  last_frame INTEGER NOT NULL,
  dropped INTEGER NOT NULL DEFAULT 0,
  started_at INTEGER
);
CREATE TABLE IF NOT EXISTS acked_pending (
  generation INTEGER NOT NULL,
  frame_no INTEGER NOT NULL,
  PRIMARY KEY (generation, frame_no)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frames (
  generation INTEGER NOT NULL,
  frame_no INTEGER NOT NULL,
  pgno INTEGER NOT NULL,
  commit_size INTEGER NOT NULL,
  page BLOB NOT NULL,
  PRIMARY KEY (generation, frame_no)
);
`

interface FrameRow {
  readonly pgno: number
  readonly commit_size: number
  readonly page: Buffer
}

const toFrame = (row: FrameRow): WalFrame.Frame => ({
  pgno: row.pgno,
  commitSize: row.commit_size,
  page: new Uint8Array(row.page.buffer, row.page.byteOffset, row.page.byteLength)
})

const BASE_FILE = /^base-([1-9][0-9]*)\.db$/
const SNAPSHOT_FILE = /^snapshot-([1-9][0-9]*)-([0-9]+)\.db$/

const isMissing = (error: unknown) => (error as { code?: unknown } | null)?.code === "ENOENT"

/**
 * Whether the process cannot create files in `directory` (permissions, a read-only mount). Such a
 * directory is served read-only.
 */
export const isReadOnlyDirectory = (directory: string): boolean => {
  const probe = path.join(directory, `.write-probe-${process.pid}-${crypto.randomBytes(4).toString("hex")}`)
  try {
    fs.closeSync(fs.openSync(probe, "wx"))
    fs.rmSync(probe, { force: true })
    return false
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") return true
    throw error
  }
}

const STORE_FILE = "store.sqlite"

/** The backstop of `store.sqlite`'s own checkpoint, in pages. */
const STORE_AUTOCHECKPOINT_PAGES = 16_384

/**
 * `store.sqlite`'s page cache, in KiB. A large commit dirties about 1.1 pages of the store per frame; with
 * the bundled SQLite's default (16 MiB) they all stay in the cache until COMMIT writes them, and the cache
 * is fresh memory again on the next large commit, a page fault per page (3000 frames: about 60 ms of
 * faults). A small cache spills them to the WAL as the transaction goes (while the check runs beside it),
 * reusing its pages: less CPU, and less left to write at COMMIT, before the answer. Reads of frames go
 * through the OS's cache either way.
 */
const STORE_CACHE_KIB = 1024

/** Frames stored since the last checkpoint of `store.sqlite` past which one is scheduled (about 8 MB of WAL). */
const STORE_CHECKPOINT_FRAMES = 1_000

/**
 * A database up to this size (the head, and the commit's size) is checked on the calling thread, on an
 * image in memory: its check (about 1 ms of CPU per MB) takes less than the worker's round trip, which on a busy machine waits for the worker to be scheduled
 * (a one-row push to a small database was answered in 7-17 ms this way, 25-130 ms through the worker, on
 * a 2-core machine at load 6).
 */
const CHECK_HERE_MAX_BYTES = 1024 * 1024

/** How long after a commit that checkpoint waits: the answer is on its way by then. */
const STORE_CHECKPOINT_DELAY_MS = 20

/**
 * `store.sqlite` of a directory this process cannot write, as a read-only in-memory copy. SQLite cannot
 * open a WAL-mode file there (its WAL index needs a writable directory), so the committed frames of a
 * WAL left by an unclean stop are applied to the copy here, and the copy is marked a rollback-journal
 * database, which SQLite reads from memory.
 */
const openReadOnlyCopy = (dir: string): Database.Database => {
  const file = path.join(dir, STORE_FILE)
  let image: Uint8Array = new Uint8Array(fs.readFileSync(file))
  const wal = fs.existsSync(`${file}-wal`) ? new Uint8Array(fs.readFileSync(`${file}-wal`)) : undefined
  if (wal !== undefined && wal.byteLength > 0) {
    const parsed = WalFrame.parse(wal)
    if (parsed._tag === "Some" && parsed.value.frames.length > 0) image = WalFrame.applyFrames(image, parsed.value.frames)
  }
  if (image.byteLength >= 100) {
    image[18] = 1
    image[19] = 1
  }
  return new Database(Buffer.from(image.buffer, image.byteOffset, image.byteLength), { readonly: true })
}

const NEW_ID = "INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', ?)"

const openDatabase = (
  directory: string,
  name: string,
  emptyBase: Uint8Array,
  integrityCheck: IntegrityCheck,
  checker: Checker | undefined,
  readOnly: boolean,
  cleanHeads: Set<string>
): DatabaseBackend => {
  const dir = path.join(directory, name)
  const basePath = (generation: number) => path.join(dir, `base-${generation}.db`)
  let store: Database.Database
  // A read-only directory written before bases were files still has them in the `bases` table.
  let legacyBases = false
  if (readOnly) {
    store = openReadOnlyCopy(dir)
    legacyBases = store.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'bases'").get() !== undefined
  } else {
    const created = !fs.existsSync(dir)
    fs.mkdirSync(dir, { recursive: true })
    store = new Database(path.join(dir, STORE_FILE), { timeout: 0 })
    try {
      store.pragma("locking_mode = EXCLUSIVE")
      store.pragma("journal_mode = WAL")
      store.pragma("synchronous = FULL")
      // Checkpoints run after a commit is answered (see `storeCheckpointSoon`); SQLite's own, at the end of
      // a commit, only past this many pages (64 MiB), should commits come faster than that.
      store.pragma(`wal_autocheckpoint = ${STORE_AUTOCHECKPOINT_PAGES}`)
      store.pragma(`cache_size = -${STORE_CACHE_KIB}`)
      store.exec(SCHEMA)
      const columns = (store.prepare("PRAGMA table_info(generations)").all() as Array<{ name: string }>).map((c) => c.name)
      if (!columns.includes("started_at")) store.exec("ALTER TABLE generations ADD COLUMN started_at INTEGER")
      // A store written when bases were BLOBs: every base becomes a durable file before the table goes.
      if (store.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'bases'").get() !== undefined) {
        const legacy = store.prepare<[], { generation: number }>("SELECT generation FROM bases").all()
        for (const { generation } of legacy) {
          const row = store.prepare<[number], { base: Buffer }>("SELECT base FROM bases WHERE generation = ?").get(generation)
          if (row !== undefined) writeFileDurably(basePath(generation), row.base)
        }
        store.exec("DROP TABLE bases")
      }
      // The first generation's base file before its row: a file without a row is deleted below.
      const fresh = store.prepare("SELECT 1 FROM generations LIMIT 1").get() === undefined
      if (fresh) writeFileDurably(basePath(1), emptyBase)
      store.transaction(() => {
        if (fresh) {
          store.prepare("INSERT INTO generations (generation, last_frame, started_at) VALUES (1, 0, ?)").run(Date.now())
        }
        // With the database's first generation, or on the first open of a database older than identities.
        store.prepare(NEW_ID).run(crypto.randomUUID())
      }).immediate()
      if (created) {
        fsyncPath(dir)
        fsyncPath(directory)
      }
      // Leftovers: bases of generations never started (a crash before the row) or dropped (a crash before
      // the unlink), snapshots of an earlier run, temp files.
      const kept = new Set(
        store.prepare<[], { generation: number }>("SELECT generation FROM generations WHERE dropped = 0").all().map((r) =>
          r.generation
        )
      )
      for (const entry of fs.readdirSync(dir)) {
        const base = BASE_FILE.exec(entry)
        if ((base !== null && !kept.has(Number(base[1]))) || SNAPSHOT_FILE.test(entry) || entry.includes(".tmp-")) {
          removeIfPresent(path.join(dir, entry))
        }
      }
      for (const generation of kept) {
        if (!fs.existsSync(basePath(generation))) {
          throw new Error(`the base file of generation ${generation} of ${name} is missing`)
        }
      }
    } catch (error) {
      store.close()
      throw error
    }
  }
  const hasMeta = store.prepare("SELECT 1 FROM sqlite_schema WHERE name = 'meta'").get() !== undefined
  const id = hasMeta
    ? store.prepare<[], { value: string }>("SELECT value FROM meta WHERE key = 'database_id'").get()?.value
    : undefined

  const readBaseFile = (generation: number): Buffer => {
    if (legacyBases) {
      const row = store.prepare<[number], { base: Buffer }>("SELECT base FROM bases WHERE generation = ?").get(generation)
      if (row === undefined) throw new GenerationGoneError(generation)
      return row.base
    }
    try {
      return fs.readFileSync(basePath(generation))
    } catch (error) {
      if (isMissing(error)) throw new GenerationGoneError(generation)
      throw error
    }
  }
  const selectFrames = store.prepare<[number, number, number], FrameRow>(
    "SELECT pgno, commit_size, page FROM frames WHERE generation = ? AND frame_no >= ? AND frame_no < ? ORDER BY frame_no"
  )
  // (bounded by the committed head: a commit's rows exist, uncommitted, while its check runs)
  const selectPages = store.prepare<[number, number], { pgno: number; page: Buffer }>(
    "SELECT pgno, page FROM frames WHERE generation = ? AND frame_no <= ? ORDER BY frame_no"
  )
  const selectCommitSize = store.prepare<[number, number], { commit_size: number }>(
    "SELECT commit_size FROM frames WHERE generation = ? AND frame_no = ?"
  )
  // The frame of the newest copy of each page up to a frame; reads no page bytes (they follow in the row).
  const selectNewest = store.prepare<[number, number], { pgno: number; frame_no: number }>(
    "SELECT pgno, max(frame_no) AS frame_no FROM frames WHERE generation = ? AND frame_no <= ? GROUP BY pgno"
  )
  const selectPage = store.prepare<[number, number], { page: Buffer }>(
    "SELECT page FROM frames WHERE generation = ? AND frame_no = ?"
  )
  const insertFrame = store.prepare<[number, number, number, number, Buffer]>(
    "INSERT INTO frames (generation, frame_no, pgno, commit_size, page) VALUES (?, ?, ?, ?, ?)"
  )
  const setLastFrame = store.prepare<[number, number]>("UPDATE generations SET last_frame = ? WHERE generation = ?")
  const lastFrameOf = store.prepare<[number], { last_frame: number }>(
    "SELECT last_frame FROM generations WHERE generation = ?"
  )

  const generations = store
    .prepare<[], { generation: number; last_frame: number; dropped: number; started_at: number | null }>(
      "SELECT generation, last_frame, dropped, started_at FROM generations ORDER BY generation"
    )
    .all()
    .map((row): GenerationRecord => ({
      generation: row.generation,
      lastFrame: row.last_frame,
      dropped: row.dropped !== 0,
      startedAt: row.started_at ?? undefined
    }))
  let current = generations[generations.length - 1].generation
  const ackedPending = store
    .prepare<[number], { frame_no: number }>("SELECT frame_no FROM acked_pending WHERE generation = ?")
    .all(current)
    .map((row) => row.frame_no)
  const insertAck = store.prepare<[number, number]>(
    "INSERT OR IGNORE INTO acked_pending (generation, frame_no) VALUES (?, ?)"
  )
  const forgetAcksBelow = store.prepare<[number, number]>(
    "DELETE FROM acked_pending WHERE generation = ? AND frame_no < ?"
  )

  const headPath = path.join(dir, "head.db")
  const headWal = `${headPath}-wal`
  const headShm = `${headPath}-shm`
  // The check's read-only connection leaves an empty WAL and its index beside head.db, deleted after
  // each check; a WAL with frames in it is the leftover of an earlier version's check (rebuilt away).
  const clearHeadWal = () => {
    unlinkIfPresent(headWal)
    unlinkIfPresent(headShm)
  }
  const headWalEmpty = () => (fs.statSync(headWal, { throwIfNoEntry: false })?.size ?? 0) === 0

  // WalFrame.applyFrames(base, frames), streamed so memory stays at one database image.
  const materialize = (generation: number): Uint8Array => {
    const base = readBaseFile(generation)
    const last = lastFrameOf.get(generation)?.last_frame ?? 0
    if (last === 0) return new Uint8Array(base)
    const pages = selectCommitSize.get(generation, last)?.commit_size
    if (pages === undefined || pages === 0) throw new Error(`frame ${last} of ${name}/${generation} is not a commit frame`)
    const image = new Uint8Array(pages * WalFrame.PAGE_SIZE)
    image.set(base.byteLength > image.byteLength ? base.subarray(0, image.byteLength) : base, 0)
    for (const row of selectPages.iterate(generation, last)) {
      if (row.pgno <= pages) image.set(row.page, (row.pgno - 1) * WalFrame.PAGE_SIZE)
    }
    return image
  }

  /**
   * Writes generation `generation` at frame `frameNo` (a commit frame, or 0) to the new file `temp`: a
   * copy of the base, cut or extended to the commit's size, with the newest copy of each page up to the
   * frame written over it. `WalFrame.applyFrames` done on disk, so memory stays at one page.
   */
  const writeImage = (generation: number, frameNo: number, temp: string, durable: boolean) => {
    try {
      fs.copyFileSync(basePath(generation), temp)
    } catch (error) {
      if (isMissing(error)) throw new GenerationGoneError(generation)
      throw error
    }
    if (frameNo === 0 && !durable) return
    const fd = fs.openSync(temp, "r+")
    try {
      if (frameNo > 0) {
        const pages = selectCommitSize.get(generation, frameNo)?.commit_size
        if (pages === undefined) throw new GenerationGoneError(generation)
        if (pages === 0) throw new Error(`frame ${frameNo} of ${name}/${generation} is not a commit frame`)
        fs.ftruncateSync(fd, pages * WalFrame.PAGE_SIZE)
        for (const { frame_no, pgno } of selectNewest.all(generation, frameNo)) {
          if (pgno > pages) continue
          const page = selectPage.get(generation, frame_no)?.page
          if (page === undefined) throw new GenerationGoneError(generation)
          fs.writeSync(fd, page, 0, WalFrame.PAGE_SIZE, (pgno - 1) * WalFrame.PAGE_SIZE)
        }
      }
      if (durable) fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
  }

  /** `writeImage` into `target` by temp file and rename (fsynced, directory too, when `durable`). */
  const replaceWithImage = (generation: number, frameNo: number, target: string, durable: boolean) => {
    const temp = `${target}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`
    try {
      writeImage(generation, frameNo, temp, durable)
      fs.renameSync(temp, target)
    } catch (error) {
      removeIfPresent(temp)
      throw error
    }
    if (durable) fsyncPath(dir)
  }

  /**
   * The snapshot of `generation` at `frameNo` as `file`. Derived data (open deletes snapshots), so no
   * fsync. Only the last snapshot is kept: older ones are unlinked (readers that have them open keep
   * reading).
   */
  const buildSnapshot = (generation: number, frameNo: number, file: string) => {
    replaceWithImage(generation, frameNo, file, false)
    for (const entry of fs.readdirSync(dir)) {
      if (SNAPSHOT_FILE.test(entry) && path.join(dir, entry) !== file) removeIfPresent(path.join(dir, entry))
    }
  }

  /**
   * Inserts the row of a generation whose base file is durable; it becomes the current one. `headIsBase`:
   * head.db already holds exactly that base (a roll copied its base from head.db), so it is kept as it is.
   */
  const startGeneration = (generation: number, startedAt: number, headIsBase = false) => {
    store.transaction(() => {
      store.prepare("INSERT INTO generations (generation, last_frame, started_at) VALUES (?, 0, ?)").run(
        generation,
        startedAt
      )
      store.prepare("DELETE FROM acked_pending WHERE generation < ?").run(generation)
    }).immediate()
    current = generation
    if (headIsBase) return
    headStale = true
    schema = undefined
    if (integrityCheck !== "off") {
      try {
        rebuildHead()
        headStale = false
      } catch {
        // retried before the next check
      }
    }
  }

  const storeFailure = (generation: number, what: string) => (cause: unknown) =>
    cause instanceof GenerationGoneError ? gone(generation) : storage(`${what} of ${name}/${generation} failed`)(cause)

  const rebuildHead = () => {
    clearHeadWal()
    removeIfPresent(headPath)
    // Temp files of a process that died mid-write.
    for (const entry of fs.readdirSync(dir)) {
      if (entry.startsWith("head.db.tmp-")) removeIfPresent(path.join(dir, entry))
    }
    replaceWithImage(current, lastFrameOf.get(current)?.last_frame ?? 0, headPath, true)
  }

  // Only the check reads head.db, and it is rebuilt before the first check after a start. A database
  // this process closed for being idle, with its head checkpointed, keeps it.
  let headStale = !(cleanHeads.delete(name) && fs.existsSync(headPath) && headWalEmpty())

  /**
   * Whether head.db holds exactly the current generation at its committed frame `last`: the checks keep it
   * so (each passing commit is checkpointed into it, its WAL then gone), unless something failed (stale) or
   * no check runs. SQLite's checkpoint copies the frames' pages as they are and cuts the file to the
   * commit's size, so the file is then byte for byte the image `writeImage` builds from the store.
   */
  const headIsCommitted = (last: number): boolean => {
    if (integrityCheck === "off" || headStale || readOnly) return false
    if (!headWalEmpty()) return false
    const pages = last === 0 ? undefined : selectCommitSize.get(current, last)?.commit_size
    if (last > 0 && (pages === undefined || pages === 0)) return false
    const size = fs.existsSync(headPath) ? fs.statSync(headPath).size : -1
    return size === (pages === undefined ? fs.statSync(basePath(current)).size : pages * WalFrame.PAGE_SIZE)
  }

  // sqlite_schema of head.db, read again after a rebuild or a commit that may change it.
  let schema: ReadonlyArray<ChangedTables.SchemaEntry> | undefined

  // The pragmas `frames` must pass, from head.db as it is before they are written as its WAL.
  const planFor = (frames: ReadonlyArray<WalFrame.Frame>): ChangedTables.CheckPlan => {
    if (integrityCheck !== "changed_tables") return fixedPlan(integrityCheck)
    if (schema === undefined) {
      const reader = new Database(headPath, { readonly: true, fileMustExist: true })
      try {
        schema = reader.prepare<[], ChangedTables.SchemaEntry>(ChangedTables.SCHEMA_QUERY).all()
      } finally {
        reader.close()
        clearHeadWal()
      }
    }
    const fd = fs.openSync(headPath, "r")
    try {
      const pages = fs.fstatSync(fd).size / WalFrame.PAGE_SIZE
      const placement = ChangedTables.place(frames, schema, (pgno) => {
        if (pgno > pages) return undefined
        const page = new Uint8Array(WalFrame.PAGE_SIZE)
        fs.readSync(fd, page, 0, WalFrame.PAGE_SIZE, (pgno - 1) * WalFrame.PAGE_SIZE)
        return page
      })
      if (placement._tag === "Full" && placement.schemaChanged) schema = undefined
      return ChangedTables.planOf(placement)
    } finally {
      fs.closeSync(fd)
    }
  }

  /**
   * Writes `frames` over head.db the way SQLite's checkpoint of them would (each page at its place in
   * frame order, so the newest copy wins; the file cut or extended to the last commit's size), after
   * reading what they replace: the answer puts head.db back (`undoHead`) when the check refuses them.
   * The check then reads head.db itself, with no WAL to write, recover and checkpoint.
   */
  const writeHead = (frames: ReadonlyArray<WalFrame.Frame>): HeadUndo => {
    const fd = fs.openSync(headPath, "r+")
    try {
      const oldPages = Math.floor(fs.fstatSync(fd).size / WalFrame.PAGE_SIZE)
      const newPages = frames[frames.length - 1].commitSize
      // the pages to keep: every page written that exists now, and the tail a shrinking commit cuts off
      const kept = new Set<number>()
      for (const frame of frames) if (frame.pgno <= Math.min(oldPages, newPages)) kept.add(frame.pgno)
      const cut = Math.max(0, oldPages - newPages)
      if (oldPages > 0 && (kept.size + cut) * HEAD_UNDO_COPY_SHARE >= oldPages) {
        // (named as a temp file: one left by a crash goes with the next rebuild of head.db)
        const copy = `${headPath}.tmp-undo-${process.pid}`
        let copied = false
        try {
          fs.copyFileSync(headPath, copy)
          copied = true
        } catch {
          // (no room for the copy, say): the pages are read instead
          removeIfPresent(copy)
        }
        if (copied) {
          writeCommit(fd, frames)
          return { pages: oldPages, saved: undefined, copy }
        }
      }
      const undoable = cut <= HEAD_UNDO_TAIL_MAX_PAGES
      if (undoable) for (let pgno = newPages + 1; pgno <= oldPages; pgno++) kept.add(pgno)
      const saved = undoable ? readRuns(fd, [...kept].sort((a, b) => a - b)) : []
      writeCommit(fd, frames)
      return { pages: oldPages, saved: undoable ? saved : undefined }
    } finally {
      fs.closeSync(fd)
    }
  }

  /** Puts head.db back as it was before `writeHead`; when that cannot be done, it is rebuilt before the next check. */
  const undoHead = (undo: HeadUndo) => {
    if (undo.copy !== undefined) {
      try {
        fs.renameSync(undo.copy, headPath)
      } catch {
        headStale = true
      }
      return
    }
    if (undo.saved === undefined) {
      headStale = true
      return
    }
    try {
      const fd = fs.openSync(headPath, "r+")
      try {
        fs.ftruncateSync(fd, undo.pages * WalFrame.PAGE_SIZE)
        writeRuns(fd, undo.saved)
      } finally {
        fs.closeSync(fd)
      }
    } catch {
      headStale = true
    }
  }

  /** Forgets what `writeHead` replaced, once the check passed. */
  const keepHead = (undo: HeadUndo) => {
    if (undo.copy === undefined) return
    try {
      unlinkIfPresent(undo.copy)
    } catch {
      // a temp file: the next rebuild of head.db removes it
    }
  }

  /** Rebuilds head.db when it is stale; answers its size in bytes. */
  const freshHead = (): number => {
    if (headStale) {
      rebuildHead()
      headStale = false
      schema = undefined
    }
    return fs.statSync(headPath).size
  }

  // The plan of `frames` on head.db as it is, then head.db with them written over it (see `writeHead`).
  const prepareCheck = (frames: ReadonlyArray<WalFrame.Frame>): { plan: ChangedTables.CheckPlan; undo: HeadUndo } => {
    const plan = planFor(frames)
    return { plan, undo: writeHead(frames) }
  }

  /**
   * The check of a small database: head.db read into memory, `frames` applied to that image and the
   * image checked, with no connection to open on the file (nor the WAL and index it would create), and
   * nothing to put back when the check refuses them.
   */
  const checkInMemory = (frames: ReadonlyArray<WalFrame.Frame>): string | undefined => {
    const head = fs.readFileSync(headPath)
    const planned = planOnImage(integrityCheck, head, schema, frames)
    schema = planned.schema
    return checkImage(WalFrame.applyFrames(head, frames), planned.plan, { owned: true })
  }

  /** `frames` written over head.db (see `writeHead`), once their commit is stored. */
  const writeHeadPages = (frames: ReadonlyArray<WalFrame.Frame>) => {
    const fd = fs.openSync(headPath, "r+")
    try {
      writeCommit(fd, frames)
    } finally {
      fs.closeSync(fd)
    }
  }

  // The check of head.db on the calling thread, for a store without a worker (see checkWorker.ts).
  const runCheck = (plan: ChangedTables.CheckPlan): Effect.Effect<string | undefined, Error> => {
    return Effect.try({
      try: () => {
        let reader: Database.Database | undefined
        try {
          reader = new Database(headPath, { readonly: true, fileMustExist: true })
          return checkConnection(reader, plan)
        } catch (error) {
          // SQLite can refuse to open a file whose header is garbage: that is a verdict, not a storage failure.
          const code = (error as { code?: unknown }).code
          if (typeof code === "string" && (code.startsWith("SQLITE_CORRUPT") || code.startsWith("SQLITE_NOTADB"))) {
            return (error as Error).message
          }
          throw error
        } finally {
          reader?.close()
          clearHeadWal()
        }
      },
      catch: (cause) => (cause instanceof Error ? cause : new Error(String(cause)))
    })
  }

  // store.sqlite's WAL is checkpointed shortly after a commit, off its answer's path: a commit of a few
  // thousand frames otherwise pays SQLite's checkpoint (the whole WAL written to the file, and its fsync)
  // before it is answered. The frames are durable in the WAL either way.
  let framesSinceCheckpoint = 0
  let storeCheckpoint: ReturnType<typeof setTimeout> | undefined
  let closed = false
  const storeCheckpointSoon = () => {
    if (storeCheckpoint !== undefined || framesSinceCheckpoint < STORE_CHECKPOINT_FRAMES) return
    storeCheckpoint = setTimeout(() => {
      storeCheckpoint = undefined
      if (closed || store.inTransaction) return
      try {
        store.pragma("wal_checkpoint(PASSIVE)")
        framesSinceCheckpoint = 0
      } catch {
        // SQLite checkpoints on its own past STORE_AUTOCHECKPOINT_PAGES, and at close
      }
    }, STORE_CHECKPOINT_DELAY_MS)
    storeCheckpoint.unref()
  }

  /**
   * Opens the write transaction of a commit and inserts its frames as rows; `finishCommit` makes them
   * durable (synchronous=FULL), `abandonCommit` drops them. In between, reads of this connection (pulls,
   * snapshots) see the new rows, but only ever ask for frames up to the committed head.
   */
  const beginCommit = (generation: number, firstFrameNo: number, frames: ReadonlyArray<WalFrame.Frame>) => {
    store.exec("BEGIN IMMEDIATE")
    try {
      for (let i = 0; i < frames.length; i++) {
        const frame = frames[i]
        insertFrame.run(
          generation,
          firstFrameNo + i,
          frame.pgno,
          frame.commitSize,
          Buffer.from(frame.page.buffer, frame.page.byteOffset, frame.page.byteLength)
        )
      }
    } catch (error) {
      abandonCommit()
      throw error
    }
  }
  const abandonCommit = () => {
    if (store.inTransaction) store.exec("ROLLBACK")
  }
  const finishCommit = (generation: number, lastFrameNo: number, count: number) => {
    try {
      setLastFrame.run(lastFrameNo, generation)
      forgetAcksBelow.run(generation, lastFrameNo)
      store.exec("COMMIT")
    } catch (error) {
      abandonCommit()
      throw error
    }
    framesSinceCheckpoint += count
    storeCheckpointSoon()
  }

  return {
    id,
    readOnly,
    generations,
    ackedPending,
    recordAck: (generation, frameNo) =>
      Effect.try({
        try: () => {
          insertAck.run(generation, frameNo)
        },
        catch: storage(`recording frame ${frameNo} of ${name}/${generation} failed`)
      }),
    readBase: (generation) =>
      Effect.try({
        try: () => {
          const base = readBaseFile(generation)
          return new Uint8Array(base.buffer, base.byteOffset, base.byteLength)
        },
        catch: storeFailure(generation, "reading the base")
      }),
    // A read-only directory with bases still in a table serves them from memory (the core's fallback).
    openBase: legacyBases ? undefined : (generation) =>
      ServerBody.ofFile(
        basePath(generation),
        (cause) => isMissing(cause) ? gone(generation) : storeFailure(generation, "opening the base")(cause)
      ),
    baseSize: legacyBases ? undefined : (generation) =>
      Effect.try({
        try: () => {
          try {
            return fs.statSync(basePath(generation)).size
          } catch (error) {
            if (isMissing(error)) throw new GenerationGoneError(generation)
            throw error
          }
        },
        catch: storeFailure(generation, "reading the size of the base")
      }),
    // Snapshots are files written on first use: a read-only directory builds them in memory instead.
    openSnapshot: readOnly ? undefined : (generation, frameNo) => {
      const file = path.join(dir, `snapshot-${generation}-${frameNo}.db`)
      return ServerBody.ofFile(
        file,
        (cause) => isMissing(cause) ? gone(generation) : storeFailure(generation, "building a snapshot")(cause),
        () => {
          if (!fs.existsSync(file)) buildSnapshot(generation, frameNo, file)
        }
      )
    },
    readFrames: (generation, start, end) =>
      Effect.try({
        try: () => selectFrames.all(generation, start, end).map(toFrame),
        catch: storage(`reading frames ${start}..${end - 1} of ${name}/${generation} failed`)
      }),
    // A transaction that will be checked on the worker is on its way: the worker starts meanwhile.
    pendingCommit: (frames) => {
      if (checker !== undefined && integrityCheck !== "off" && frames * WalFrame.PAGE_SIZE > CHECK_HERE_MAX_BYTES) checker.warm()
    },
    commit: (generation, firstFrameNo, frames) =>
      Effect.gen(function*() {
        const failed = storage(`storing frames ${firstFrameNo}.. of ${name}/${generation} failed`)
        if (generation !== current) {
          return yield* Effect.fail(failed(new Error(`commit to ${generation} while ${current} is current`)))
        }
        const lastFrameNo = firstFrameNo + frames.length - 1
        const storing = (f: () => void) =>
          Effect.try({
            try: f,
            catch: (cause) => {
              // head.db may hold frames the store does not: rebuilt from the store before the next check.
              headStale = true
              return failed(cause)
            }
          })
        // The commit when nothing runs beside it (no check, or the check on this thread, done before).
        const commitHere = storing(() => {
          beginCommit(generation, firstFrameNo, frames)
          finishCommit(generation, lastFrameNo, frames.length)
        })
        if (integrityCheck === "off") {
          yield* commitHere
          return Either.right(undefined)
        }
        const refused = (cause: Error) => {
          // Whatever went wrong with head.db, the next check starts from a fresh one.
          headStale = true
          return failed(cause)
        }
        const headBytes = yield* Effect.try({ try: freshHead, catch: failed })
        // A small database is checked here, in memory (see CHECK_HERE_MAX_BYTES), and head.db written once
        // the commit is stored. (its size as the check reads it: the head's, or the commit's when larger)
        const commitBytes = frames[frames.length - 1].commitSize * WalFrame.PAGE_SIZE
        if (Math.max(headBytes, commitBytes) <= CHECK_HERE_MAX_BYTES) {
          const problem = yield* serverMetrics.timeCheck(Effect.try({
            try: () => checkInMemory(frames),
            catch: (cause) => (cause instanceof Error ? cause : new Error(String(cause)))
          })).pipe(Effect.mapError(refused))
          if (problem !== undefined) return Either.left(problem)
          yield* commitHere
          try {
            writeHeadPages(frames)
          } catch {
            // head.db is derived data: rebuilt before the next check instead of failing a stored commit
            headStale = true
          }
          return Either.right(undefined)
        }
        const { plan, undo } = yield* Effect.try({
          try: () => prepareCheck(frames),
          catch: (cause) => {
            // head.db may be half written: rebuilt from the store before the next check
            headStale = true
            return failed(cause)
          }
        })
        if (checker === undefined) {
          const problem = yield* serverMetrics.timeCheck(runCheck(plan)).pipe(Effect.mapError(refused))
          if (problem !== undefined) {
            undoHead(undo)
            return Either.left(problem)
          }
          keepHead(undo)
          yield* commitHere
          return Either.right(undefined)
        }
        // The worker checks head.db while the frames are inserted here; they are committed once it found
        // nothing wrong. Both end before the answer: nothing of the commit is left running.
        // (the check's time, as the commit waits for it, counts from when it is sent)
        const { inserted, problem } = yield* serverMetrics.timeCheck(Effect.gen(function*() {
          const verdict = yield* checker.send(headPath, plan)
          const inserted = yield* Effect.either(storing(() => beginCommit(generation, firstFrameNo, frames)))
          const problem = yield* Effect.either(verdict)
          yield* Effect.try({ try: clearHeadWal, catch: failed }).pipe(Effect.ignore)
          return { inserted, problem }
        }))
        if (Either.isLeft(problem)) {
          abandonCommit()
          return yield* Effect.fail(refused(problem.left))
        }
        if (problem.right !== undefined) {
          abandonCommit()
          undoHead(undo)
          return Either.left(problem.right)
        }
        keepHead(undo)
        // (a failed insert already marked head.db, which holds the frames, to be rebuilt)
        if (Either.isLeft(inserted)) return yield* Effect.fail(inserted.left)
        yield* storing(() => finishCommit(generation, lastFrameNo, frames.length))
        return Either.right(undefined)
      }),
    materialize: (generation) =>
      Effect.try({
        try: () => materialize(generation),
        catch: storeFailure(generation, "materialising")
      }),
    roll: (generation, base, startedAt) =>
      Effect.try({
        try: () => {
          // The file first: a crash before the row leaves a file that open deletes.
          writeFileDurably(basePath(generation), base)
          startGeneration(generation, startedAt ?? Date.now())
        },
        catch: storage(`starting generation ${generation} of ${name} failed`)
      }),
    rollForward: (startedAt) =>
      Effect.try({
        try: () => {
          const next = current + 1
          const last = lastFrameOf.get(current)?.last_frame ?? 0
          // The file first (fsynced, renamed): a crash before the row leaves a file that open deletes. When
          // head.db is the committed head, the kernel copies it; otherwise it is written from the store.
          const fromHead = headIsCommitted(last)
          if (fromHead) copyFileDurably(headPath, basePath(next))
          else replaceWithImage(current, last, basePath(next), true)
          startGeneration(next, startedAt, fromHead)
          return fs.statSync(basePath(next)).size
        },
        catch: storage(`starting generation ${current + 1} of ${name} failed`)
      }),
    dropThrough: (generation) =>
      Effect.try({
        try: () => {
          store.transaction(() => {
            store.prepare("UPDATE generations SET dropped = 1 WHERE generation <= ?").run(generation)
            store.prepare("DELETE FROM frames WHERE generation <= ?").run(generation)
          }).immediate()
          // After the rows: a crash in between leaves files that open deletes. Open bodies keep reading.
          for (const entry of fs.readdirSync(dir)) {
            const match = BASE_FILE.exec(entry) ?? SNAPSHOT_FILE.exec(entry)
            if (match !== null && Number(match[1]) <= generation) removeIfPresent(path.join(dir, entry))
          }
        },
        catch: storage(`dropping generations through ${generation} of ${name} failed`)
      }),
    close: Effect.sync(() => {
      closed = true
      if (storeCheckpoint !== undefined) clearTimeout(storeCheckpoint)
      store.close()
      if (!readOnly && !headStale && headWalEmpty()) cleanHeads.add(name)
    })
  }
}

export const make = (options: {
  readonly directory: string
  readonly integrityCheck: IntegrityCheck
  /** Where checks run; without one they run on the calling thread. */
  readonly checker?: Checker | undefined
  /** Open every database read-only (see `isReadOnlyDirectory`). */
  readonly readOnly?: boolean | undefined
}): Backend => {
  const readOnly = options.readOnly ?? false
  // Databases closed for being idle whose head.db is current: reopened without rebuilding it.
  const cleanHeads = new Set<string>()
  return {
  readOnly,
  list: Effect.try({
    try: () =>
      fs.readdirSync(options.directory, { withFileTypes: true })
        .filter((entry) => entry.isDirectory() && isDatabaseName(entry.name))
        .filter((entry) => fs.existsSync(path.join(options.directory, entry.name, STORE_FILE)))
        .map((entry) => entry.name),
    catch: storage(`listing the databases in ${options.directory} failed`)
  }),
  open: (name, emptyBase) =>
    Effect.try({
      try: () => {
        if (readOnly && !fs.existsSync(path.join(options.directory, name, STORE_FILE))) {
          throw new StoreError({ reason: "ReadOnly", message: `the store is read-only: database ${name} cannot be created` })
        }
        const opened = openDatabase(
          options.directory,
          name,
          emptyBase,
          options.integrityCheck,
          options.checker,
          readOnly,
          cleanHeads
        )
        // The check worker starts with the first database in use (in the background), so the first large
        // commit does not wait for the thread to load SQLite.
        if (!readOnly && options.integrityCheck !== "off") options.checker?.warm()
        return opened
      },
      catch: (cause) => {
        if (cause instanceof StoreError) return cause
        const code = (cause as { code?: unknown } | null)?.code
        return new StoreError({
          reason: "Storage",
          message: code === "SQLITE_BUSY"
            ? `database ${name} is in use by another process`
            : `opening database ${name} in ${options.directory} failed`,
          cause
        })
      }
    })
}
}
