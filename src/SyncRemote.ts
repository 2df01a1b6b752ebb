/**
 * What the client needs of a remote: the current generation, a generation's base file, frames to pull,
 * and a place to push frames. `layerHttp` speaks the WAL-frame sync protocol over an `HttpClient`;
 * `StoreRemote.layer` (from `effect-sqlite-sync/server` or `/testing`) talks to a `ServerStore` in the same
 * process (fast engine tests, same semantics).
 *
 * @since 0.1.0
 */
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as TransportCause from "./internal/remote/transportCause.js"
import type { PullResult, PushResult } from "./ServerStore.js"
import * as SyncError from "./SyncError.js"
import * as SyncProtocol from "./SyncProtocol.js"
import * as WalFrame from "./WalFrame.js"

export type {
  /**
   * @since 0.1.0
   * @category models
   */
  PullResult,
  /**
   * @since 0.1.0
   * @category models
   */
  PushResult
}

/**
 * The current generation materialised at frame `frameNo` (`GET /snapshot`): `bytes` is the generation's
 * base with frames `1..frameNo` applied. A replica bootstraps from it and pulls `frameNo + 1..`.
 *
 * @since 0.1.0
 * @category models
 */
export interface RemoteSnapshot {
  readonly generation: number
  readonly frameNo: number
  readonly bytes: Uint8Array
  /** The server database's identity, as `info` gives it, when the answer names it. */
  readonly databaseId?: string | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Info {
  readonly generation: number
  /** `database_id` of `GET /info`: created with the server's database, unchanged for its life. */
  readonly databaseId: string | undefined
  /** This project's server's extension: the current generation's last committed frame. */
  readonly maxFrameNo?: number | undefined
  /** Extension: the most frames one pull answer carries; without it, ask for `CLIENT_BATCH_FRAMES` at a time. */
  readonly maxPullFrames?: number | undefined
  /** Extension: the most frames one push request may carry; without it, send `CLIENT_BATCH_FRAMES` at a time. */
  readonly maxPushFrames?: number | undefined
  /** Extension: `true` when the remote serves `snapshot`. */
  readonly snapshot?: boolean | undefined
  /**
   * Extension: `true` when a push that names a database (`PushOptions.databaseId`) is refused as a
   * conflict by any other database.
   */
  readonly pushIdentity?: boolean | undefined
  /**
   * Extension: the longest a pull at the head waits for the next commit, in seconds (`PullOptions`);
   * absent when the remote does not wait.
   */
  readonly maxWaitSeconds?: number | undefined
  /**
   * Extension: a waiting pull may start at or before the last frame the client holds and wait while the
   * head is that frame (`PullOptions.after`); absent when the remote does not.
   */
  readonly waitAfter?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface PullOptions {
  /**
   * When the remote has nothing at or after `start` at the head of the current generation, wait up to
   * this many seconds (whole seconds; at most the remote's `maxWaitSeconds`) for the next commit before
   * answering CheckpointNeeded. A remote that does not wait answers at once. Interrupting the pull
   * abandons the wait (over HTTP, the request is aborted).
   */
  readonly waitSeconds?: number | undefined
  /**
   * With `waitSeconds`, against a remote whose `info` says `waitAfter`: wait while the head of the
   * generation is this frame (at or after `start - 1`) instead of while nothing is at or after `start`. A
   * pull from the client's last frame then answers that frame and the ones after it once they exist.
   * Other remotes ignore it.
   */
  readonly after?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface PushOptions {
  /**
   * The identity of the server database the frames build on (`Info.databaseId` as recorded): a remote
   * with `pushIdentity` answers Conflict, storing nothing, when it is another database. Other remotes
   * ignore it.
   */
  readonly databaseId?: string | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Where the remote is (the database URL over HTTP). A local database records it at bootstrap and
   * refuses another one unless told that the database moved; `undefined` is not checked.
   */
  readonly url?: string | undefined
  /**
   * The remote's current generation and, when the server gives them, the database's identity and what
   * it says about its extensions (`GET /info`).
   */
  readonly info: Effect.Effect<Info, SyncError.RemoteFailure>
  /** The base database file of a generation (`GET /export/{G}`). */
  readonly export: (generation: number) => Effect.Effect<Uint8Array, SyncError.RemoteFailure>
  /**
   * The current generation at its head as one file (`GET /snapshot`, when `info` says `snapshot`); a
   * remote without it fails with `RemoteError` `NotFound`.
   */
  readonly snapshot: Effect.Effect<RemoteSnapshot, SyncError.RemoteFailure>
  /**
   * Committed frames from `start` (fewer than `end - start` is fine), or CheckpointNeeded; with
   * `waitSeconds`, a pull at the head waits for the next commit first.
   */
  readonly pull: (
    generation: number,
    start: number,
    end: number,
    options?: PullOptions | undefined
  ) => Effect.Effect<PullResult, SyncError.RemoteFailure>
  /**
   * Frames `start..end-1`, sent in batches of at most `CLIENT_BATCH_FRAMES`, the baton of each answer
   * threaded into the next request. `Ok` means the remote holds every frame up to `end - 1`.
   */
  readonly push: (
    generation: number,
    start: number,
    end: number,
    frames: ReadonlyArray<WalFrame.Frame>,
    baton?: string | undefined,
    options?: PushOptions | undefined
  ) => Effect.Effect<PushResult, SyncError.RemoteFailure>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class SyncRemote extends Context.Tag("effect-sqlite-sync/SyncRemote")<SyncRemote, Service>() {}

type SingleRequest = (
  generation: number,
  start: number,
  end: number,
  frames: ReadonlyArray<WalFrame.Frame>,
  baton: string | undefined,
  options?: PushOptions | undefined
) => Effect.Effect<PushResult, SyncError.RemoteFailure>

/**
 * Splits a push into requests of at most `batchFrames` frames and threads batons between them. An `Ok`
 * that names a lower head than asked makes the push continue from there (what the protocol says a
 * server answers to a gap), a bounded number of times.
 *
 * @since 0.1.0
 * @category constructors
 */
export const batchedPush = (
  single: SingleRequest,
  batchFrames: number = SyncProtocol.CLIENT_BATCH_FRAMES
): Service["push"] =>
(generation, start, end, frames, baton, options) =>
  Effect.gen(function*() {
    if (frames.length !== end - start || frames.length === 0) {
      return yield* Effect.dieMessage(`SyncRemote.push: ${frames.length} frames for ${start}..${end}`)
    }
    let offset = 0
    let currentBaton = baton
    let restarts = 0
    for (;;) {
      const count = Math.min(batchFrames, frames.length - offset)
      const batchStart = start + offset
      const batchEnd = batchStart + count
      const result = yield* single(generation, batchStart, batchEnd, frames.slice(offset, offset + count), currentBaton, options)
      if (result._tag === "Conflict") return result
      if (result.maxFrameNo === batchEnd - 1) {
        offset += count
        currentBaton = result.baton
        if (offset === frames.length) return result
        continue
      }
      if (result.maxFrameNo >= start - 1 && result.maxFrameNo < batchEnd - 1 && restarts < 8) {
        restarts++
        offset = result.maxFrameNo + 1 - start
        currentBaton = result.baton
        continue
      }
      if (result.maxFrameNo < start - 1) {
        // The server rewinds below this push's first frame: its session for our earlier requests was lost
        // and someone else's commits now sit where our frames were. That is a conflict, not a retry.
        return { _tag: "Conflict", generation: result.generation, maxFrameNo: result.maxFrameNo } as const
      }
      return yield* new SyncError.RemoteError({
        reason: "Protocol",
        message: `push of frames ${batchStart}..${batchEnd - 1} answered ok with max_frame_no ${result.maxFrameNo}`
      })
    }
  })

// ---------------------------------------------------------------------------------------------------------
/**
 * What a client makes of a refusal with HTTP status `status`: a 5xx is the server's condition, retried
 * as a NetworkError; a 4xx is final. The same for a remote over HTTP and one in the same process
 * (`StoreRemote`, which takes the status of a store error from `SyncProtocol.errorStatus`).
 *
 * @since 0.1.0
 * @category errors
 */
export const failureOf = (status: number, message: string, cause?: unknown): SyncError.RemoteFailure =>
  status >= 500
    ? new SyncError.NetworkError({ reason: "ServerUnavailable", message, cause })
    : new SyncError.RemoteError({
      reason: status === 401 || status === 403
        ? "Unauthorized"
        : status === 404
        ? "NotFound"
        : status === 410
        ? "GenerationGone"
        : status >= 400 && status < 500
        ? "Refused"
        : "Protocol",
      message,
      status,
      cause
    })

// HTTP
// ---------------------------------------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category models
 */
export interface HttpOptions {
  /** The database URL, e.g. `http://127.0.0.1:8080/db/notes`; routes are appended to it. */
  readonly url: string
  readonly authToken?: Redacted.Redacted | string | undefined
  /** Retries of transient failures (transport errors, 5xx). Default: exponential from 100 ms, 6 retries. */
  readonly retrySchedule?: Schedule.Schedule<unknown, SyncError.RemoteFailure> | undefined
  /** Time allowed for one request, body included; a waiting pull gets its wait on top. Default 30 seconds. */
  readonly requestTimeout?: Duration.DurationInput | undefined
}

/**
 * The whole seconds a pull asks to wait: `waitSeconds` floored and cut to what the remote allows
 * (`maxWaitSeconds`, undefined when it does not wait); 0 means "do not ask".
 *
 * @since 0.1.0
 * @category constructors
 */
export const waitToAsk = (waitSeconds: number | undefined, maxWaitSeconds: number | undefined): number =>
  waitSeconds === undefined || maxWaitSeconds === undefined || !(waitSeconds >= 1)
    ? 0
    : Math.min(Math.floor(waitSeconds), maxWaitSeconds)

const decodeInfo = Schema.decodeUnknownEither(SyncProtocol.InfoResponse)
const decodePush = Schema.decodeUnknownEither(SyncProtocol.PushResponse)
const decodeCheckpoint = Schema.decodeUnknownEither(SyncProtocol.CheckpointNeeded)
const decodeErrorBody = Schema.decodeUnknownEither(SyncProtocol.ErrorBody)

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const makeHttp = (options: HttpOptions): Effect.Effect<Service, never, HttpClient.HttpClient> =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const base = options.url.replace(/\/+$/, "")
    const token = options.authToken === undefined
      ? undefined
      : typeof options.authToken === "string"
      ? options.authToken
      : Redacted.value(options.authToken)
    const baseTimeout = Duration.decode(options.requestTimeout ?? Duration.seconds(30))
    // What the last `info` said about waiting pulls: undefined until asked, 0 when the remote does not wait.
    let maxWaitSeconds: number | undefined = undefined
    // Frames per push request: what the last `info` allowed, the libSQL client's batch until one did.
    let pushBatch = SyncProtocol.CLIENT_BATCH_FRAMES
    const schedule = options.retrySchedule ??
      Schedule.intersect(Schedule.exponential(Duration.millis(100), 2), Schedule.recurs(6))

    const transport = (request: HttpClientRequest.HttpClientRequest) => (cause: HttpClientError.HttpClientError) =>
      new SyncError.NetworkError({
        reason: "Transport",
        message: `${request.method} ${request.url}: ${TransportCause.describe(cause)}`,
        cause
      })

    // One request, its body read fully; transport failures and 5xx are NetworkErrors (retried), the
    // rest is left to `interpret`.
    const send = <A>(
      request: HttpClientRequest.HttpClientRequest,
      interpret: (
        status: number,
        body: Uint8Array,
        headers: Readonly<Record<string, string | undefined>>
      ) => Either.Either<A, SyncError.RemoteFailure>,
      serverErrorIsAnswer = false,
      timeout = baseTimeout
    ): Effect.Effect<A, SyncError.RemoteFailure> => {
      const withAuth = token === undefined ? request : HttpClientRequest.bearerToken(request, token)
      const once = client.execute(withAuth).pipe(
        Effect.flatMap((response: HttpClientResponse.HttpClientResponse) =>
          Effect.map(response.arrayBuffer, (buffer) => [response.status, new Uint8Array(buffer), response.headers] as const)
        ),
        Effect.mapError(transport(request)),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new SyncError.NetworkError({
              reason: "Transport",
              message: `${request.method} ${request.url}: no answer within ${Duration.format(timeout)}`
            })
        }),
        Effect.flatMap(([status, body, headers]): Effect.Effect<A, SyncError.RemoteFailure> => {
          if (status >= 500 && !(serverErrorIsAnswer && status === 500)) {
            return Effect.fail(
              new SyncError.NetworkError({
                reason: "ServerUnavailable",
                message: `${request.method} ${request.url}: ${status} ${describeBody(body)}`
              })
            )
          }
          return interpret(status, body, headers)
        })
      )
      return Effect.retry(once, {
        schedule,
        while: (error) => error._tag === "NetworkError"
      })
    }

    const refused = (request: string, status: number, body: Uint8Array): SyncError.RemoteFailure =>
      failureOf(status, `${request}: ${status} ${describeBody(body)}`)

    const json = <A>(
      label: string,
      status: number,
      body: Uint8Array,
      decode: (u: unknown) => Either.Either<A, unknown>
    ): Either.Either<A, SyncError.RemoteError> =>
      Either.mapLeft(
        decode(parseJson(new TextDecoder().decode(body))),
        (cause) =>
          new SyncError.RemoteError({
            reason: "Protocol",
            message: `${label}: unexpected ${status} body ${describeBody(body)}`,
            status,
            cause
          })
      )

    const info: Service["info"] = Effect.suspend(() => {
      const url = `${base}/info`
      return send(HttpClientRequest.get(url), (status, body) =>
        status === 200
          ? Either.map(json(`GET ${url}`, status, body, decodeInfo), (i): Info => {
            const known: { -readonly [K in keyof Info]: Info[K] } = {
              generation: i.current_generation,
              databaseId: i.database_id
            }
            if (i.max_frame_no !== undefined) known.maxFrameNo = i.max_frame_no
            if (i.max_pull_frames !== undefined) known.maxPullFrames = i.max_pull_frames
            if (i.max_push_frames !== undefined) known.maxPushFrames = i.max_push_frames
            // (bounded by what this client ever sends at once)
            pushBatch = Math.min(i.max_push_frames ?? SyncProtocol.CLIENT_BATCH_FRAMES, SyncProtocol.MAX_FRAMES_PER_REQUEST)
            if (i.extensions?.includes(SyncProtocol.EXTENSION_SNAPSHOT) === true) known.snapshot = true
            if (i.extensions?.includes(SyncProtocol.EXTENSION_PUSH_IDENTITY) === true) known.pushIdentity = true
            const waits = i.extensions?.includes(SyncProtocol.EXTENSION_WAIT) === true && (i.max_wait_seconds ?? 0) > 0
            if (waits) known.maxWaitSeconds = i.max_wait_seconds
            if (waits && i.extensions?.includes(SyncProtocol.EXTENSION_WAIT_AFTER) === true) known.waitAfter = true
            maxWaitSeconds = waits ? i.max_wait_seconds : 0
            return known
          })
          : Either.left(refused(`GET ${url}`, status, body)))
    })

    const exportGeneration: Service["export"] = (generation) =>
      Effect.suspend(() => {
        const url = `${base}/export/${generation}`
        return send(HttpClientRequest.get(url), (status, body) =>
          status !== 200 ? Either.left(refused(`GET ${url}`, status, body)) : wholePages(`GET ${url}`, "base", body))
      })

    const snapshot: Service["snapshot"] = Effect.suspend(() => {
      const url = `${base}/snapshot`
      return send(HttpClientRequest.get(url), (status, body, headers) => {
        if (status !== 200) return Either.left(refused(`GET ${url}`, status, body))
        const generation = headerNumber(headers[SyncProtocol.HEADER_GENERATION], 1)
        const frameNo = headerNumber(headers[SyncProtocol.HEADER_FRAME], 0)
        if (generation === undefined || frameNo === undefined) {
          return Either.left(
            new SyncError.RemoteError({
              reason: "Protocol",
              message: `GET ${url}: missing or invalid ${SyncProtocol.HEADER_GENERATION} / ${SyncProtocol.HEADER_FRAME} headers`,
              status
            })
          )
        }
        const databaseId = headers[SyncProtocol.DATABASE_ID_HEADER]
        return Either.map(wholePages(`GET ${url}`, "snapshot", body), (bytes) => ({
          generation,
          frameNo,
          bytes,
          ...(typeof databaseId === "string" && databaseId !== "" ? { databaseId } : {})
        }))
      })
    })

    // Whether the remote waits is learnt from `info`, asked once if nothing asked it before.
    const waitFor = (waitSeconds: number | undefined): Effect.Effect<number, SyncError.RemoteFailure> =>
      waitSeconds === undefined || !(waitSeconds >= 1)
        ? Effect.succeed(0)
        : maxWaitSeconds !== undefined
        ? Effect.succeed(waitToAsk(waitSeconds, maxWaitSeconds))
        : Effect.map(info, () => waitToAsk(waitSeconds, maxWaitSeconds))

    const pull: Service["pull"] = (generation, start, end, pullOptions) =>
      Effect.flatMap(waitFor(pullOptions?.waitSeconds), (wait) => {
        const url = `${base}/sync/${generation}/${start}/${end}`
        const request = wait === 0
          ? HttpClientRequest.get(url)
          : HttpClientRequest.get(url).pipe(HttpClientRequest.setHeader(
            SyncProtocol.HEADER_PREFER,
            pullOptions?.after === undefined
              ? SyncProtocol.formatWait(wait)
              : SyncProtocol.formatWaitAfter(wait, pullOptions.after)
          ))
        return send(
          request,
          (status, body, headers): Either.Either<PullResult, SyncError.RemoteFailure> => {
            if (status === 200) {
              if (body.byteLength === 0) {
                return Either.left(
                  new SyncError.RemoteError({ reason: "Protocol", message: `GET ${url}: empty 200 body`, status })
                )
              }
              return Either.mapBoth(WalFrame.decodeWire(body), {
                onLeft: (cause) =>
                  new SyncError.RemoteError({ reason: "Protocol", message: `GET ${url}: ${cause.message}`, status, cause }),
                onRight: (frames): PullResult => {
                  const databaseId = headers[SyncProtocol.DATABASE_ID_HEADER]
                  return typeof databaseId === "string" && databaseId !== ""
                    ? { _tag: "Frames", frames, databaseId }
                    : { _tag: "Frames", frames }
                }
              })
            }
            if (status === 400 || status === 500) {
              const checkpoint = decodeCheckpoint(parseJson(new TextDecoder().decode(body)))
              if (Either.isRight(checkpoint)) {
                const databaseId = headers[SyncProtocol.DATABASE_ID_HEADER]
                return Either.right({
                  _tag: "CheckpointNeeded",
                  generation: checkpoint.right.generation,
                  maxFrameNo: checkpoint.right.max_frame_no,
                  ...(typeof databaseId === "string" && databaseId !== "" ? { databaseId } : {})
                })
              }
              if (status === 500) {
                return Either.left(
                  new SyncError.NetworkError({
                    reason: "ServerUnavailable",
                    message: `GET ${url}: 500 ${describeBody(body)}`
                  })
                )
              }
            }
            return Either.left(refused(`GET ${url}`, status, body))
          },
          true,
          wait === 0 ? baseTimeout : Duration.sum(baseTimeout, Duration.seconds(wait))
        )
      })

    const single: SingleRequest = (generation, start, end, frames, baton, pushOptions) =>
      Effect.suspend(() => {
        const url = `${base}/sync/${generation}/${start}/${end}${baton === undefined ? "" : `/${encodeURIComponent(baton)}`}`
        const post = HttpClientRequest.post(url).pipe(
          HttpClientRequest.bodyUint8Array(WalFrame.encodeWire(frames), "application/octet-stream")
        )
        const request = pushOptions?.databaseId === undefined
          ? post
          : HttpClientRequest.setHeader(post, SyncProtocol.DATABASE_ID_HEADER, pushOptions.databaseId)
        return send(request, (status, body): Either.Either<PushResult, SyncError.RemoteFailure> => {
          if (status !== 200) return Either.left(refused(`POST ${url}`, status, body))
          return Either.map(json(`POST ${url}`, status, body, decodePush), (r): PushResult =>
            r.status === "ok"
              ? { _tag: "Ok", generation: r.generation, maxFrameNo: r.max_frame_no, baton: r.baton }
              : { _tag: "Conflict", generation: r.generation, maxFrameNo: r.max_frame_no })
        })
      })

    const push: Service["push"] = (generation, start, end, frames, baton, pushOptions) =>
      Effect.suspend(() => batchedPush(single, pushBatch)(generation, start, end, frames, baton, pushOptions))

    return { url: base, info, export: exportGeneration, snapshot, pull, push }
  })

