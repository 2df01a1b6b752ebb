/**
 * The Node HTTP server under `SyncServer.layerNode`, hardened against clients that never finish a
 * request and against requests Node's parser refuses before any route sees them.
 *
 * Node's defaults let a client that sends headers and a few body bytes, then stalls, hold its socket
 * (and the push's buffered body) for 300 s, and answer unparsable requests (oversized headers, bad
 * `content-length`, broken chunking, unknown methods) with an empty body. Here a request must arrive
 * whole within `requestTimeoutMs` (headers within `headersTimeoutMs`), and every such refusal is a
 * JSON error like the routes' own: `{"error": code, "message": text}`.
 *
 * @internal
 */
import * as Http from "node:http"
import * as Net from "node:net"

/** Time for a whole request, body included: a 4 MiB push at 70 KiB/s still fits. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000

/** Time for the request line and headers. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 20_000

/**
 * A connection on which nothing moves for this long is closed. Without it, a client that asks for a
 * pull and never reads the answer holds the answer's buffer (up to 4 MiB) and its socket forever.
 */
export const DEFAULT_SOCKET_TIMEOUT_MS = 120_000

export interface Options {
  readonly requestTimeoutMs?: number | undefined
  readonly headersTimeoutMs?: number | undefined
  readonly socketTimeoutMs?: number | undefined
}

const STATUS: Record<number, string> = {
  400: "Bad Request",
  405: "Method Not Allowed",
  408: "Request Timeout",
  413: "Payload Too Large",
  431: "Request Header Fields Too Large"
}

/** The status and JSON error code of a request Node's parser or timers refused. */
export const classify = (code: string | undefined): { status: number; error: string; message: string } => {
  switch (code) {
    case "HPE_HEADER_OVERFLOW":
      return { status: 431, error: "header_too_large", message: "the request line and headers are over the size limit" }
    case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
      return { status: 413, error: "too_large", message: "chunk extensions are over the size limit" }
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return { status: 408, error: "request_timeout", message: "the request did not arrive in time" }
    case "CONNECT":
      return { status: 405, error: "method_not_allowed", message: "CONNECT is not allowed: this is not a proxy" }
    default:
      return { status: 400, error: "bad_request", message: "the request is not valid HTTP/1.1" }
  }
}

/** The raw bytes of a refusal: always `Connection: close`, since the parser's state is lost. */
export const refusal = (code: string | undefined): string => {
  const { error, message, status } = classify(code)
  const body = JSON.stringify({ error, message })
  const allow = status === 405 ? "Allow: GET, HEAD, POST\r\n" : ""
  return `HTTP/1.1 ${status} ${STATUS[status]}\r\nContent-Type: application/json\r\n${allow}` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
}

const onClientError = (error: Error & { code?: string }, socket: Net.Socket) => {
  // Like Node's own handler: answer only when nothing of a response has gone out on this socket yet.
  const inFlight = (socket as Net.Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage
  if (error.code !== "ECONNRESET" && socket.writable && (inFlight == null || inFlight.headersSent !== true)) {
    socket.end(refusal(error.code))
  }
  socket.destroy()
}

/** A server that can be shut down without cutting requests in flight. */
export interface GuardedServer extends Http.Server {
  /**
   * Stops accepting connections, lets every request in flight finish (its connection is closed after its
   * answer), closes idle keep-alive connections, and resolves once all are closed or after `timeoutMs`,
   * when whatever is left is cut. `handlers()` counts requests still being handled, whose client may
   * have gone: the drain waits for them too, since they may still be using the store.
   */
  readonly drain: (timeoutMs: number, handlers: () => number) => Promise<void>
}

/**
 * Tracks which connections have a request in flight. Node's own `closeIdleConnections` (which
 * `server.close()` calls) counts a connection as idle once its request has been read, while its answer
 * is still being computed: a push committing at that moment would lose its answer.
 */
const makeDrainable = (server: Http.Server): GuardedServer => {
  const sockets = new Set<Net.Socket>()
  const busy = new Map<Net.Socket, number>()
  let draining = false
  server.on("connection", (socket: Net.Socket) => {
    sockets.add(socket)
    socket.once("close", () => {
      sockets.delete(socket)
      busy.delete(socket)
    })
  })
  server.on("request", (request: Http.IncomingMessage, response: Http.ServerResponse) => {
    const socket = request.socket
    busy.set(socket, (busy.get(socket) ?? 0) + 1)
    if (draining) response.shouldKeepAlive = false
    let done = false
    const finished = () => {
      if (done) return
      done = true
      const left = (busy.get(socket) ?? 1) - 1
      if (left > 0) busy.set(socket, left)
      else busy.delete(socket)
      if (draining && left <= 0) socket.end()
    }
    response.once("finish", finished)
    response.once("close", finished)
  })
  const drain = (timeoutMs: number, handlers: () => number) =>
    new Promise<void>((resolve) => {
      draining = true
      // Not `server.close()`: it would close connections whose answer is still being computed.
      Net.Server.prototype.close.call(server)
      for (const socket of sockets) if (!busy.has(socket)) socket.end()
      const deadline = Date.now() + timeoutMs
      const tick = () => {
        if ((sockets.size === 0 && handlers() === 0) || Date.now() >= deadline) {
          for (const socket of sockets) socket.destroy()
          resolve()
          return
        }
        setTimeout(tick, 20)
      }
      tick()
    })
  return Object.assign(server, { drain })
}

/**
 * `http.createServer` with the timeouts and the JSON `clientError` answer. Timers are checked every
 * second (Node's default is 30 s), so a stalled request is answered within a second of its deadline.
 */
export const createServer = (options: Options = {}): GuardedServer => {
  const requestTimeout = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
  const headersTimeout = Math.min(options.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS, requestTimeout)
  if (!(Number.isSafeInteger(requestTimeout) && requestTimeout >= 1)) {
    throw new Error(`SyncServer: requestTimeoutMs must be a positive integer, got ${requestTimeout}`)
  }
  if (!(Number.isSafeInteger(headersTimeout) && headersTimeout >= 1)) {
    throw new Error(`SyncServer: headersTimeoutMs must be a positive integer, got ${headersTimeout}`)
  }
  const socketTimeout = options.socketTimeoutMs ?? DEFAULT_SOCKET_TIMEOUT_MS
  if (!(Number.isSafeInteger(socketTimeout) && socketTimeout >= 1)) {
    throw new Error(`SyncServer: socketTimeoutMs must be a positive integer, got ${socketTimeout}`)
  }
  const server = Http.createServer({
    requestTimeout,
    headersTimeout,
    // Node's own refusal of a Host-less HTTP/1.1 request has an empty body and no JSON; the server
    // serves every host the same, so it has no use for the header and takes such requests.
    requireHostHeader: false,
    connectionsCheckingInterval: Math.min(1_000, headersTimeout)
  })
  server.on("clientError", onClientError)
  // Node hands CONNECT requests to this event, not to the routes; without a listener it drops the socket.
  server.on("connect", (_request: Http.IncomingMessage, socket: Net.Socket) => {
    socket.on("error", () => socket.destroy())
    socket.end(refusal("CONNECT"))
  })
  // With no "timeout" listener, Node destroys a socket idle this long (keep-alive idling has its own 5 s).
  server.timeout = socketTimeout
  return makeDrainable(server)
}
