/**
 * Request parsing, authentication, body reading and error mapping for `SyncServer`. Everything that can
 * be decided without the store is decided here, before a request reaches it.
 *
 * @internal
 */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"
import * as Crypto from "node:crypto"
import { Readable } from "node:stream"
import type { StoreError } from "../../ServerStore.js"
import type { ErrorCode } from "../../SyncProtocol.js"
import { errorStatus, isDatabaseName, storageStatusOnPull } from "../../SyncProtocol.js"

/**
 * A refusal with its HTTP status, a stable code for the JSON `error` field and a sentence.
 *
 * @internal
 */
export class HttpFailure extends Data.TaggedError("HttpFailure")<{
  readonly status: number
  readonly code: ErrorCode
  readonly message: string
  readonly headers?: Readonly<Record<string, string>> | undefined
}> {}

/** The largest value a generation or frame number may take (SQLite's frame counters are 32-bit). */
export const MAX_PATH_NUMBER = 2 ** 31 - 1

const DECIMAL = /^[1-9][0-9]{0,9}$/
const BATON = /^[A-Za-z0-9_.~-]{1,128}$/

/** @internal */
export const parseDatabaseName = (raw: string | undefined): Either.Either<string, HttpFailure> =>
  isDatabaseName(raw)
    ? Either.right(raw)
    : Either.left(
      new HttpFailure({
        status: 400,
        code: "bad_database_name",
        message: "database names are 1 to 64 letters, digits, '-' or '_'"
      })
    )

/**
 * A path number: plain decimal digits without sign, exponent or leading zero, 1..2^31-1.
 *
 * @internal
 */
export const parsePathNumber = (raw: string | undefined, what: string): Either.Either<number, HttpFailure> => {
  if (raw !== undefined && DECIMAL.test(raw)) {
    const value = Number(raw)
    if (value <= MAX_PATH_NUMBER) return Either.right(value)
  }
  return Either.left(
    new HttpFailure({
      status: 400,
      code: "bad_number",
      message: `${what} must be a decimal integer from 1 to ${MAX_PATH_NUMBER}`
    })
  )
}

/** @internal */
export const parseBaton = (raw: string | undefined): Either.Either<string | undefined, HttpFailure> =>
  raw === undefined
    ? Either.right(undefined)
    : BATON.test(raw)
    ? Either.right(raw)
    : Either.left(new HttpFailure({ status: 400, code: "bad_baton", message: "the baton is not one this server issues" }))

/**
 * Percent-decoding the path must succeed before routing: the router would otherwise throw on `%zz`.
 *
 * @internal
 */
export const pathOf = (url: string): Either.Either<string, HttpFailure> => {
  const query = url.indexOf("?")
  const path = query === -1 ? url : url.slice(0, query)
  try {
    decodeURIComponent(path)
    return Either.right(path)
  } catch {
    return Either.left(new HttpFailure({ status: 400, code: "bad_path", message: "the path is not valid percent-encoding" }))
  }
}

type Shape = "info" | "snapshot" | "export" | "sync" | "syncBaton"

const shapeOf = (rest: ReadonlyArray<string>): Shape | undefined => {
  if (rest.length === 1 && rest[0] === "info") return "info"
  if (rest.length === 1 && rest[0] === "snapshot") return "snapshot"
  if (rest.length === 2 && rest[0] === "export") return "export"
  if (rest.length === 4 && rest[0] === "sync") return "sync"
  if (rest.length === 5 && rest[0] === "sync") return "syncBaton"
  return undefined
}

/** The operations routes beside the databases' (`/db/...`). */
const OPERATIONS: ReadonlyArray<string> = ["/health", "/ready", "/metrics"]

const allowed: Record<Shape, string> = {
  info: "GET, HEAD",
  snapshot: "GET, HEAD",
  export: "GET, HEAD",
  sync: "GET, HEAD, POST",
  syncBaton: "POST"
}

