/**
 * How many frames of a WAL SQLite has not yet checkpointed, read from its wal-index (the `-shm` file) as
 * SQLite's WAL format documents it (https://www.sqlite.org/walformat.html): the index header, kept twice,
 * holds `mxFrame` (the last valid frame), and the checkpoint info after it `nBackfill` (the frames already
 * copied into the database file). Both are in the machine's byte order.
 *
 * A checkpoint that restarts the WAL (rather than truncating it) leaves the file at its size until the next
 * write overwrites it from the start, so the file's size no longer counts its frames; this does, at the cost
 * of one small read. The index also holds the page number of every frame (`aPgno`, after the header in the
 * first 32 KB block, then at the start of each following block): what a fold records, read in a few KB
 * rather than from every frame of the WAL.
 *
 * @internal
 */
import * as Os from "node:os"
import * as WalFrame from "../../WalFrame.js"

/** Bytes read: both copies of the index header (48 bytes each) and the checkpoint info's `nBackfill`. */
const READ = 100
const HEADER = 48
const IS_INIT = 12
const PAGE_SIZE = 14
const MX_FRAME = 16
const N_PAGE = 20
const FRAME_CKSUM = 24
const SALT = 32
const N_BACKFILL = 96
/** The index's blocks: the first holds the header (136 bytes) and the page numbers of 4062 frames. */
const BLOCK = 32768
const FIRST_BLOCK_FRAMES = 4062
const BLOCK_FRAMES = 4096
const FIRST_PGNO = 136

const littleEndian = Os.endianness() === "LE"

/** What the wal-index header says of its WAL. */
export interface Header {
  /** Frames of the WAL (all committed). */
  readonly frames: number
  /** Frames already copied into the database file. */
  readonly backfilled: number
  /** The database's size in pages after the last commit. */
  readonly dbPages: number
  /** The WAL header's salts, as its bytes 16..23. */
  readonly salt: Uint8Array
  /** The running checksum after the last frame (`aFrameCksum`), as that frame's header holds it. */
  readonly frameChecksum: readonly [number, number]
}

/** The wal-index header in `bytes` (its first 100 bytes), or undefined when they do not hold a usable one. */
export const parseHeader = (bytes: Uint8Array): Header | undefined => {
  if (bytes.byteLength < READ) return undefined
  const view = new DataView(bytes.buffer, bytes.byteOffset, READ)
  if (view.getUint32(0, littleEndian) !== WalFrame.FORMAT_VERSION || bytes[IS_INIT] !== 1) return undefined
  if (view.getUint16(PAGE_SIZE, littleEndian) !== WalFrame.PAGE_SIZE) return undefined
  // SQLite writes the second copy, then the first: copies that differ are a header being written.
  for (let i = 0; i < HEADER; i++) if (bytes[i] !== bytes[HEADER + i]) return undefined
  const frames = view.getUint32(MX_FRAME, littleEndian)
  const backfilled = view.getUint32(N_BACKFILL, littleEndian)
  if (backfilled > frames) return undefined
  return {
    frames,
    backfilled,
    dbPages: view.getUint32(N_PAGE, littleEndian),
    salt: bytes.slice(SALT, SALT + 8),
    frameChecksum: [view.getUint32(FRAME_CKSUM, littleEndian), view.getUint32(FRAME_CKSUM + 4, littleEndian)]
  }
}

/** The wal-index header's `mxFrame - nBackfill`, or undefined when `bytes` do not hold a usable header. */
export const parse = (bytes: Uint8Array): number | undefined => {
  const header = parseHeader(bytes)
  return header === undefined ? undefined : header.frames - header.backfilled
}

/** Where the page number of frame `frame` (from 1) is in the wal-index. */
export const pgnoOffset = (frame: number): number =>
  frame <= FIRST_BLOCK_FRAMES
    ? FIRST_PGNO + 4 * (frame - 1)
    : BLOCK * (1 + Math.floor((frame - FIRST_BLOCK_FRAMES - 1) / BLOCK_FRAMES)) +
      4 * ((frame - FIRST_BLOCK_FRAMES - 1) % BLOCK_FRAMES)

