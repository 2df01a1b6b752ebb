/**
 * The WAL codec shared by the server and the client: SQLite WAL files (parse, validate, encode, append),
 * the protocol's wire frames (24-byte header + one page) and materialising frames onto a base file.
 *
 * Everything here is pure: bytes in, bytes or values out. See sqlite.org/walformat.html.
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"

/**
 * The only page size the protocol speaks.
 *
 * @since 0.1.0
 * @category constants
 */
export const PAGE_SIZE = 4096

/**
 * @since 0.1.0
 * @category constants
 */
export const FRAME_HEADER_SIZE = 24

/**
 * Bytes of one frame on the wire and in a WAL file.
 *
 * @since 0.1.0
 * @category constants
 */
export const FRAME_SIZE = FRAME_HEADER_SIZE + PAGE_SIZE

/**
 * @since 0.1.0
 * @category constants
 */
export const WAL_HEADER_SIZE = 32

/**
 * Magic with checksums over little-endian words (what SQLite writes on x86 and ARM).
 *
 * @since 0.1.0
 * @category constants
 */
export const MAGIC_LE = 0x377f0682

/**
 * Magic with checksums over big-endian words.
 *
 * @since 0.1.0
 * @category constants
 */
export const MAGIC_BE = 0x377f0683

/**
 * @since 0.1.0
 * @category constants
 */
export const FORMAT_VERSION = 3007000

/**
 * One frame: the page that replaces page `pgno`. `commitSize` is the database size in pages after the
 * transaction, non-zero only on the last frame of a transaction.
 *
 * @since 0.1.0
 * @category models
 */
export interface Frame {
  readonly pgno: number
  readonly commitSize: number
  readonly page: Uint8Array
}

/**
 * @since 0.1.0
 * @category models
 */
export interface WalHeader {
  readonly bigEndian: boolean
  readonly pageSize: number
  readonly checkpointSeq: number
  readonly salt1: number
  readonly salt2: number
}

/**
 * A parsed WAL: its header, its committed frames in order (frame number = index + 1) and the running
 * checksum after the last of them, which is where an append continues.
 *
 * @since 0.1.0
 * @category models
 */
export interface Wal {
  readonly header: WalHeader
  readonly frames: ReadonlyArray<Frame>
  readonly checksum: readonly [number, number]
}

/**
 * Why frames were refused: a body that is not whole frames, page number 0, a commit size smaller than a
 * page its transaction writes, or a page that is not `PAGE_SIZE` bytes.
 *
 * @since 0.1.0
 * @category errors
 */