/**
 * Why the router found nothing: a bad database name (400), a known route with another method (405),
 * a known route whose parameters the router refused, such as an overlong one (400), or nothing (404).
 *
 * @internal
 */
export const classifyUnrouted = (method: string, path: string): HttpFailure => {
  if (OPERATIONS.includes(path)) {
    return new HttpFailure({
      status: 405,
      code: "method_not_allowed",
      message: `${method} is not allowed here (allowed: GET, HEAD)`,
      headers: { allow: "GET, HEAD" }
    })
  }
  const segments = path.split("/").slice(1)
  if (segments[0] === "db" && segments.length >= 2) {
    let name: string | undefined
    try {
      name = decodeURIComponent(segments[1])
    } catch {
      name = undefined
    }
    const checked = parseDatabaseName(name)
    if (Either.isLeft(checked)) return checked.left
    const shape = shapeOf(segments.slice(2))
    if (shape !== undefined) {
      const allow = allowed[shape]
      if (!allow.split(", ").includes(method)) {
        return new HttpFailure({
          status: 405,
          code: "method_not_allowed",
          message: `${method} is not allowed here (allowed: ${allow})`,
          headers: { allow }
        })
      }
      return new HttpFailure({ status: 400, code: "bad_path", message: "a path parameter is malformed or too long" })
    }
  }
  return new HttpFailure({
    status: 404,
    code: "not_found",
    message: "no such route: a database is served under /db/NAME (its sync URL is http://HOST:PORT/db/NAME)"
  })
}

/**
 * SHA-256 digest of the expected token, computed once.
 *
 * @internal
 */
export const digest = (token: string): Buffer => Crypto.createHash("sha256").update(token, "utf8").digest()

/**
 * Checks `Authorization: Bearer TOKEN` in time independent of where the tokens differ: both sides are
 * hashed to 32 bytes first, so neither the length nor a prefix of the expected token leaks.
 *
 * @internal
 */
export const authorize = (expected: Buffer, header: string | undefined): Either.Either<void, HttpFailure> => {
  const match = header === undefined ? null : /^Bearer (.*)$/i.exec(header)
  if (match === null) {
    return Either.left(
      new HttpFailure({
        status: 401,
        code: "unauthorized",
        message: "missing 'Authorization: Bearer <token>'",
        headers: { "www-authenticate": "Bearer" }
      })
    )
  }
  if (!Crypto.timingSafeEqual(digest(match[1]), expected)) {
    return Either.left(
      new HttpFailure({
        status: 401,
        code: "unauthorized",
        message: "the token is not valid",
        headers: { "www-authenticate": "Bearer" }
      })
    )
  }
  return Either.right(undefined)
}

/** @internal */
export const tooLarge = (message: string): HttpFailure =>
  new HttpFailure({ status: 413, code: "too_large", message, headers: { connection: "close" } })

/**
 * Reads a request body of at most `limit` bytes. A `content-length` over the limit is refused before
 * anything is read. A body that grows past the limit while streaming stops being kept; the rest is
 * drained (up to `drainLimit`) so the client can read the 413 instead of a reset connection. A body of
 * several chunks is joined in `into` when it fits there (a buffer kept from one request to the next: the
 * first touch of fresh memory costs about as much as receiving it), the answer then a view of `into`.
 *
 * @internal
 */
export const readBody = (
  request: HttpServerRequest.HttpServerRequest,
  limit: number,
  drainLimit: number,
  into?: Uint8Array
): Effect.Effect<Uint8Array, HttpFailure> =>
  Effect.suspend(() => {
    const declared = request.headers["content-length"]
    if (declared !== undefined) {
      if (!/^[0-9]{1,15}$/.test(declared)) {
        return Effect.fail(new HttpFailure({ status: 400, code: "bad_request", message: "invalid content-length" }))
      }
      if (Number(declared) > limit) {
        return Effect.fail(tooLarge(`body of ${declared} bytes is over the limit of ${limit} bytes`))
      }
    }
    const source = (request as { readonly source?: unknown }).source
    const read = source instanceof Readable
      ? readReadable(source, limit, drainLimit)
      : readStream(request.stream, limit, drainLimit)
    return read.pipe(
      Effect.mapError(() =>
        new HttpFailure({ status: 400, code: "bad_request", message: "the request body could not be read" })
      ),
      Effect.flatMap(({ chunks, total }) => {
        if (total > limit) return Effect.fail(tooLarge(`body is over the limit of ${limit} bytes`))
        return Effect.succeed(chunks.length === 1 ? chunks[0] : join(chunks, total, into))
      })
    )
  })

