/**
 * How many frames of a WAL SQLite has not yet checkpointed, read from its wal-index (the `-shm` file) as
 * SQLite's WAL format documents it (https://www.sqlite.org/walformat.html): the index header, kept twice,
 * holds `mxFrame` (the last valid frame), and the checkpoint info after it `nBackfill` (the frames already
 * copied into the database file). Both are in the machine's byte order.
 *
 * A checkpoint that restarts the WAL (rather than truncating it) leaves the file at its size until the next
 * write overwrites it from the start, so the file's size no longer counts its frames; this does, at the cost
 * of one small read.
 *
 * @internal
 */
import * as Os from "node:os"
import * as WalFrame from "../../WalFrame.js"

/** Bytes read: both copies of the index header (48 bytes each) and the checkpoint info's `nBackfill`. */
const READ = 100
const HEADER = 48
const IS_INIT = 12
const MX_FRAME = 16
const N_BACKFILL = 96

const littleEndian = Os.endianness() === "LE"

/** The wal-index header's `mxFrame - nBackfill`, or undefined when `bytes` do not hold a usable header. */
export const parse = (bytes: Uint8Array): number | undefined => {
  if (bytes.byteLength < READ) return undefined
  const view = new DataView(bytes.buffer, bytes.byteOffset, READ)
  if (view.getUint32(0, littleEndian) !== WalFrame.FORMAT_VERSION || bytes[IS_INIT] !== 1) return undefined
  // SQLite writes the second copy, then the first: copies that differ are a header being written.
  for (let i = 0; i < HEADER; i++) if (bytes[i] !== bytes[HEADER + i]) return undefined
  const mxFrame = view.getUint32(MX_FRAME, littleEndian)
  const backfilled = view.getUint32(N_BACKFILL, littleEndian)
  return backfilled <= mxFrame ? mxFrame - backfilled : undefined
}

/** The file calls this needs (node:fs, or the engine's file service). */
export interface Reader {
  readonly openSync: (path: string, flags: "r") => number
  readonly readSync: (fd: number, buffer: Uint8Array, offset: number, length: number, position: number) => number
  readonly closeSync: (fd: number) => void
}

/**
 * Frames of `db`'s WAL not yet in its database file, by its wal-index; undefined when that cannot be read
 * (no `-shm`, or a header that is not initialized or is being written): the caller then counts otherwise.
 * Meaningful while a connection has `db` open (the index is rebuilt when the first one opens it).
 */
export const unfoldedFrames = (fs: Reader, db: string): number | undefined => {
  let fd: number
  try {
    fd = fs.openSync(`${db}-shm`, "r")
  } catch {
    return undefined
  }
  try {
    const bytes = new Uint8Array(READ)
    return fs.readSync(fd, bytes, 0, READ, 0) === READ ? parse(bytes) : undefined
  } catch {
    return undefined
  } finally {
    fs.closeSync(fd)
  }
}
