/**
 * The reliability campaign's hostile-input suite (issue 6): every kind of request below is sent to a
 * real server on 127.0.0.1 over both store layers, with and without auth. Each must get a 4xx with a
 * JSON `{"error": ...}` body, the server must still answer `/info`, and what it stores must stay byte
 * for byte the same: the export and pulled frames of every database, and on disk every file of the
 * data directory. Kinds are counted; docs/reliability.md reports the count.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as nodeHttpGuard from "../src/internal/server/nodeHttpGuard.js"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"
import * as Raw from "./support/rawHttp.js"
import { Pusher } from "./support/rawPusher.js"
import * as RawPusher from "./support/rawPusher.js"

const TOKEN = "hostile-token-\u00e9-7"
const MAX_FRAMES = 64
const FRAME = WalFrame.FRAME_SIZE
const REQUEST_TIMEOUT_MS = 1_000
const HEADERS_TIMEOUT_MS = 500
const VICTIM = "victim"
const OTHER = "other"

class TestServer extends Context.Tag("test/Hostile/TestServer")<TestServer, {
  readonly base: string
  readonly dir: string | undefined
  readonly token: string | undefined
}>() {}

type StoreKind = "memory" | "disk"

const serverLayer = (kind: StoreKind, auth: boolean, requestTimeoutMs = REQUEST_TIMEOUT_MS) =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => H.tempDir(`hostile-${kind}`)),
      (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
    )
    // No rolls: the cases name generation 1 as current and 2 as a future one, and the storm's pushers write
    // enough frames in a few seconds on a quiet machine to pass the default roll rule.
    const storeOptions: ServerStore.Options = { batonIdleMs: 600_000, generationGrowth: "never" }
    const store = kind === "memory"
      ? ServerStore.layerMemory(storeOptions)
      : ServerStore.layer({ ...storeOptions, directory: dir })
    const token = auth ? TOKEN : undefined
    return Layer.effect(
      TestServer,
      Effect.map(SyncServer.baseUrl, (base) => ({ base, dir: kind === "disk" ? dir : undefined, token }))
    ).pipe(
      Layer.provide(SyncServer.layerNode({
        port: 0,
        authToken: token === undefined ? undefined : Redacted.make(token),
        maxBodyBytes: MAX_FRAMES * FRAME,
        requestTimeoutMs,
        headersTimeoutMs: HEADERS_TIMEOUT_MS
      })),
      Layer.provide(store),
      Layer.provide(Logger.replace(Logger.defaultLogger, Logger.none))
    )
  }))

// ---------------------------------------------------------------------------------------------------
// What the cases are built from, filled in by each suite's seed step.

interface Seed {
  /** Committed frames of VICTIM and the size (pages) of its database. */
  head: number
  pages: number
  /** A valid next transaction of VICTIM, never pushed by a hostile case. */
  next: ReadonlyArray<WalFrame.Frame>
  /** Current pages 1 and 2 of VICTIM (the header page and table t's root). */
  page1: Uint8Array
  page2: Uint8Array
  /** The baton of an open transaction on OTHER. */
  otherBaton: string
  /** The baton of VICTIM's last transaction, finished. */
  closedBaton: string
  /** The last stored frame of VICTIM. */
  last: WalFrame.Frame
  /** Authorization header lines for raw requests (none without auth). */
  authLines: ReadonlyArray<string>
}

type Send =
  | { readonly _tag: "http"; readonly request: H.RawRequest; readonly anonymous?: boolean }
  | { readonly _tag: "raw"; readonly send: Raw.RawSend }

interface Kind {
  readonly title: string
  readonly group: "name" | "number" | "body" | "http" | "slow" | "frames" | "protocol" | "method" | "auth"
  /** Only meaningful when the server requires a token. */
  readonly authOnly?: boolean
  readonly build: (seed: Seed) => Send
  readonly status: number
  readonly error: string
}

const http = (request: H.RawRequest, anonymous = false): Send => ({ _tag: "http", request, anonymous })
const raw = (send: Raw.RawSend): Send => ({ _tag: "raw", send })
const bytes = (...parts: ReadonlyArray<string | Uint8Array>) =>
  Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p, "latin1") : Buffer.from(p))))

const page = (fill: number | ((i: number) => number)) => {
  const p = new Uint8Array(WalFrame.PAGE_SIZE)
  for (let i = 0; i < p.byteLength; i++) p[i] = typeof fill === "number" ? fill : fill(i) & 255
  return p
}
const edit = (source: Uint8Array, f: (p: Uint8Array, view: DataView) => void) => {
  const p = Uint8Array.from(source)
  f(p, new DataView(p.buffer))
  return p
}
const frame = (pgno: number, commitSize: number, p: Uint8Array): WalFrame.Frame => ({ pgno, commitSize, page: p })
const wire = (...frames: ReadonlyArray<WalFrame.Frame>) => WalFrame.encodeWire(frames)

const syncPath = (g: number | string, start: number | string, end: number | string, baton?: string) =>
  `/db/${VICTIM}/sync/${g}/${start}/${end}${baton === undefined ? "" : `/${baton}`}`
/** A push of `frames` at the head of VICTIM. */
const pushAt = (s: Seed, frames: ReadonlyArray<WalFrame.Frame>, baton?: string): Send =>
  http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 1 + frames.length, baton), body: wire(...frames) })
/** `next` with its commit frame's size replaced. */
const withCommitSize = (s: Seed, size: number) =>
  s.next.map((f) => (f.commitSize === 0 ? f : { ...f, commitSize: size }))

const rawPush = (s: Seed, frames: number, extraHeaders: ReadonlyArray<string>, body: Uint8Array | string) =>
  bytes(Raw.head("POST", syncPath(1, s.head + 1, s.head + 1 + frames), [...s.authLines, ...extraHeaders]), body)

// ---------------------------------------------------------------------------------------------------
// The kinds of hostile request.