/** What a body read gave: the chunks kept (those within the limit) and the bytes seen. */
interface Read {
  readonly chunks: ReadonlyArray<Uint8Array>
  readonly total: number
}

/** Reads through the platform's body stream (a request of any platform). */
const readStream = (stream: Stream.Stream<Uint8Array, unknown>, limit: number, drainLimit: number) =>
  Effect.suspend(() => {
    const chunks: Array<Uint8Array> = []
    let total = 0
    return Stream.runForEachWhile(stream, (chunk) =>
      Effect.sync(() => {
        total += chunk.byteLength
        if (total <= limit) chunks.push(chunk)
        return total <= drainLimit
      })).pipe(Effect.map((): Read => ({ chunks, total })))
  })

/**
 * Reads a Node request's body off its `IncomingMessage` directly, as `readStream` does over the platform's
 * stream of it (which is that message too) but without a stream's machinery for each request: the same
 * chunks, the same stop past `drainLimit`, and the message destroyed when it is left unfinished.
 */
const readReadable = (message: Readable, limit: number, drainLimit: number): Effect.Effect<Read, unknown> =>
  Effect.async<Read, unknown>((resume) => {
    if (!message.readable) {
      resume(Effect.succeed({ chunks: [], total: 0 }))
      return
    }
    const chunks: Array<Uint8Array> = []
    let total = 0
    const detach = () => {
      message.off("data", onData)
      message.off("end", onEnd)
      message.off("error", onError)
    }
    // left unfinished (past `drainLimit`, or the request interrupted): as the platform's stream does
    const stop = () => {
      detach()
      if (!message.closed) message.destroy()
    }
    const onData = (chunk: Uint8Array) => {
      total += chunk.byteLength
      if (total <= limit) chunks.push(chunk)
      if (total > drainLimit) {
        stop()
        resume(Effect.succeed({ chunks, total }))
      }
    }
    const onEnd = () => {
      detach()
      resume(Effect.succeed({ chunks, total }))
    }
    const onError = (error: unknown) => {
      detach()
      resume(Effect.fail(error))
    }
    message.on("data", onData)
    message.on("end", onEnd)
    message.on("error", onError)
    return Effect.sync(stop)
  })

const join = (chunks: ReadonlyArray<Uint8Array>, total: number, into: Uint8Array | undefined): Uint8Array => {
  if (into === undefined || into.byteLength < total) return Buffer.concat(chunks, total)
  let at = 0
  for (const chunk of chunks) {
    into.set(chunk, at)
    at += chunk.byteLength
  }
  return into.subarray(0, total)
}

/**
 * The HTTP refusal of a store error, from `SyncProtocol.errorStatus`. On the pull route a `Storage`
 * failure is `storageStatusOnPull`: the libSQL client would take a 500 there for "checkpoint needed".
 *
 * @internal
 */
export const fromStoreError = (error: StoreError, route: "pull" | "other"): HttpFailure => {
  const { code, retryAfter, status } = errorStatus[error.reason]
  if (error.reason === "TooLarge") return tooLarge(error.message)
  return new HttpFailure({
    status: route === "pull" && error.reason === "Storage" ? storageStatusOnPull : status,
    code,
    message: error.message,
    headers: retryAfter === undefined ? undefined : { "retry-after": String(retryAfter) }
  })
}