export class WalFrameError extends Schema.TaggedError<WalFrameError>()("WalFrameError", {
  reason: Schema.Literal("BodySize", "PageNumber", "CommitSize", "PageSize", "Empty"),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * Size of a WAL file that holds exactly `frames` frames.
 *
 * @since 0.1.0
 * @category constructors
 */
export const walSize = (frames: number): number => WAL_HEADER_SIZE + frames * FRAME_SIZE

// The running checksum of the WAL format: two u32 accumulators over pairs of u32 words.
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1

const checksumInto = (
  view: DataView,
  offset: number,
  length: number,
  littleEndian: boolean,
  s0In: number,
  s1In: number
): [number, number] => {
  let s0 = s0In
  let s1 = s1In
  const end = offset + length
  const at = view.byteOffset + offset
  if (littleEndian && HOST_LITTLE_ENDIAN && at % 4 === 0) {
    // the common case (a WAL written on a little-endian machine): words read in place, several times faster
    const words = new Uint32Array(view.buffer, at, length >>> 2)
    for (let i = 0; i < words.length; i += 2) {
      s0 = (s0 + words[i] + s1) >>> 0
      s1 = (s1 + words[i + 1] + s0) >>> 0
    }
    return [s0, s1]
  }
  for (let i = offset; i < end; i += 8) {
    s0 = (s0 + view.getUint32(i, littleEndian) + s1) >>> 0
    s1 = (s1 + view.getUint32(i + 4, littleEndian) + s0) >>> 0
  }
  return [s0, s1]
}

const viewOf = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/**
 * An empty WAL with the given salts; the checksum starts from its header.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options?: {
  readonly salt1?: number | undefined
  readonly salt2?: number | undefined
  readonly checkpointSeq?: number | undefined
  readonly bigEndian?: boolean | undefined
}): Wal => {
  const header: WalHeader = {
    bigEndian: options?.bigEndian ?? false,
    pageSize: PAGE_SIZE,
    checkpointSeq: (options?.checkpointSeq ?? 0) >>> 0,
    salt1: (options?.salt1 ?? 0x5a11ed01) >>> 0,
    salt2: (options?.salt2 ?? 0x00c0ffee) >>> 0
  }
  const bytes = encodeHeaderBytes(header)
  return { header, frames: [], checksum: headerChecksum(bytes, header.bigEndian) }
}

const headerChecksum = (headerBytes: Uint8Array, bigEndian: boolean) =>
  checksumInto(viewOf(headerBytes), 0, 24, !bigEndian, 0, 0)

const encodeHeaderBytes = (header: WalHeader): Uint8Array => {
  const out = new Uint8Array(WAL_HEADER_SIZE)
  const view = viewOf(out)
  view.setUint32(0, header.bigEndian ? MAGIC_BE : MAGIC_LE)
  view.setUint32(4, FORMAT_VERSION)
  view.setUint32(8, header.pageSize)
  view.setUint32(12, header.checkpointSeq)
  view.setUint32(16, header.salt1)
  view.setUint32(20, header.salt2)
  const [c1, c2] = checksumInto(view, 0, 24, !header.bigEndian, 0, 0)
  view.setUint32(24, c1)
  view.setUint32(28, c2)
  return out
}

/**
 * The 32 bytes of a WAL header, checksum included.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeHeader = (wal: Wal): Uint8Array => encodeHeaderBytes(wal.header)

/**
 * Parses a WAL file the way SQLite's recovery does: a header with a valid magic, version, page size and
 * checksum, then frames while their salts and cumulative checksums are valid; only frames up to the last
 * commit frame are kept. `None` when the header itself is absent or invalid (SQLite ignores such a WAL).
 *
 * @since 0.1.0
 * @category decoding
 */
export const parse = (bytes: Uint8Array): Option.Option<Wal> => {
  if (bytes.byteLength < WAL_HEADER_SIZE) return Option.none()
  const view = viewOf(bytes)
  const magic = view.getUint32(0)
  if (magic !== MAGIC_LE && magic !== MAGIC_BE) return Option.none()
  const bigEndian = magic === MAGIC_BE
  const littleEndian = !bigEndian
  if (view.getUint32(4) !== FORMAT_VERSION) return Option.none()
  const pageSize = view.getUint32(8)
  if (pageSize !== PAGE_SIZE) return Option.none()
  const [s0, s1] = checksumInto(view, 0, 24, littleEndian, 0, 0)
  if (s0 !== view.getUint32(24) || s1 !== view.getUint32(28)) return Option.none()
  const header: WalHeader = {
    bigEndian,
    pageSize,
    checkpointSeq: view.getUint32(12),
    salt1: view.getUint32(16),
    salt2: view.getUint32(20)
  }
  const tail = parseFrames(bytes.subarray(WAL_HEADER_SIZE), header, [s0, s1])
  return Option.some({ header, frames: tail.frames, checksum: tail.checksum })
}

/**
 * What {@link scanFrames} found: `valid` frames while salts and cumulative checksums hold (`checksum` is
 * the running checksum after the last of them), of which the first `committed` end with a commit frame
 * (`committedChecksum` is the running checksum there).
 *
 * @since 0.1.0
 * @category models
 */
export interface FrameScan {
  readonly valid: number
  readonly checksum: readonly [number, number]
  readonly committed: number
  readonly committedChecksum: readonly [number, number]
}

/**
 * Validates the frames that follow a known point of a WAL without copying them: `bytes` starts at a frame
 * boundary, `checksum` is the running checksum there. Scanning a long tail a piece at a time (each piece
 * from the previous piece's `checksum`, while every frame of it was valid) checks it in bounded memory.
 *
 * @since 0.1.0
 * @category decoding
 */
export const scanFrames = (bytes: Uint8Array, header: WalHeader, checksum: readonly [number, number]): FrameScan => {
  const view = viewOf(bytes)
  const littleEndian = !header.bigEndian
  let [s0, s1] = checksum
  let valid = 0
  let committed = 0
  let committedChecksum: readonly [number, number] = checksum
  for (let offset = 0; offset + FRAME_SIZE <= bytes.byteLength; offset += FRAME_SIZE) {
    if (view.getUint32(offset) === 0) break
    if (view.getUint32(offset + 8) !== header.salt1 || view.getUint32(offset + 12) !== header.salt2) break
    ;[s0, s1] = checksumInto(view, offset, 8, littleEndian, s0, s1)
    ;[s0, s1] = checksumInto(view, offset + FRAME_HEADER_SIZE, PAGE_SIZE, littleEndian, s0, s1)
    if (s0 !== view.getUint32(offset + 16) || s1 !== view.getUint32(offset + 20)) break
    valid++
    if (view.getUint32(offset + 4) !== 0) {
      committed = valid
      committedChecksum = [s0, s1]
    }
  }
  return { valid, checksum: [s0, s1], committed, committedChecksum }
}

/**
 * Parses the frames that follow a known point of a WAL: `bytes` starts at a frame boundary, `checksum` is
 * the running checksum there (after the header, or after the frames before `bytes`). Validation is the
 * same as `parse`'s: frames while salts and cumulative checksums hold, kept up to the last commit frame.
 * Lets a reader that already validated a prefix check only the tail.
 *
 * @since 0.1.0
 * @category decoding
 */
export const parseFrames = (
  bytes: Uint8Array,
  header: WalHeader,
  checksum: readonly [number, number]
): { readonly frames: ReadonlyArray<Frame>; readonly checksum: readonly [number, number] } => {
  const scan = scanFrames(bytes, header, checksum)
  const view = viewOf(bytes)
  const frames: Array<Frame> = new Array(scan.committed)
  for (let i = 0; i < scan.committed; i++) {
    const offset = i * FRAME_SIZE
    frames[i] = {
      pgno: view.getUint32(offset),
      commitSize: view.getUint32(offset + 4),
      page: bytes.subarray(offset + FRAME_HEADER_SIZE, offset + FRAME_SIZE)
    }
  }
  return { frames, checksum: scan.committedChecksum }
}

/**
 * The 24-byte headers of `frames` appended to `wal`, one after another (salts and cumulative checksums
 * computed over each header and its page where the page lies): header i followed by page i, for each i,
 * are the bytes {@link append} gives, without a copy of any page. Answers them with the running checksum
 * after the last frame.
 *
 * @since 0.1.0
 * @category encoding
 */
export const appendHeaders = (
  wal: Wal,
  frames: ReadonlyArray<Frame>
): { readonly headers: Uint8Array; readonly checksum: readonly [number, number] } => {
  const headers = new Uint8Array(frames.length * FRAME_HEADER_SIZE)
  const view = viewOf(headers)
  const littleEndian = !wal.header.bigEndian
  let [s0, s1] = wal.checksum
  for (let i = 0; i < frames.length; i++) {
    const frame = frames[i]
    if (frame.page.byteLength !== PAGE_SIZE) throw new Error(`WalFrame.append: page of ${frame.page.byteLength} bytes`)
    const offset = i * FRAME_HEADER_SIZE
    view.setUint32(offset, frame.pgno)
    view.setUint32(offset + 4, frame.commitSize)
    view.setUint32(offset + 8, wal.header.salt1)
    view.setUint32(offset + 12, wal.header.salt2)
    ;[s0, s1] = checksumInto(view, offset, 8, littleEndian, s0, s1)
    ;[s0, s1] = checksumInto(viewOf(frame.page), 0, PAGE_SIZE, littleEndian, s0, s1)
    view.setUint32(offset + 16, s0)
    view.setUint32(offset + 20, s1)
  }
  return { headers, checksum: [s0, s1] }
}

/**
 * Appends frames to a WAL. Returns the new WAL and the bytes to write after the existing file's
 * `walSize(wal.frames.length)` bytes (salts and cumulative checksums computed for this WAL).
 *
 * @since 0.1.0
 * @category encoding
 */
export const append = (
  wal: Wal,
  frames: ReadonlyArray<Frame>
): { readonly wal: Wal; readonly bytes: Uint8Array } => {
  const { checksum, headers } = appendHeaders(wal, frames)
  const out = new Uint8Array(frames.length * FRAME_SIZE)
  const appended: Array<Frame> = []
  for (let i = 0; i < frames.length; i++) {
    const frame = frames[i]
    const offset = i * FRAME_SIZE
    out.set(headers.subarray(i * FRAME_HEADER_SIZE, (i + 1) * FRAME_HEADER_SIZE), offset)
    out.set(frame.page, offset + FRAME_HEADER_SIZE)
    appended.push({
      pgno: frame.pgno,
      commitSize: frame.commitSize,
      page: out.subarray(offset + FRAME_HEADER_SIZE, offset + FRAME_SIZE)
    })
  }
  return { wal: { header: wal.header, frames: wal.frames.concat(appended), checksum }, bytes: out }
}

/**
 * A whole WAL file: header then every frame.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encode = (wal: Wal): Uint8Array => {
  const rebuilt = append(make(wal.header), wal.frames)
  const out = new Uint8Array(walSize(wal.frames.length))
  out.set(encodeHeaderBytes(wal.header), 0)
  out.set(rebuilt.bytes, WAL_HEADER_SIZE)
  return out
}

/**
 * The bytes `frames` lie in when they already are their wire form, one after another in one buffer (each
 * page preceded by its header, with pgno and commit size and zeroed salts and checksums): a view of them,
 * which {@link encodeWire} answers instead of a copy (the first touch of a fresh buffer costs a page fault
 * per 4 KiB). Undefined for frames laid out any other way.
 */
const wireLayout = (frames: ReadonlyArray<Frame>): Uint8Array | undefined => {
  if (frames.length === 0) return undefined
  const first = frames[0]!.page
  const start = first.byteOffset - FRAME_HEADER_SIZE
  const length = frames.length * FRAME_SIZE
  if (start < 0 || start + length > first.buffer.byteLength) return undefined
  const view = new DataView(first.buffer, start, length)
  for (let i = 0; i < frames.length; i++) {
    const frame = frames[i]!
    const offset = i * FRAME_SIZE
    if (
      frame.page.buffer !== first.buffer || frame.page.byteOffset !== start + offset + FRAME_HEADER_SIZE ||
      frame.page.byteLength !== PAGE_SIZE || view.getUint32(offset) !== frame.pgno ||
      view.getUint32(offset + 4) !== frame.commitSize
    ) return undefined
    for (let at = offset + 8; at < offset + FRAME_HEADER_SIZE; at += 4) if (view.getUint32(at) !== 0) return undefined
  }
  return new Uint8Array(first.buffer, start, length)
}

/**
 * Frames in wire form: for each, a 24-byte header (pgno, commit size, then salts and checksums that a
 * receiver ignores, sent as zero) followed by the page. Frames that already lie in that form, one after
 * another in one buffer (as a client reads the frames it pushes), are answered as a view of that buffer,
 * not a copy: the answer is then valid as long as those bytes are.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeWire = (frames: ReadonlyArray<Frame>): Uint8Array => {
  const laidOut = wireLayout(frames)
  if (laidOut !== undefined) return laidOut
  const out = new Uint8Array(frames.length * FRAME_SIZE)
  const view = viewOf(out)
  for (let i = 0; i < frames.length; i++) {
    const offset = i * FRAME_SIZE
    view.setUint32(offset, frames[i].pgno)
    view.setUint32(offset + 4, frames[i].commitSize)
    out.set(frames[i].page, offset + FRAME_HEADER_SIZE)
  }
  return out
}

/**
 * Decodes wire frames. Only `pgno`, the commit size and the page are read; the pages are views into
 * `bytes`. Fails on a body that is not whole frames or on page number 0.
 *
 * @since 0.1.0
 * @category decoding
 */
export const decodeWire = (bytes: Uint8Array): Either.Either<ReadonlyArray<Frame>, WalFrameError> => {
  if (bytes.byteLength % FRAME_SIZE !== 0) {
    return Either.left(
      new WalFrameError({
        reason: "BodySize",
        message: `body of ${bytes.byteLength} bytes is not a whole number of ${FRAME_SIZE}-byte frames`
      })
    )
  }
  const view = viewOf(bytes)
  const frames: Array<Frame> = []
  for (let offset = 0; offset < bytes.byteLength; offset += FRAME_SIZE) {
    const pgno = view.getUint32(offset)
    if (pgno === 0) {
      return Either.left(
        new WalFrameError({ reason: "PageNumber", message: `frame ${frames.length} writes page number 0` })
      )
    }
    frames.push({
      pgno,
      commitSize: view.getUint32(offset + 4),
      page: bytes.subarray(offset + FRAME_HEADER_SIZE, offset + FRAME_SIZE)
    })
  }
  return Either.right(frames)
}

/**
 * Checks that frames can form transactions of a database: every commit frame's size covers every page
 * its transaction writes. Frames after the last commit frame are an unfinished transaction and are
 * checked when their commit frame arrives (pass `pending` from earlier requests).
 *
 * @since 0.1.0
 * @category validation
 */
export const validateTransactions = (
  frames: ReadonlyArray<Frame>,
  pending: ReadonlyArray<Frame> = []
): Either.Either<void, WalFrameError> => {
  let maxPgno = 0
  for (const frame of pending) maxPgno = Math.max(maxPgno, frame.pgno)
  for (let i = 0; i < frames.length; i++) {
    const frame = frames[i]
    if (frame.pgno === 0) {
      return Either.left(new WalFrameError({ reason: "PageNumber", message: `frame ${i} writes page number 0` }))
    }
    if (frame.page.byteLength !== PAGE_SIZE) {
      return Either.left(new WalFrameError({ reason: "PageSize", message: `frame ${i} has a page of ${frame.page.byteLength} bytes` }))
    }
    maxPgno = Math.max(maxPgno, frame.pgno)
    if (frame.commitSize !== 0) {
      if (frame.commitSize < maxPgno) {
        return Either.left(
          new WalFrameError({
            reason: "CommitSize",
            message: `frame ${i} commits a database of ${frame.commitSize} pages but its transaction writes page ${maxPgno}`
          })
        )
      }
      maxPgno = 0
    }
  }
  return Either.right(undefined)
}

/**
 * The number of frames up to and including the last commit frame.
 *
 * @since 0.1.0
 * @category getters
 */
export const committedLength = (frames: ReadonlyArray<Frame>): number => {
  for (let i = frames.length - 1; i >= 0; i--) {
    if (frames[i].commitSize !== 0) return i + 1
  }
  return 0
}

/**
 * Whether two frames are the same frame (page number, commit size and page bytes).
 *
 * @since 0.1.0
 * @category getters
 */
export const equals = (a: Frame, b: Frame): boolean =>
  a.pgno === b.pgno && a.commitSize === b.commitSize && Buffer.compare(a.page, b.page) === 0

/**
 * Applies frames to a base database file, as a TRUNCATE checkpoint does: the newest copy of each page
 * wins and the file is cut (or zero-extended) to the last commit frame's size. Frames after the last
 * commit frame are ignored. With no commit frame the base is returned unchanged.
 *
 * @since 0.1.0
 * @category materialize
 */
export const applyFrames = (base: Uint8Array, frames: ReadonlyArray<Frame>): Uint8Array => {
  const committed = committedLength(frames)
  if (committed === 0) return base
  const pages = frames[committed - 1].commitSize
  const out = new Uint8Array(pages * PAGE_SIZE)
  out.set(base.byteLength > out.byteLength ? base.subarray(0, out.byteLength) : base, 0)
  for (let i = 0; i < committed; i++) {
    const frame = frames[i]
    if (frame.pgno <= pages) out.set(frame.page, (frame.pgno - 1) * PAGE_SIZE)
  }
  return out
}