/** A database file must be whole pages: anything else is a cut or a foreign answer. */
const wholePages = (request: string, what: string, body: Uint8Array): Either.Either<Uint8Array, SyncError.RemoteError> =>
  body.byteLength === 0 || body.byteLength % WalFrame.PAGE_SIZE !== 0
    ? Either.left(
      new SyncError.RemoteError({
        reason: "Protocol",
        message: `${request}: a ${what} of ${body.byteLength} bytes is not whole pages`,
        status: 200
      })
    )
    : Either.right(body)

const headerNumber = (value: string | undefined, min: number): number | undefined => {
  if (value === undefined || !/^[0-9]{1,10}$/.test(value)) return undefined
  const n = Number(value)
  return n >= min && n <= 2 ** 31 - 1 ? n : undefined
}

const describeBody = (body: Uint8Array): string => {
  const text = new TextDecoder().decode(body.subarray(0, 300))
  const decoded = decodeErrorBody(parseJson(text))
  if (Either.isRight(decoded)) {
    return decoded.right.message === undefined ? decoded.right.error : `${decoded.right.error}: ${decoded.right.message}`
  }
  return /^[\x20-\x7e\s]*$/.test(text) ? JSON.stringify(text) : `(${body.byteLength} bytes)`
}

/**
 * The WAL-frame sync protocol over HTTP. Requires an `HttpClient` (e.g. `FetchHttpClient.layer` or
 * `NodeHttpClient.layerUndici`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerHttp = (options: HttpOptions): Layer.Layer<SyncRemote, never, HttpClient.HttpClient> =>
  Layer.effect(SyncRemote, makeHttp(options))
