/**
 * Page-level file steps on the client's copies: folding WAL frames into a database file, writing a fresh
 * WAL (one transaction) next to a copy, reading which pages a WAL's frames write. Like `files.ts`, every
 * call goes through `SyncFiles` (so faults can be injected) and runs with the copy's connection closed
 * where it says so.
 *
 * @internal
 */
import * as Option from "effect/Option"
import type { Service as FileService } from "../../SyncFiles.js"
import type { WalIdentity } from "../../SyncMetadata.js"
import * as WalFrame from "../../WalFrame.js"
import { attempt, walPath } from "./files.js"

/** `<db>-wal.next`: a WAL written whole, then renamed over `<db>-wal` while `db` is closed. */
export const nextWalPath = (db: string) => `${db}-wal.next`

/** The number of pages a database file's header gives (its in-header size), 0 for a missing or empty file. */
export const headerPages = (fs: FileService, db: string): number => {
  if (!fs.existsSync(db)) return 0
  const fd = fs.openSync(db, "r")
  try {
    const header = new Uint8Array(100)
    if (fs.readSync(fd, header, 0, 100, 0) < 100) return 0
    const view = new DataView(header.buffer)
    const size = fs.fsizeSync(fd)
    // The in-header count is valid only when "version-valid-for" matches the change counter.
    return view.getUint32(24) === view.getUint32(92) ? view.getUint32(28) : Math.floor(size / WalFrame.PAGE_SIZE)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * The committed frames of `<db>-wal` (validated), `[]` without a valid WAL. Read while the copy is open
 * only when no transaction can be under way (the caller holds every write permit).
 */
export const readCommittedFrames = (db: string) =>
  attempt(walPath(db), "cannot read WAL", (fs): ReadonlyArray<WalFrame.Frame> => {
    if (!fs.existsSync(walPath(db))) return []
    return Option.match(WalFrame.parse(fs.readFileSync(walPath(db))), { onNone: () => [], onSome: (w) => w.frames })
  })

/** A WAL frame as its 24-byte header gives it: the page it writes, the commit size (0 but on a commit frame). */
export interface FrameHeader {
  readonly pgno: number
  readonly commitSize: number
}

/**
 * The frame headers of `<db>-wal` that carry its header's salts, in order, up to the first that does not;
 * `committed`: how many of them end with the last commit frame. Pages are neither read nor checksummed, so
 * this costs a fraction of `readCommittedFrames` and over-approximates it: frames a crash left torn (with
 * the WAL's salts but a bad checksum) are included, as are frames written after the last commit (a
 * transaction under way, or rolled back). Frames before a checkpoint that restarted the WAL carry the old
 * salts, which ends the scan. `[]` without a valid WAL header. Read while the copy is open only when no
 * transaction can be under way (the caller holds every write permit).
 */
export const readFrameHeaders = (db: string) =>
  attempt(walPath(db), "cannot read WAL", (fs): { readonly frames: ReadonlyArray<FrameHeader>; readonly committed: number } => {
    const frames: Array<FrameHeader> = []
    let committed = 0
    if (!fs.existsSync(walPath(db))) return { frames, committed }
    const fd = fs.openSync(walPath(db), "r")
    try {
      const head = new Uint8Array(WalFrame.WAL_HEADER_SIZE)
      if (fs.readSync(fd, head, 0, head.byteLength, 0) < head.byteLength) return { frames, committed }
      // A WAL of its header alone parses to that header, validated as SQLite's recovery does.
      const wal = WalFrame.parse(head)
      if (Option.isNone(wal)) return { frames, committed }
      const { salt1, salt2 } = wal.value.header
      // Frames are read a chunk at a time (bounded memory); only their headers are looked at. A frame cut
      // short by the end of the file is not one (SQLite's recovery ignores it too).
      const chunk = new Uint8Array(256 * WalFrame.FRAME_SIZE)
      const view = new DataView(chunk.buffer)
      for (let position = WalFrame.WAL_HEADER_SIZE;;) {
        const read = fs.readSync(fd, chunk, 0, chunk.byteLength, position)
        for (let offset = 0; offset + WalFrame.FRAME_SIZE <= read; offset += WalFrame.FRAME_SIZE) {
          const pgno = view.getUint32(offset)
          if (pgno === 0 || view.getUint32(offset + 8) !== salt1 || view.getUint32(offset + 12) !== salt2) {
            return { frames, committed }
          }
          const commitSize = view.getUint32(offset + 4)
          frames.push({ pgno, commitSize })
          if (commitSize !== 0) committed = frames.length
        }
        if (read < chunk.byteLength) return { frames, committed }
        position += read
      }
    } finally {
      fs.closeSync(fd)
    }
  })

/**
 * Writes `frames` as a complete new WAL at `path` (fresh salts, checksums from its header), fsynced unless
 * `sync: false` (the caller fsyncs it before anything durable counts on it). The frames must end with a
 * commit frame.
 */
export const writeWalFile = (
  path: string,
  frames: ReadonlyArray<WalFrame.Frame>,
  options?: { readonly sync?: boolean | undefined }
) =>
  attempt(path, "cannot write WAL", (fs) => {
    const wal = WalFrame.make({
      salt1: (Math.random() * 0x100000000) >>> 0,
      salt2: (Math.random() * 0x100000000) >>> 0
    })
    const appended = WalFrame.append(wal, frames)
    fs.removeSync(path)
    const fd = fs.openSync(path, "w")
    try {
      fs.writeSync(fd, WalFrame.encodeHeader(wal), 0, WalFrame.WAL_HEADER_SIZE, 0)
      if (appended.bytes.byteLength > 0) fs.writeSync(fd, appended.bytes, 0, appended.bytes.byteLength, WalFrame.WAL_HEADER_SIZE)
      if (options?.sync !== false) fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
  })

/**
 * The frames of one transaction that writes `pages` of the database "`db`'s file + `walFrames`" (each page
 * from the newest frame that holds it, else from the file), committing a database of `targetPages` pages.
 */
export const pagesAsTransaction = (
  db: string,
  walFrames: ReadonlyArray<WalFrame.Frame>,
  pages: ReadonlyArray<number>,
  targetPages: number
) =>
  attempt(db, "cannot read pages", (fs): ReadonlyArray<WalFrame.Frame> => {
    const newest = new Map<number, Uint8Array>()
    for (const frame of walFrames) newest.set(frame.pgno, frame.page)
    const wanted = pages.filter((p) => p <= targetPages)
    const fd = fs.openSync(db, "r")
    const frames: Array<WalFrame.Frame> = []
    try {
      for (let i = 0; i < wanted.length; i++) {
        const pgno = wanted[i]
        let page = newest.get(pgno)
        if (page === undefined) {
          const read = new Uint8Array(WalFrame.PAGE_SIZE)
          // A page past the file's end is all zeros (SQLite never reads it before writing it).
          fs.readSync(fd, read, 0, WalFrame.PAGE_SIZE, (pgno - 1) * WalFrame.PAGE_SIZE)
          page = read
        }
        frames.push({ pgno, commitSize: i === wanted.length - 1 ? targetPages : 0, page })
      }
    } finally {
      fs.closeSync(fd)
    }
    return frames
  })

/**
 * `<db>-wal` as it stands (length, salts, last whole frame's checksum); all zeros without one. Read while
 * the copy is open only when no transaction can be under way.
 */
export const walIdentity = (db: string) =>
  attempt(walPath(db), "cannot read WAL", (fs): WalIdentity => {
    const none = { bytes: 0, salt1: 0, salt2: 0, checksum1: 0, checksum2: 0 }
    if (!fs.existsSync(walPath(db))) return none
    const fd = fs.openSync(walPath(db), "r")
    try {
      const bytes = fs.fsizeSync(fd)
      if (bytes < WalFrame.WAL_HEADER_SIZE) return { ...none, bytes }
      const header = new Uint8Array(WalFrame.WAL_HEADER_SIZE)
      fs.readSync(fd, header, 0, header.byteLength, 0)
      const h = new DataView(header.buffer)
      const frames = Math.floor((bytes - WalFrame.WAL_HEADER_SIZE) / WalFrame.FRAME_SIZE)
      const last = new Uint8Array(WalFrame.FRAME_HEADER_SIZE)
      if (frames > 0) fs.readSync(fd, last, 0, last.byteLength, WalFrame.walSize(frames - 1))
      const l = new DataView(last.buffer)
      return { bytes, salt1: h.getUint32(16), salt2: h.getUint32(20), checksum1: l.getUint32(16), checksum2: l.getUint32(20) }
    } finally {
      fs.closeSync(fd)
    }
  })

/** Whether two WAL identities are the same WAL. */
export const sameWal = (a: WalIdentity, b: WalIdentity): boolean =>
  a.bytes === b.bytes && a.salt1 === b.salt1 && a.salt2 === b.salt2 && a.checksum1 === b.checksum1 &&
  a.checksum2 === b.checksum2

/**
 * Writes the newest copy of each page `frames` hold into the database file `db` in place, fsynced unless
 * `sync: false` (the caller fsyncs it); never shortens it. Safe while `db` is open only when its WAL holds
 * every one of those pages (SQLite reads a page from the WAL before the file) and nothing checkpoints it
 * meanwhile.
 */
export const writePagesInPlace = (
  db: string,
  frames: ReadonlyArray<WalFrame.Frame>,
  options?: { readonly sync?: boolean | undefined }
) =>
  attempt(db, "cannot write pages", (fs) => {
    const newest = new Map<number, Uint8Array>()
    for (const frame of frames) newest.set(frame.pgno, frame.page)
    const pgnos = [...newest.keys()].sort((a, b) => a - b)
    const fd = fs.openSync(db, "r+")
    try {
      for (let i = 0; i < pgnos.length;) {
        // Runs of consecutive pages in one write.
        let j = i + 1
        while (j < pgnos.length && j - i < 256 && pgnos[j] === pgnos[j - 1] + 1) j++
        const run = Buffer.allocUnsafe((j - i) * WalFrame.PAGE_SIZE)
        for (let k = i; k < j; k++) run.set(newest.get(pgnos[k])!, (k - i) * WalFrame.PAGE_SIZE)
        fs.writeSync(fd, run, 0, run.byteLength, (pgnos[i] - 1) * WalFrame.PAGE_SIZE)
        i = j
      }
      if (options?.sync !== false) fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
  })

/** Distinct page numbers written by `frames`. */
export const pageNumbers = (frames: ReadonlyArray<FrameHeader>): ReadonlyArray<number> => [
  ...new Set(frames.map((f) => f.pgno))
]

/**
 * Where a fold of `frames` (ending with a commit) stops: the end of the last transaction but one, so that
 * the last transaction stays in the WAL (a push the server asks to resend from it can be answered), unless
 * that transaction alone holds more than `keepAtMost` frames: then everything is folded. 0: nothing to fold.
 */
export const foldLength = (frames: ReadonlyArray<FrameHeader>, keepAtMost: number): number => {
  for (let i = frames.length - 2; i >= 0; i--) {
    if (frames[i].commitSize !== 0) return frames.length - (i + 1) > keepAtMost ? frames.length : i + 1
  }
  return frames.length > keepAtMost ? frames.length : 0
}