/** The file calls this needs (node:fs, or the engine's file service). */
export interface Reader {
  readonly openSync: (path: string, flags: "r") => number
  readonly readSync: (fd: number, buffer: Uint8Array, offset: number, length: number, position: number) => number
  readonly closeSync: (fd: number) => void
}

/** What a fold needs of a WAL, read from its wal-index. */
export interface Index extends Header {
  /** The page each frame writes, frame 1 first. */
  readonly pages: ReadonlyArray<number>
}

/** `f` on `path` opened for reading, closed after; undefined when it cannot be opened or `f` throws. */
const withFile = <A>(fs: Reader, path: string, f: (fd: number) => A | undefined): A | undefined => {
  let fd: number
  try {
    fd = fs.openSync(path, "r")
  } catch {
    return undefined
  }
  try {
    return f(fd)
  } catch {
    return undefined
  } finally {
    fs.closeSync(fd)
  }
}

/** The index header of the `-shm` open as `fd`, or undefined. */
const readHeader = (fs: Reader, fd: number): Header | undefined => {
  const bytes = new Uint8Array(READ)
  return fs.readSync(fd, bytes, 0, READ, 0) === READ ? parseHeader(bytes) : undefined
}

/**
 * The wal-index of `db`'s WAL with the page of each of its frames; undefined when it cannot be read, or its
 * salts are not those of the WAL file's header (an index that is not this WAL's). Only while a connection
 * has `db` open and no write is under way.
 */
export const readIndex = (fs: Reader, db: string): Index | undefined =>
  withFile(fs, `${db}-shm`, (fd) =>
    withFile(fs, `${db}-wal`, (wal) => {
      const header = readHeader(fs, fd)
      if (header === undefined) return undefined
      const walHeader = new Uint8Array(WalFrame.WAL_HEADER_SIZE)
      if (fs.readSync(wal, walHeader, 0, walHeader.byteLength, 0) !== walHeader.byteLength) return undefined
      for (let i = 0; i < 8; i++) if (walHeader[16 + i] !== header.salt[i]) return undefined
      const pages = new Array<number>(header.frames)
      // The page numbers a block at a time (each block's array is contiguous).
      for (let frame = 1; frame <= header.frames;) {
        const inBlock = frame <= FIRST_BLOCK_FRAMES
          ? FIRST_BLOCK_FRAMES - frame + 1
          : BLOCK_FRAMES - ((frame - FIRST_BLOCK_FRAMES - 1) % BLOCK_FRAMES)
        const count = Math.min(inBlock, header.frames - frame + 1)
        const chunk = new Uint8Array(4 * count)
        if (fs.readSync(fd, chunk, 0, chunk.byteLength, pgnoOffset(frame)) !== chunk.byteLength) return undefined
        const view = new DataView(chunk.buffer)
        for (let i = 0; i < count; i++) {
          const pgno = view.getUint32(4 * i, littleEndian)
          if (pgno === 0) return undefined
          pages[frame - 1 + i] = pgno
        }
        frame += count
      }
      return { ...header, pages }
    }))

/**
 * The wal-index header of `db`, or undefined when it cannot be read (no `-shm`, or a header that is not
 * initialized or is being written). Meaningful while a connection has `db` open and no write is under way.
 */
export const readIndexHeader = (fs: Reader, db: string): Header | undefined =>
  withFile(fs, `${db}-shm`, (fd) => readHeader(fs, fd))

/**
 * Frames of `db`'s WAL not yet in its database file, by its wal-index; undefined when that cannot be read
 * (no `-shm`, or a header that is not initialized or is being written): the caller then counts otherwise.
 * Meaningful while a connection has `db` open (the index is rebuilt when the first one opens it).
 */
export const unfoldedFrames = (fs: Reader, db: string): number | undefined => {
  const header = readIndexHeader(fs, db)
  return header === undefined ? undefined : header.frames - header.backfilled
}