const KINDS: ReadonlyArray<Kind> = [
  // Database names: traversal, encodings, lengths.
  { group: "name", title: "raw '..' as the name", build: () => http({ path: "/db/../info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "'..%2F..%2Fetc' traversal", build: () => http({ path: "/db/..%2F..%2Fetc/info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "'%2e%2e' (encoded dots)", build: () => http({ path: "/db/%2e%2e/export/1" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "'..%5C..' (encoded backslash)", build: () => http({ path: "/db/..%5C..%5Cstore/info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "double-encoded '%252e%252e'", build: () => http({ path: "/db/%252e%252e/info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "a traversal name on a push with a valid body", build: (s) => http({ method: "POST", path: `/db/..%2F..%2Ftmp%2Fx/sync/1/${s.head + 1}/${s.head + 1 + s.next.length}`, body: wire(...s.next) }), status: 400, error: "bad_database_name" },
  { group: "name", title: "an encoded NUL inside the name", build: () => http({ path: "/db/a%00b/info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "a name that is only an encoded NUL", build: () => http({ path: "/db/%00/export/1" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "an encoded slash inside the name", build: () => http({ path: `/db/${VICTIM}%2Fother/info` }), status: 400, error: "bad_database_name" },
  { group: "name", title: "'.' as the name", build: () => http({ path: "/db/./info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "a name with an encoded space", build: () => http({ path: "/db/a%20b/info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "a 65-character name", build: () => http({ path: `/db/${"a".repeat(65)}/info` }), status: 400, error: "bad_database_name" },
  { group: "name", title: "a 10 000-character name", build: () => http({ path: `/db/${"a".repeat(10_000)}/info` }), status: 400, error: "bad_database_name" },
  { group: "name", title: "percent-encoded unicode letters", build: () => http({ path: "/db/%C3%A9t%C3%A9/info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "raw UTF-8 bytes in the path", build: (s) => raw({ bytes: bytes(`GET /db/`, Buffer.from("\u00e9t\u00e9\u{1F600}", "utf8"), ` HTTP/1.1\r\nHost: x\r\n${s.authLines.map((l) => `${l}\r\n`).join("")}\r\n`) }), status: 400, error: "bad_request" },
  { group: "name", title: "an empty name", build: () => http({ path: "/db//info" }), status: 400, error: "bad_database_name" },
  { group: "name", title: "broken percent-encoding", build: () => http({ path: "/db/%zz/info" }), status: 400, error: "bad_path" },
  { group: "name", title: "a lone '%' at the end of the name", build: () => http({ path: "/db/abc%/info" }), status: 400, error: "bad_path" },

  // Path numbers.
  { group: "number", title: "generation 0", build: () => http({ path: `/db/${VICTIM}/export/0` }), status: 400, error: "bad_number" },
  { group: "number", title: "generation -1", build: () => http({ path: `/db/${VICTIM}/export/-1` }), status: 400, error: "bad_number" },
  { group: "number", title: "generation in hex (0x1)", build: () => http({ path: `/db/${VICTIM}/export/0x1` }), status: 400, error: "bad_number" },
  { group: "number", title: "generation with an exponent (1e0)", build: () => http({ path: `/db/${VICTIM}/export/1e0` }), status: 400, error: "bad_number" },
  { group: "number", title: "generation with a leading '+'", build: () => http({ path: `/db/${VICTIM}/export/+1` }), status: 400, error: "bad_number" },
  { group: "number", title: "generation with a leading zero", build: () => http({ path: `/db/${VICTIM}/export/01` }), status: 400, error: "bad_number" },
  { group: "number", title: "fractional generation (1.0)", build: () => http({ path: `/db/${VICTIM}/sync/1.0/1/2` }), status: 400, error: "bad_number" },
  { group: "number", title: "generation 2^31 (past 32-bit)", build: () => http({ path: `/db/${VICTIM}/export/2147483648` }), status: 400, error: "bad_number" },
  { group: "number", title: "a 40-digit generation", build: () => http({ path: `/db/${VICTIM}/export/${"9".repeat(40)}` }), status: 400, error: "bad_number" },
  { group: "number", title: "an empty generation", build: () => http({ path: `/db/${VICTIM}/sync//1/2` }), status: 400, error: "bad_path" },
  { group: "number", title: "start 0 on a pull", build: () => http({ path: syncPath(1, 0, 2) }), status: 400, error: "bad_number" },
  { group: "number", title: "start -1 on a push", build: (s) => http({ method: "POST", path: syncPath(1, -1, 0), body: wire(s.next[0]) }), status: 400, error: "bad_number" },
  { group: "number", title: "start in hex (0x1)", build: () => http({ path: syncPath(1, "0x1", 2) }), status: 400, error: "bad_number" },
  { group: "number", title: "start with an encoded space", build: () => http({ path: syncPath(1, "%201", 2) }), status: 400, error: "bad_number" },
  { group: "number", title: "end with an exponent (2e1)", build: () => http({ path: syncPath(1, 1, "2e1") }), status: 400, error: "bad_number" },
  { group: "number", title: "end with a leading '+'", build: () => http({ path: syncPath(1, 1, "+3") }), status: 400, error: "bad_number" },
  { group: "number", title: "fractional end (2.5)", build: () => http({ path: syncPath(1, 1, "2.5") }), status: 400, error: "bad_number" },
  { group: "number", title: "end 9 999 999 999 (huge)", build: () => http({ path: syncPath(1, 1, "9999999999") }), status: 400, error: "bad_number" },
  { group: "number", title: "end 'Infinity'", build: () => http({ path: syncPath(1, 1, "Infinity") }), status: 400, error: "bad_number" },
  { group: "number", title: "end equal to start on a pull", build: () => http({ path: syncPath(1, 5, 5) }), status: 400, error: "bad_range" },
  { group: "number", title: "end before start on a push", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 3, s.head + 1), body: wire(...s.next.slice(0, 2)) }), status: 400, error: "bad_range" },
  { group: "number", title: "end equal to start on a push with an empty body", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 1), body: new Uint8Array(0) }), status: 400, error: "bad_range" },

  // Bodies: sizes that do not match, limits.
  { group: "body", title: "a partial frame", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), body: wire(s.next[0]).subarray(0, FRAME - 1) }), status: 400, error: "bad_frames" },
  { group: "body", title: "one byte more than the frames", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), body: bytes(wire(s.next[0]), "x") }), status: 400, error: "bad_frames" },
  { group: "body", title: "fewer frames than end - start", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 4), body: wire(s.next[0]) }), status: 400, error: "bad_frames" },
  { group: "body", title: "more frames than end - start", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), body: wire(s.next[0], s.next[0]) }), status: 400, error: "bad_frames" },
  { group: "body", title: "an empty push body", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), body: new Uint8Array(0) }), status: 400, error: "bad_frames" },
  { group: "body", title: "a chunked body that is not whole frames", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), body: [new Uint8Array(FRAME), new Uint8Array(100)] }), status: 400, error: "bad_frames" },
  { group: "body", title: "a content-length over the limit", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), body: new Uint8Array((MAX_FRAMES + 1) * FRAME) }), status: 413, error: "too_large" },
  { group: "body", title: "a declared content-length over the limit with no body sent", build: (s) => raw({ bytes: rawPush(s, 1, [`Content-Length: ${1024 * 1024 * 1024}`], "") }), status: 413, error: "too_large" },
  { group: "body", title: "a chunked body over the limit", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), body: Array.from({ length: 5 }, () => new Uint8Array(16 * FRAME)) }), status: 413, error: "too_large" },
  { group: "body", title: "more frames in the path than a push may carry", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2 + MAX_FRAMES) }), status: 413, error: "too_large" },
  { group: "body", title: "a content-length that disagrees with the path", build: (s) => raw({ bytes: rawPush(s, 1, [`Content-Length: ${2 * FRAME}`], wire(s.next[0], s.next[0])) }), status: 400, error: "bad_frames" },

  // HTTP framing that Node's parser refuses before any route runs.
  { group: "http", title: "a non-numeric content-length", build: (s) => raw({ bytes: rawPush(s, 1, ["Content-Length: abc"], "") }), status: 400, error: "bad_request" },
  { group: "http", title: "two different content-lengths", build: (s) => raw({ bytes: rawPush(s, 1, [`Content-Length: ${FRAME}`, "Content-Length: 10"], "") }), status: 400, error: "bad_request" },
  { group: "http", title: "content-length together with chunked encoding", build: (s) => raw({ bytes: rawPush(s, 1, [`Content-Length: ${FRAME}`, "Transfer-Encoding: chunked"], "0\r\n\r\n") }), status: 400, error: "bad_request" },
  { group: "http", title: "a broken chunk size", build: (s) => raw({ bytes: rawPush(s, 1, ["Transfer-Encoding: chunked"], "zz\r\nabc\r\n0\r\n\r\n") }), status: 400, error: "bad_request" },
  { group: "http", title: "a header block over 16 KiB", build: (s) => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, [...s.authLines, `X-Padding: ${"a".repeat(20_000)}`]) }), status: 431, error: "header_too_large" },
  { group: "http", title: "a path over 16 KiB", build: (s) => raw({ bytes: Raw.head("GET", `/db/${"a".repeat(20_000)}/info`, s.authLines) }), status: 431, error: "header_too_large" },
  { group: "http", title: "a garbage request line", build: () => raw({ bytes: "HELLO THERE\r\n\r\n" }), status: 400, error: "bad_request" },
  { group: "http", title: "an unknown method", build: (s) => raw({ bytes: Raw.head("FROB", `/db/${VICTIM}/info`, s.authLines) }), status: 400, error: "bad_request" },
  { group: "http", title: "HTTP version 3.0 in the request line", build: (s) => raw({ bytes: `GET /db/${VICTIM}/info HTTP/3.0\r\nHost: x\r\n${s.authLines.map((l) => `${l}\r\n`).join("")}\r\n` }), status: 400, error: "bad_request" },
  { group: "http", title: "a NUL byte in a header value", build: (s) => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, [...s.authLines, "X-Evil: a\u0000b"]) }), status: 400, error: "bad_request" },
  { group: "http", title: "a header name with a space", build: (s) => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, [...s.authLines, "Bad Header: x"]) }), status: 400, error: "bad_request" },
  { group: "http", title: "CONNECT to another host", build: (s) => raw({ bytes: Raw.head("CONNECT", "127.0.0.1:22", s.authLines) }), status: 405, error: "method_not_allowed" },
  { group: "http", title: "an obs-fold header continuation line", build: (s) => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, [...s.authLines, "X-A: 1", "  continued"]) }), status: 400, error: "bad_request" },
  { group: "http", title: "bare LF line endings", build: (s) => raw({ bytes: `GET /db/${VICTIM}/info HTTP/1.1\nHost: x\n${s.authLines.map((l) => `${l}\n`).join("")}\n` }), status: 400, error: "bad_request" },
  { group: "http", title: "a tab between method and path", build: (s) => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, s.authLines).replace("GET ", "GET\t") }), status: 400, error: "bad_request" },
  { group: "http", title: "a negative content-length", build: (s) => raw({ bytes: rawPush(s, 1, ["Content-Length: -1"], "") }), status: 400, error: "bad_request" },
  { group: "http", title: "a content-length with a '+'", build: (s) => raw({ bytes: rawPush(s, 1, [`Content-Length: +${FRAME}`], wire(s.next[0])) }), status: 400, error: "bad_request" },
  { group: "http", title: "chunked not the last transfer coding", build: (s) => raw({ bytes: rawPush(s, 1, ["Transfer-Encoding: chunked, gzip"], "3\r\nabc\r\n0\r\n\r\n") }), status: 400, error: "bad_request" },
  { group: "http", title: "transfer coding 'identity' without a length", build: (s) => raw({ bytes: rawPush(s, 1, ["Transfer-Encoding: identity"], wire(s.next[0])) }), status: 400, error: "bad_request" },

  // Clients that stall: the server answers within its request timeout and holds nothing.
  { group: "slow", title: "a push body that stops after 100 bytes", build: (s) => raw({ bytes: rawPush(s, s.next.length, [`Content-Length: ${s.next.length * FRAME}`], wire(...s.next).subarray(0, 100)), timeoutMs: REQUEST_TIMEOUT_MS + 3_000 }), status: 408, error: "request_timeout" },
  { group: "slow", title: "a push body trickled one byte every 100 ms", build: (s) => raw({ bytes: rawPush(s, s.next.length, [`Content-Length: ${s.next.length * FRAME}`], ""), drip: { bytes: wire(...s.next), everyMs: 100 }, timeoutMs: REQUEST_TIMEOUT_MS + 3_000 }), status: 408, error: "request_timeout" },
  { group: "slow", title: "a chunked push that never sends its last chunk", build: (s) => raw({ bytes: rawPush(s, 1, ["Transfer-Encoding: chunked"], `${FRAME.toString(16)}\r\n`), timeoutMs: REQUEST_TIMEOUT_MS + 3_000 }), status: 408, error: "request_timeout" },
  { group: "slow", title: "a chunk size of 2^64-1, then a stall", build: (s) => raw({ bytes: rawPush(s, 1, ["Transfer-Encoding: chunked"], "ffffffffffffffff\r\nabc"), timeoutMs: REQUEST_TIMEOUT_MS + 3_000 }), status: 408, error: "request_timeout" },
  { group: "slow", title: "headers that never end", build: (s) => raw({ bytes: `GET /db/${VICTIM}/info HTTP/1.1\r\nHost: x\r\n${s.authLines.map((l) => `${l}\r\n`).join("")}X-Slow: 1\r\n`, timeoutMs: HEADERS_TIMEOUT_MS + 3_000 }), status: 408, error: "request_timeout" },
  { group: "slow", title: "headers trickled one byte every 100 ms", build: (s) => raw({ bytes: "G", drip: { bytes: Buffer.from(Raw.head("GET", `/db/${VICTIM}/info`, s.authLines).slice(1), "latin1"), everyMs: 100 }, timeoutMs: HEADERS_TIMEOUT_MS + 3_000 }), status: 408, error: "request_timeout" },

  // Frames: malformed on their own, or leaving a database SQLite calls malformed.
  { group: "frames", title: "page number 0", build: (s) => pushAt(s, [frame(0, s.pages, page(1))]), status: 400, error: "bad_frames" },
  { group: "frames", title: "a commit size smaller than a page written", build: (s) => pushAt(s, [frame(s.pages + 5, 0, page(1)), frame(2, s.pages + 1, s.page2)]), status: 400, error: "bad_frames" },
  { group: "frames", title: "a commit size smaller than the commit frame's own page", build: (s) => pushAt(s, [frame(s.pages + 1, s.pages, page(0))]), status: 400, error: "bad_frames" },
  { group: "frames", title: "garbage over page 1", build: (s) => pushAt(s, [frame(1, s.pages, page((i) => i * 7919))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "a zeroed page 1", build: (s) => pushAt(s, [frame(1, s.pages, page(0))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "page 1 with a wrong magic string", build: (s) => pushAt(s, [frame(1, s.pages, edit(s.page1, (p) => p.set(Buffer.from("SQLite format 4"), 0)))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "page 1 declaring 1024-byte pages", build: (s) => pushAt(s, [frame(1, s.pages, edit(s.page1, (_, v) => v.setUint16(16, 1024)))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "page 1 switching to rollback-journal mode", build: (s) => pushAt(s, [frame(1, s.pages, edit(s.page1, (p) => { p[18] = 1; p[19] = 1 }))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "page 1 whose freelist trunk is past the end", build: (s) => pushAt(s, [frame(1, s.pages, edit(s.page1, (_, v) => { v.setUint32(32, 0x7fff_0000); v.setUint32(36, 3) }))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "page 1 whose schema root points past the end", build: (s) => pushAt(s, [frame(1, s.pages, edit(s.page1, (p) => { const at = Buffer.from(p).indexOf("CREATE TABLE t"); p[at - 2] = 0x7f }))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "garbage over a table page", build: (s) => pushAt(s, [frame(2, s.pages, page((i) => i * 31 + 7))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "a table page with an invalid b-tree page type", build: (s) => pushAt(s, [frame(2, s.pages, edit(s.page2, (p) => { p[0] = 0x07 }))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "a table page claiming 65 535 cells", build: (s) => pushAt(s, [frame(2, s.pages, edit(s.page2, (_, v) => v.setUint16(3, 0xffff)))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "a table page whose cell pointers point outside the page", build: (s) => pushAt(s, [frame(2, s.pages, edit(s.page2, (_, v) => { const cells = v.getUint16(3); const hdr = s.page2[0] === 0x05 ? 12 : 8; for (let c = 0; c < cells; c++) v.setUint16(hdr + 2 * c, 0xfff0) }))]), status: 400, error: "malformed_database" },
  { group: "frames", title: "a commit that cuts the file below its tables", build: (s) => pushAt(s, [frame(1, 1, s.page1)]), status: 400, error: "malformed_database" },
  { group: "frames", title: "a commit size of 2^32-1 pages (16 TiB)", build: (s) => pushAt(s, withCommitSize(s, 0xffff_ffff)), status: 400, error: "malformed_database" },
  { group: "frames", title: "a commit size of 1 000 000 pages (4 GB of nothing)", build: (s) => pushAt(s, withCommitSize(s, 1_000_000)), status: 400, error: "malformed_database" },
  { group: "frames", title: "a commit size 17 pages past what SQLite's checkpoint allows", build: (s) => pushAt(s, withCommitSize(s, s.pages + s.next.length + 17)), status: 400, error: "malformed_database" },
  { group: "frames", title: "page 2^32-1 written with a matching commit size", build: (s) => pushAt(s, [frame(0xffff_ffff, 0xffff_ffff, page(0))]), status: 400, error: "malformed_database" },

  // Protocol state: generations and batons.
  { group: "protocol", title: "a push to a future generation", build: (s) => http({ method: "POST", path: syncPath(2, s.head + 1, s.head + 1 + s.next.length), body: wire(...s.next) }), status: 404, error: "generation_not_found" },
  { group: "protocol", title: "a push to generation 2^31-1", build: (s) => http({ method: "POST", path: syncPath(2 ** 31 - 1, 1, 1 + s.next.length), body: wire(...s.next) }), status: 404, error: "generation_not_found" },
  { group: "protocol", title: "a pull of a future generation", build: () => http({ path: syncPath(2, 1, 2) }), status: 404, error: "generation_not_found" },
  { group: "protocol", title: "an export of a future generation", build: () => http({ path: `/db/${VICTIM}/export/2` }), status: 404, error: "generation_not_found" },
  { group: "protocol", title: "a forged baton of the server's own shape", build: (s) => pushAt(s, s.next, "0123456789abcdef0123456789abcdef"), status: 400, error: "unknown_baton" },
  { group: "protocol", title: "the baton of another database's open transaction", build: (s) => pushAt(s, s.next, s.otherBaton), status: 400, error: "unknown_baton" },
  { group: "protocol", title: "the baton of a finished transaction, with new frames", build: (s) => pushAt(s, s.next, s.closedBaton), status: 400, error: "unknown_baton" },
  { group: "protocol", title: "a baton with characters no baton has", build: (s) => pushAt(s, s.next, "%3Cscript%3E"), status: 400, error: "bad_baton" },
  { group: "protocol", title: "a 129-character baton", build: (s) => pushAt(s, s.next, "b".repeat(129)), status: 400, error: "bad_path" },

  // Methods and routes.
  { group: "method", title: "DELETE on /info", build: () => http({ method: "DELETE", path: `/db/${VICTIM}/info` }), status: 405, error: "method_not_allowed" },
  { group: "method", title: "PUT on /sync", build: (s) => http({ method: "PUT", path: syncPath(1, s.head + 1, s.head + 2), body: wire(s.next[0]) }), status: 405, error: "method_not_allowed" },
  { group: "method", title: "PATCH on /sync", build: (s) => http({ method: "PATCH", path: syncPath(1, s.head + 1, s.head + 2), body: wire(s.next[0]) }), status: 405, error: "method_not_allowed" },
  { group: "method", title: "POST on /export", build: () => http({ method: "POST", path: `/db/${VICTIM}/export/1`, body: new Uint8Array(10) }), status: 405, error: "method_not_allowed" },
  { group: "method", title: "OPTIONS on /info", build: () => http({ method: "OPTIONS", path: `/db/${VICTIM}/info` }), status: 405, error: "method_not_allowed" },
  { group: "method", title: "GET with a baton", build: () => http({ path: syncPath(1, 1, 2, "abc") }), status: 405, error: "method_not_allowed" },
  { group: "method", title: "an unknown route", build: () => http({ path: "/admin" }), status: 404, error: "not_found" },
  { group: "method", title: "a database without a route", build: () => http({ path: `/db/${VICTIM}` }), status: 404, error: "not_found" },
  { group: "method", title: "an extra segment after /info", build: () => http({ path: `/db/${VICTIM}/info/extra` }), status: 404, error: "not_found" },
  { group: "method", title: "a trailing slash", build: () => http({ path: `/db/${VICTIM}/info/` }), status: 404, error: "not_found" },
  { group: "method", title: "the asterisk request target", build: (s) => raw({ bytes: Raw.head("OPTIONS", "*", s.authLines) }), status: 404, error: "not_found" },

  // Auth (servers with a token only): no token, wrong tokens, odd headers; nothing else is looked at.
  { group: "auth", authOnly: true, title: "no Authorization header", build: () => http({ path: `/db/${VICTIM}/export/1` }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a wrong token", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: "Bearer nope" } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "the token under the Basic scheme", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `Basic ${TOKEN}` } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "the token without a scheme", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: TOKEN } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "the token in upper case", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `Bearer ${TOKEN.toUpperCase()}` } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a prefix of the token", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `Bearer ${TOKEN.slice(0, -1)}` } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "the token with one more character", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `Bearer ${TOKEN}x` } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "an empty bearer token", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: "Bearer " } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "'Bearer' alone", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: "Bearer" } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "two spaces before the token", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `Bearer  ${TOKEN}` } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a tab inside the token", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `Bearer ${TOKEN.slice(0, 4)}\t${TOKEN.slice(4)}` } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "the token in the query string instead", build: () => http({ path: `/db/${VICTIM}/info?token=${encodeURIComponent(TOKEN)}` }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "the token in another header", build: () => http({ path: `/db/${VICTIM}/info`, headers: { "x-auth-token": TOKEN } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a 12 KiB Authorization header", build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `Bearer ${"t".repeat(12 * 1024)}` } }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a wrong token first and the right one second", build: () => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, ["Authorization: Bearer nope", `Authorization: Bearer ${TOKEN}`]) }), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a valid push without a token", build: (s) => ({ ...pushAt(s, s.next), anonymous: true }) as Send, status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a garbage push with a wrong token", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 1, s.head + 2), headers: { authorization: "Bearer nope" }, body: wire(frame(1, s.pages, page(0))) }, true), status: 401, error: "unauthorized" },
  { group: "auth", authOnly: true, title: "a traversal name without a token", build: () => http({ path: "/db/..%2F..%2Fetc/info" }, true), status: 401, error: "unauthorized" }
]

// ---------------------------------------------------------------------------------------------------
// Odd but valid requests the protocol or HTTP answers with 200: they too must change nothing.

interface Answered {
  readonly title: string
  readonly authOnly?: boolean
  readonly build: (seed: Seed) => Send
  readonly body: (seed: Seed) => unknown
}

const infoBody = (s: Seed) => ({
  current_generation: 1,
  max_frame_no: s.head,
  max_pull_frames: 1024,
  max_push_frames: MAX_FRAMES,
  extensions: ["snapshot", "push_identity", "wait", "wait-after"],
  max_wait_seconds: 30,
  database_id: expect.any(String)
})
const ANSWERED: ReadonlyArray<Answered> = [
  { title: "a re-push of stored frames with different bytes (conflict)", build: (s) => http({ method: "POST", path: syncPath(1, 1, 1 + s.next.length), body: wire(...s.next) }), body: (s) => ({ status: "conflict", generation: 1, max_frame_no: s.head }) },
  { title: "a push straddling the head whose stored part differs (conflict)", build: (s) => http({ method: "POST", path: syncPath(1, s.head, s.head + s.next.length), body: wire(...s.next) }), body: (s) => ({ status: "conflict", generation: 1, max_frame_no: s.head }) },
  { title: "a replay of the last stored frames (idempotent ok)", build: (s) => http({ method: "POST", path: syncPath(1, s.head, s.head + 1), body: wire(s.last) }), body: (s) => ({ status: "ok", generation: 1, max_frame_no: s.head }) },
  { title: "a push past the head (gap: ok with the real head)", build: (s) => http({ method: "POST", path: syncPath(1, s.head + 10, s.head + 10 + s.next.length), body: wire(...s.next) }), body: (s) => ({ status: "ok", generation: 1, max_frame_no: s.head }) },
  { title: "an HTTP/1.1 request without Host", build: (s) => raw({ bytes: `GET /db/${VICTIM}/info HTTP/1.1\r\n${s.authLines.map((l) => `${l}\r\n`).join("")}Connection: close\r\n\r\n` }), body: infoBody },
  { title: "a query string on /info", build: () => http({ path: `/db/${VICTIM}/info?x=1&y=%00` }), body: infoBody },
  { title: "a GET with a body", build: (s) => raw({ bytes: `${Raw.head("GET", `/db/${VICTIM}/info`, [...s.authLines, "Content-Length: 5", "Connection: close"])}hello` }), body: infoBody },
  { title: "an absolute-form request target naming another host", build: (s) => raw({ bytes: Raw.head("GET", `http://evil.example/db/${VICTIM}/info`, [...s.authLines, "Connection: close"]) }), body: infoBody },
  { title: "HTTP/1.0 without Host", build: (s) => raw({ bytes: `GET /db/${VICTIM}/info HTTP/1.0\r\n${s.authLines.map((l) => `${l}\r\n`).join("")}\r\n` }), body: infoBody },
  { title: "a WebSocket upgrade request", build: (s) => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, [...s.authLines, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]) }), body: infoBody },
  { title: "'bearer' in lower case (schemes are case-insensitive)", authOnly: true, build: () => http({ path: `/db/${VICTIM}/info`, headers: { authorization: `bearer ${TOKEN}` } }, true), body: infoBody },
  { title: "the header name in upper case", authOnly: true, build: () => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, [`AUTHORIZATION: Bearer ${TOKEN}`, "Connection: close"]) }), body: infoBody },
  { title: "a token followed by spaces (trimmed as HTTP says)", authOnly: true, build: () => raw({ bytes: Raw.head("GET", `/db/${VICTIM}/info`, [`Authorization: Bearer ${TOKEN}   `, "Connection: close"]) }), body: infoBody }
]

// ---------------------------------------------------------------------------------------------------

const perform = (send: Send) =>
  Effect.flatMap(TestServer, ({ base, token }) =>
    Effect.promise((): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> => {
      if (send._tag === "raw") return Raw.send(base, send.send)
      const headers = { ...(send.anonymous || token === undefined ? {} : H.auth(token)), ...send.request.headers }
      return H.request(base, { ...send.request, headers })
    }))

const snapshotOf = (name: string) =>
  Effect.flatMap(TestServer, ({ base, token }) => Effect.promise(() => H.snapshot(base, name, token)))

/** Everything the server stores: both databases through the protocol, and the data directory's files. */
const storedState = Effect.gen(function*() {
  const { dir } = yield* TestServer
  const victim = H.digestOf(yield* snapshotOf(VICTIM))
  const other = H.digestOf(yield* snapshotOf(OTHER))
  return { victim, other, files: dir === undefined ? "memory" : H.treeDigest(dir) }
})

/** Gives VICTIM data and a finished baton transaction, opens one on OTHER, and fills in `seed`. */
const seedServer = (seed: Seed, replicas: Array<H.Replica>) =>
  Effect.gen(function*() {
    const { base, token } = yield* TestServer
    seed.authLines = token === undefined ? [] : [`Authorization: Bearer ${token}`]
    const send = (name: string, g: number, start: number, frames: ReadonlyArray<WalFrame.Frame>, baton?: string) =>
      Effect.promise(() =>
        H.request(base, {
          method: "POST",
          path: `/db/${name}/sync/${g}/${start}/${start + frames.length}${baton === undefined ? "" : `/${baton}`}`,
          headers: H.auth(token),
          body: WalFrame.encodeWire(frames)
        })
      ).pipe(Effect.map(H.json))

    const replica = new H.Replica(yield* Effect.promise(() => H.exportBase(base, VICTIM, 1, token)))
    replicas.push(replica)
    const first = replica.write(
      "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 60) INSERT INTO t SELECT x, hex(randomblob(200)) FROM s;"
    )
    expect((yield* send(VICTIM, 1, 1, first)).status).toBe("ok")
    const big = replica.write(
      "BEGIN; WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 40) INSERT INTO t SELECT x + 100, hex(randomblob(600)) FROM s; COMMIT;"
    )
    expect(WalFrame.committedLength(big.slice(0, 2))).toBe(0)
    const opened = yield* send(VICTIM, 1, first.length + 1, big.slice(0, 2))
    expect(opened.baton).toBeTypeOf("string")
    const closed = yield* send(VICTIM, 1, first.length + 3, big.slice(2), opened.baton)
    expect(closed).toMatchObject({ status: "ok", max_frame_no: first.length + big.length })
    seed.closedBaton = opened.baton
    seed.next = replica.write("UPDATE t SET v = 'changed' WHERE id <= 30;")
    expect(seed.next.length).toBeGreaterThan(0)

    const snap = yield* snapshotOf(VICTIM)
    seed.head = snap.frames.length
    seed.last = snap.frames[snap.frames.length - 1]
    seed.pages = snap.file.byteLength / WalFrame.PAGE_SIZE
    seed.page1 = snap.file.slice(0, WalFrame.PAGE_SIZE)
    seed.page2 = snap.file.slice(WalFrame.PAGE_SIZE, 2 * WalFrame.PAGE_SIZE)
    // Page 2 is table t's root: an interior table page (5) once t spans several leaves.
    expect([0x05, 0x0d]).toContain(seed.page2[0])

    const other = new H.Replica(yield* Effect.promise(() => H.exportBase(base, OTHER, 1, token)))
    replicas.push(other)
    const otherFrames = other.write(
      "BEGIN; CREATE TABLE big(b BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 10) INSERT INTO big SELECT randomblob(3000) FROM s; COMMIT;"
    )
    expect(WalFrame.committedLength(otherFrames.slice(0, 2))).toBe(0)
    const otherOpen = yield* send(OTHER, 1, 1, otherFrames.slice(0, 2))
    expect(otherOpen.baton).toBeTypeOf("string")
    seed.otherBaton = otherOpen.baton
  })

const emptySeed = (): Seed => ({
  head: 0,
  pages: 0,
  next: [],
  page1: new Uint8Array(0),
  page2: new Uint8Array(0),
  otherBaton: "",
  closedBaton: "",
  last: { pgno: 1, commitSize: 0, page: new Uint8Array(0) },
  authLines: []
})

const suite = (kind: StoreKind, auth: boolean) =>
  layer(serverLayer(kind, auth), { excludeTestServices: true })(
    `hostile requests over the ${kind} store, ${auth ? "with" : "without"} auth`,
    (it) => {
      const seed = emptySeed()
      const replicas: Array<H.Replica> = []

      it.effect("seed: a database with data, a finished baton transaction, and an open one on another database", () =>
        seedServer(seed, replicas))

      const kinds = KINDS.filter((k) => auth || !k.authOnly)
      for (const k of kinds) {
        it.effect(`[${k.group}] ${k.title} → ${k.status} ${k.error}`, () =>
          Effect.gen(function*() {
            const before = yield* storedState
            const res = yield* perform(k.build(seed))
            expect(res.status).toBe(k.status)
            expect(res.status).toBeGreaterThanOrEqual(400)
            expect(res.status).toBeLessThan(500)
            expect(String(res.headers["content-type"])).toContain("application/json")
            const body = JSON.parse(res.body.toString("utf8"))
            expect(body.error).toBe(k.error)
            expect(typeof body.message).toBe("string")
            if (k.status === 401) expect(res.body.toString()).not.toContain(TOKEN)
            const { base, token } = yield* TestServer
            const alive = yield* Effect.promise(() => H.request(base, { path: `/db/${VICTIM}/info`, headers: H.auth(token) }))
            expect(alive.status).toBe(200)
            expect(yield* storedState).toEqual(before)
          }))
      }

      for (const a of ANSWERED.filter((a) => auth || !a.authOnly)) {
        it.effect(`[answered] ${a.title} → 200, nothing changes`, () =>
          Effect.gen(function*() {
            const before = yield* storedState
            const res = yield* perform(a.build(seed))
            expect(res.status).toBe(200)
            expect(JSON.parse(res.body.toString("utf8"))).toEqual(a.body(seed))
            expect(yield* storedState).toEqual(before)
          }))
      }

      it.effect("afterwards a valid push still works and the database passes integrity_check", () =>
        Effect.gen(function*() {
          const { base, token } = yield* TestServer
          const res = yield* Effect.promise(() =>
            H.request(base, {
              method: "POST",
              path: syncPath(1, seed.head + 1, seed.head + 1 + seed.next.length),
              headers: H.auth(token),
              body: wire(...seed.next)
            })
          )
          expect(H.json(res)).toEqual({ status: "ok", generation: 1, max_frame_no: seed.head + seed.next.length })
          const snap = yield* snapshotOf(VICTIM)
          const db = H.open(snap.file)
          expect(db.prepare("SELECT count(*) AS n FROM t WHERE v = 'changed'").get()).toEqual({ n: 30 })
          expect(db.prepare("SELECT count(*) AS n FROM t").get()).toEqual({ n: 100 })
          expect(db.pragma("integrity_check", { simple: true })).toBe("ok")
          db.close()
          for (const r of replicas) r.close()
        }))
    }
  )

describe("the hostile-input campaign", () => {
  it("has at least 50 distinct kinds of hostile request without auth, and more with it", () => {
    const titles = KINDS.map((k) => k.title)
    expect(new Set(titles).size).toBe(titles.length)
    expect(KINDS.filter((k) => !k.authOnly).length).toBeGreaterThanOrEqual(50)
    expect(KINDS.length).toBeGreaterThanOrEqual(100)
  })

  it("the Node server behind layerNode bounds slow requests by default", () => {
    const server = nodeHttpGuard.createServer()
    expect(server.requestTimeout).toBe(nodeHttpGuard.DEFAULT_REQUEST_TIMEOUT_MS)
    expect(server.headersTimeout).toBe(nodeHttpGuard.DEFAULT_HEADERS_TIMEOUT_MS)
    expect(server.listenerCount("clientError")).toBe(1)
    expect(server.timeout).toBe(nodeHttpGuard.DEFAULT_SOCKET_TIMEOUT_MS)
    server.close()
  })
})

// A client that asks for answers and never reads them: the server drops it after socketTimeoutMs
// instead of holding the answers' buffers and sockets forever.
const SOCKET_TIMEOUT_MS = 1_000

/**
 * The most a loopback TCP connection to a reader that has stopped can hold in flight: the sender's largest
 * send buffer plus the receiver's initial receive buffer (Linux grows a receive buffer only as the
 * application reads it, and this reader stops at once), with 1 MiB to spare for what Node itself reads
 * ahead. Off Linux, a generous 16 MiB.
 */
const socketBufferBytes = (): number => {
  const limits = (file: string) => {
    try {
      return Fs.readFileSync(file, "utf8").trim().split(/\s+/).map(Number)
    } catch {
      return []
    }
  }
  const send = limits("/proc/sys/net/ipv4/tcp_wmem")[2]
  const receive = limits("/proc/sys/net/ipv4/tcp_rmem")[1]
  const total = send + receive + 1024 * 1024
  return Number.isFinite(total) && total > 0 ? total : 16 * 1024 * 1024
}

layer(
  Layer.effect(TestServer, Effect.map(SyncServer.baseUrl, (base) => ({ base, dir: undefined, token: undefined }))).pipe(
    Layer.provide(SyncServer.layerNode({ port: 0, socketTimeoutMs: SOCKET_TIMEOUT_MS })),
    Layer.provide(ServerStore.layerMemory({ integrityCheck: "off" })),
    Layer.provide(Logger.replace(Logger.defaultLogger, Logger.none))
  ),
  { excludeTestServices: true }
)("clients that stop reading", (it) => {
  it.effect("are disconnected after the socket timeout, with their answers unsent", () =>
    Effect.gen(function*() {
      const { base } = yield* TestServer
      const replica = new H.Replica(yield* Effect.promise(() => H.exportBase(base, "big", 1)))
      const frames = replica.write(
        "BEGIN; CREATE TABLE b(x); WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 5) INSERT INTO b SELECT randomblob(1000000) FROM s; COMMIT;"
      )
      replica.close()
      expect(frames.length).toBeGreaterThan(1024)
      let baton: string | undefined
      for (let offset = 0; offset < frames.length; offset += 1000) {
        const part = frames.slice(offset, offset + 1000)
        const res = yield* Effect.promise(() =>
          H.request(base, {
            method: "POST",
            path: `/db/big/sync/1/${offset + 1}/${offset + 1 + part.length}${baton === undefined ? "" : `/${baton}`}`,
            body: WalFrame.encodeWire(part)
          })
        )
        expect(H.json(res).status).toBe("ok")
        baton = H.json(res).baton
      }
      const answerBytes = 1024 * FRAME
      // Each reader pipelines more answers than the kernel's socket buffers between the two ends can hold,
      // so whatever the buffers absorb, the server is left with answers it cannot hand over; the reader
      // must then be dropped by the server (not by the test's own give-up timer) with answers unsent.
      const pipelined = Math.ceil(socketBufferBytes() / answerBytes) + 1
      const asked = pipelined * answerBytes
      const url = new URL(base)
      // Several stalled readers, each asking for the largest answer a pull gives, several times over.
      // The stall is counted from the answers' first byte, not from the request: on a loaded machine the
      // server may take seconds to produce them, and a reader resuming before then would simply get them.
      const outcomes = yield* Effect.promise(() =>
        Promise.all(Array.from({ length: 4 }, () =>
          new Promise<{ received: number; closedByServer: boolean }>((resolve) => {
            let received = 0
            let closedByUs = false
            const giveUpAfter = (ms: number) =>
              setTimeout(() => {
                closedByUs = true
                socket.destroy()
              }, ms)
            const socket = Net.connect(Number(url.port), url.hostname, () => {
              socket.write(`GET /db/big/sync/1/1/1025 HTTP/1.1\r\nHost: x\r\n\r\n`.repeat(pipelined))
              socket.pause()
            })
            // Paused, the socket still reads up to its high-water mark, which is how the first byte shows.
            const timers: Array<NodeJS.Timeout> = [giveUpAfter(40_000)]
            const watch = setInterval(() => {
              if (socket.bytesRead === 0) return
              clearInterval(watch)
              // Once the timeout has long passed, read whatever the server had sent before dropping us.
              timers.push(setTimeout(() => socket.resume(), SOCKET_TIMEOUT_MS * 3), giveUpAfter(SOCKET_TIMEOUT_MS * 10))
            }, 20)
            socket.on("data", (chunk: Buffer) => {
              received += chunk.byteLength
            })
            socket.on("error", () => {})
            socket.on("close", () => {
              clearInterval(watch)
              timers.forEach(clearTimeout)
              resolve({ received, closedByServer: !closedByUs })
            })
          })
        ))
      )
      for (const outcome of outcomes) {
        expect(outcome.received).toBeLessThan(asked)
        expect(outcome.closedByServer).toBe(true)
      }
      const alive = yield* Effect.promise(() => H.request(base, { path: "/db/big/info" }))
      expect(alive.status).toBe(200)
    }), 60_000)
})

// Hostile requests fired concurrently with real pushers on the same database: the pushers' data is
// exactly what they were acknowledged, nothing hostile ever lands, and no answer is a 5xx but 503 busy.
const STORM_MS = 6_000
// The storm sends no slow request (its kinds leave that group out), so the short request timeout the slow
// cases need has nothing to cut there but a pusher's large push on a loaded machine (a 408 it would count
// as unexpected): the storm's server gives a request as long as a real deployment does.
const STORM_REQUEST_TIMEOUT_MS = 30_000
for (const kind of ["memory", "disk"] as const) {
  layer(serverLayer(kind, true, STORM_REQUEST_TIMEOUT_MS), { excludeTestServices: true })(`a hostile storm during real pushes (${kind} store)`, (it) => {
    const seed = emptySeed()
    const replicas: Array<H.Replica> = []
    it.effect("seed", () => seedServer(seed, replicas))

    it.effect(`${STORM_MS / 1000} s of hostile requests from 4 workers against 3 pushers`, () =>
      Effect.gen(function*() {
        const { base, token } = yield* TestServer
        const pushers = [1, 2, 3].map((n) => new Pusher({ base: () => base, database: VICTIM, id: `p${n}`, token, largeShare: 0.15 }))
        const kinds = KINDS.filter((k) => k.group !== "slow")
        const answers = new Map<string, number>()
        const wrong: Array<string> = []
        let running = true
        const deadline = Date.now() + STORM_MS
        const pushing = pushers.map((p) => RawPusher.runPusher(p, () => running))
        const attacking = [0, 1, 2, 3].map(async (w) => {
          let i = w * 37
          while (Date.now() < deadline) {
            const k = kinds[i++ % kinds.length]
            const send = k.build(seed)
            const res = send._tag === "raw"
              ? await Raw.send(base, send.send)
              : await H.request(base, {
                ...send.request,
                headers: { ...(send.anonymous ? {} : H.auth(token)), ...send.request.headers }
              })
            const body = String(res.headers["content-type"] ?? "").includes("json") ? JSON.parse(res.body.toString("utf8")) : undefined
            const key = `${res.status} ${body?.error ?? body?.status ?? "-"}`
            answers.set(key, (answers.get(key) ?? 0) + 1)
            // The head moved since the seed, so a hostile push at the old head meets stored frames
            // (conflict) and an open transaction of a pusher makes others wait (503): both refuse it.
            const refused = (res.status >= 400 && res.status < 500) || res.status === 503 ||
              (res.status === 200 && body?.status === "conflict")
            if (!refused || body === undefined) wrong.push(`${k.title}: ${key}`)
          }
        })
        yield* Effect.promise(() => Promise.all(attacking))
        running = false
        yield* Effect.promise(() => Promise.all(pushing))
        expect(wrong).toEqual([])
        for (const p of pushers) expect(p.stats.unexpected).toEqual([])
        const verdict = yield* Effect.promise(() => RawPusher.verify(base, VICTIM, pushers, token))
        expect(verdict.integrity).toBe("ok")
        expect(verdict.duplicates).toEqual([])
        expect(verdict.missing).toEqual([])
        expect(verdict.framesDiffering).toBe(0)
        expect(pushers.reduce((n, p) => n + p.stats.acked, 0)).toBeGreaterThan(5)
        // Every frame after the seed's is one a pusher was acknowledged for: nothing else got in.
        expect(pushers.reduce((n, p) => n + p.stats.appliedUnacked, 0)).toBe(0)
        expect(verdict.totalFrames).toBe(seed.head + verdict.framesAcknowledged)
        const snap = yield* Effect.promise(() => H.snapshot(base, VICTIM, token))
        const db = H.open(snap.file)
        expect(db.prepare("SELECT count(*) AS n FROM t").get()).toEqual({ n: 100 })
        db.close()
        for (const p of pushers) p.close()
        for (const r of replicas) r.close()
        console.log(`hostile storm (${kind}): ${[...answers].map(([k, n]) => `${k} x${n}`).join(", ")}; acked ${pushers.reduce((n, p) => n + p.stats.acked, 0)}`)
      }), 60_000)
  })
}

suite("memory", false)
suite("disk", false)
suite("memory", true)
suite("disk", true)

