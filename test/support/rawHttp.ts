/**
 * Byte-level HTTP/1.1 for hostile-input tests: what node:http refuses to send (raw UTF-8 in paths,
 * duplicate or invalid framing headers, unknown methods) and clients that stall part-way.
 */
import * as Net from "node:net"

export interface RawAnswer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: Buffer
  /** Milliseconds from the first byte sent to the answer being complete. */
  readonly ms: number
}

export interface RawSend {
  /** Bytes written at once when connected. */
  readonly bytes: Uint8Array | string
  /** Give up (and fail) if no complete answer arrives within this time. */
  readonly timeoutMs?: number
  /** Then one byte of these every `everyMs` (a client trickling its body), until the server answers. */
  readonly drip?: { readonly bytes: Uint8Array; readonly everyMs: number }
}

const parse = (buffer: Buffer): { status: number; headers: Record<string, string>; body: Buffer } | undefined => {
  const end = buffer.indexOf("\r\n\r\n")
  if (end === -1) return undefined
  const lines = buffer.subarray(0, end).toString("latin1").split("\r\n")
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0])?.[1] ?? "0")
  const headers: Record<string, string> = {}
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":")
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  const rest = buffer.subarray(end + 4)
  if (headers["content-length"] !== undefined) {
    const length = Number(headers["content-length"])
    if (rest.byteLength < length) return undefined
    return { status, headers, body: rest.subarray(0, length) }
  }
  if (headers["transfer-encoding"] === "chunked") {
    const chunks: Array<Buffer> = []
    let offset = 0
    for (;;) {
      const lineEnd = rest.indexOf("\r\n", offset)
      if (lineEnd === -1) return undefined
      const size = parseInt(rest.subarray(offset, lineEnd).toString("latin1"), 16)
      if (size === 0) return { status, headers, body: Buffer.concat(chunks) }
      if (rest.byteLength < lineEnd + 2 + size + 2) return undefined
      chunks.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size))
      offset = lineEnd + 2 + size + 2
    }
  }
  return undefined
}

/**
 * Sends raw bytes on a fresh connection and reads the first answer. Resolves when the answer is
 * complete (by its content-length or chunking) or when the server closes the connection.
 */
export const send = (base: string, options: RawSend): Promise<RawAnswer> =>
  new Promise((resolve, reject) => {
    const url = new URL(base)
    const started = Date.now()
    let received = Buffer.alloc(0)
    let settled = false
    let dripper: ReturnType<typeof setInterval> | undefined
    const socket = Net.connect(Number(url.port), url.hostname, () => {
      socket.write(typeof options.bytes === "string" ? Buffer.from(options.bytes, "latin1") : options.bytes)
      const drip = options.drip
      if (drip !== undefined) {
        let at = 0
        dripper = setInterval(() => {
          if (at < drip.bytes.byteLength && socket.writable) socket.write(drip.bytes.subarray(at, ++at))
        }, drip.everyMs)
      }
    })
    const finish = (error?: Error) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (dripper !== undefined) clearInterval(dripper)
      socket.destroy()
      const parsed = parse(received)
      if (parsed !== undefined) resolve({ ...parsed, ms: Date.now() - started })
      else {
        reject(
          error ??
            new Error(`no complete HTTP answer (${received.byteLength} bytes: ${received.toString("latin1").slice(0, 200)})`)
        )
      }
    }
    const timer = setTimeout(
      () => finish(new Error(`no answer within ${options.timeoutMs ?? 10_000} ms`)),
      options.timeoutMs ?? 10_000
    )
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      if (parse(received) !== undefined) finish()
    })
    // A server that answers and closes while we still write sees EPIPE/ECONNRESET on our side: the answer counts.
    socket.on("error", (error) => finish(error))
    socket.on("close", () => finish())
  })

/** A request head: `METHOD target HTTP/1.1`, `Host`, the given header lines, blank line. */
export const head = (method: string, target: string, headers: ReadonlyArray<string> = []): string =>
  `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => `${h}\r\n`).join("")}\r\n`
