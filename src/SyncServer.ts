/**
 * The HTTP server of the WAL-frame sync protocol: the routes of docs/protocol.md over a `ServerStore`,
 * with bearer-token auth, body limits, hostile-input checks and one structured log line per request.
 *
 * A database lives at `http://HOST:PORT/db/NAME`; the libSQL client (offline writes) and this project's
 * own client use that URL as their sync URL.
 *
 * @since 0.1.0
 */
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import type * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as HashMap from "effect/HashMap"
import * as HashSet from "effect/HashSet"
import * as Inspectable from "effect/Inspectable"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as nodeHttpGuard from "./internal/server/nodeHttpGuard.js"
import * as ServerBody from "./internal/server/serverBody.js"
import * as Scratch from "./internal/sqlite/scratch.js"
import * as serverMetrics from "./internal/server/serverMetrics.js"
import * as internal from "./internal/server/syncServer.js"
import * as waitingPull from "./internal/server/waitingPull.js"
import { type Body, ServerStore, type StoreError } from "./ServerStore.js"
import * as SyncProtocol from "./SyncProtocol.js"
import * as WalFrame from "./WalFrame.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** When set, every request needs `Authorization: Bearer <token>`; others get 401. */
  readonly authToken?: Redacted.Redacted<string> | undefined
  /** Largest push body accepted, in bytes (default: `MAX_FRAMES_PER_REQUEST` frames). */
  readonly maxBodyBytes?: number | undefined
  /**
   * The longest a pull at the head waits for the next commit when it asks to (`Prefer: wait=N`), in
   * seconds (default `SyncProtocol.DEFAULT_MAX_WAIT_SECONDS`); 0 turns waiting pulls off, and `/info` then
   * does not offer them.
   */
  readonly maxWaitSeconds?: number | undefined
  /**
   * How many pulls may wait at once (default 10 000); a pull beyond it is answered at once, as if it had
   * not asked to wait.
   */
  readonly maxWaitingPulls?: number | undefined
}

/**
 * The default of `Options.maxWaitingPulls`.
 *
 * @since 0.1.0
 * @category constants
 */
export const DEFAULT_MAX_WAITING_PULLS = 10_000

/**
 * The default push body limit: `MAX_FRAMES_PER_REQUEST` whole frames.
 *
 * @since 0.1.0
 * @category constants
 */
export const DEFAULT_MAX_BODY_BYTES = SyncProtocol.MAX_FRAMES_PER_REQUEST * WalFrame.FRAME_SIZE

// What the per-request log line reports; handlers fill it in as they learn it.
class RequestLog extends Context.Tag("effect-sqlite-sync/SyncServer/RequestLog")<RequestLog, {
  database: string | undefined
  route: string
  frames: number
  bytes: number
  outcome: string | undefined
  error: string | undefined
  detail: string | undefined
  /** Seconds the request waited for a commit: not serving time, so left out of the latency histogram. */
  waited: number
  /** The request asked to wait and could not (the server holds as many waiting pulls as it allows, or stops). */
  waitRefused: boolean
}>() {}

const fail = (failure: internal.HttpFailure) => Effect.fail(failure)

const fromEither = <A>(either: Either.Either<A, internal.HttpFailure>) => Either.isRight(either) ? Effect.succeed(either.right) : fail(either.left)

const failureResponse = (failure: internal.HttpFailure) =>
  HttpServerResponse.unsafeJson({ error: failure.code, message: failure.message }, {
    status: failure.status,
    headers: failure.headers
  })

const json = (body: unknown, status = 200) => HttpServerResponse.unsafeJson(body, { status })

const describe = (route: string) =>
  Effect.flatMap(RequestLog, (log) =>
    Effect.sync(() => {
      log.route = route
    }))

const databaseParam = Effect.gen(function*() {
  const params = yield* HttpRouter.params
  const database = yield* fromEither(internal.parseDatabaseName(params.name))
  const log = yield* RequestLog
  log.database = database
  return { params, database }
})

// Maps a store refusal to its HTTP failure and keeps the store's own words for the log when hiding them.
const storeFailure = (route: "pull" | "other") => (error: StoreError) =>
  Effect.flatMap(RequestLog, (log) => {
    const failure = internal.fromStoreError(error, route)
    if (error.reason === "Storage") {
      log.detail = error.message
      return fail(new internal.HttpFailure({ ...failure, message: "the server could not read or write its storage" }))
    }
    return fail(failure)
  })

const recordMetrics = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  log: Context.Tag.Service<RequestLog>,
  status: number,
  seconds: number
) =>
  serverMetrics.recordRequest(fiber.getFiberRef(FiberRef.currentMetricLabels), {
    route: log.route,
    status,
    seconds,
    waited: log.waited,
    frames: log.frames,
    bytes: log.bytes
  })

/**
 * Writes the line `Effect.annotateLogs(Effect.logWithLevel(level)(message), annotations)` would, to the
 * fiber's loggers, without setting the fiber's annotations to do so: each set of them compares the whole
 * annotation maps, a large share of a request's log cost.
 */
const logLine = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  clock: Clock.Clock,
  level: LogLevel.LogLevel,
  message: string,
  annotations: Readonly<Record<string, unknown>>
): void => {
  if (LogLevel.greaterThan(fiber.getFiberRef(FiberRef.currentMinimumLogLevel), level)) return
  const loggers = fiber.getFiberRef(FiberRef.currentLoggers)
  if (HashSet.size(loggers) === 0) return
  let all = fiber.getFiberRef(FiberRef.currentLogAnnotations)
  for (const [key, value] of Object.entries(annotations)) all = HashMap.set(all, key, value)
  const spans = fiber.getFiberRef(FiberRef.currentLogSpan)
  const context = fiber.getFiberRefs()
  const date = new Date(clock.unsafeCurrentTimeMillis())
  Inspectable.withRedactableContext(context, () => {
    for (const logger of loggers) {
      logger.log({
        fiberId: fiber.id(),
        logLevel: level,
        message: [message],
        cause: Cause.empty,
        context,
        spans,
        annotations: all,
        date
      })
    }
  })
}

/**
 * The sync protocol as an `HttpApp` over the `ServerStore` in context. It never fails: every refusal
 * is a JSON response, and every request logs exactly one line (annotations `database`, `method`,
 * `route`, `status`, `frames`, `bytes`, `ms`; `outcome` for pushes and checkpoint answers; `error`
 * when refused; `waited_ms` for a pull that waited for a commit).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<
  Effect.Effect<HttpServerResponse.HttpServerResponse, never, HttpServerRequest.HttpServerRequest | Scope.Scope>,
  never,
  ServerStore
> => Effect.map(makeApp(options), (app) => app.handler)

interface App {
  readonly handler: Effect.Effect<HttpServerResponse.HttpServerResponse, never, HttpServerRequest.HttpServerRequest | Scope.Scope>
  /** Ends every waiting pull (they answer what is there) and makes later ones answer at once. */
  readonly shutdown: Effect.Effect<void>
}

/**
 * What the platform does while a pull waits, such as lifting the idle timeout of its connection (nothing
 * moves on it while it waits).
 */
type WhileWaiting = (
  request: HttpServerRequest.HttpServerRequest,
  wait: Effect.Effect<void, StoreError>
) => Effect.Effect<void, StoreError>

const makeApp = (options: Options, whileWaiting?: WhileWaiting): Effect.Effect<App, never, ServerStore> =>
  Effect.gen(function*() {
    const store = yield* ServerStore
    if (options.authToken !== undefined && Redacted.value(options.authToken).length === 0) {
      // "Bearer " with nothing after it is what the libSQL client sends when it has no token.
      return yield* Effect.dieMessage("SyncServer: authToken must not be empty")
    }
    const expected = options.authToken === undefined ? undefined : internal.digest(Redacted.value(options.authToken))
    const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES
    if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes < WalFrame.FRAME_SIZE) {
      return yield* Effect.dieMessage(`SyncServer: maxBodyBytes must be an integer >= ${WalFrame.FRAME_SIZE}`)
    }
    const maxPushFrames = Math.floor(maxBodyBytes / WalFrame.FRAME_SIZE)
    const maxWaitSeconds = options.maxWaitSeconds ?? SyncProtocol.DEFAULT_MAX_WAIT_SECONDS
    if (!Number.isSafeInteger(maxWaitSeconds) || maxWaitSeconds < 0 || maxWaitSeconds > SyncProtocol.MAX_WAIT_SECONDS_LIMIT) {
      return yield* Effect.dieMessage(
        `SyncServer: maxWaitSeconds must be an integer from 0 to ${SyncProtocol.MAX_WAIT_SECONDS_LIMIT}`
      )
    }
    const maxWaitingPulls = options.maxWaitingPulls ?? DEFAULT_MAX_WAITING_PULLS
    if (!Number.isSafeInteger(maxWaitingPulls) || maxWaitingPulls < 0) {
      return yield* Effect.dieMessage("SyncServer: maxWaitingPulls must be an integer >= 0")
    }
    // Waiting pulls of this server: counted for the cap and `/metrics`, ended at once by `shutdown`.
    const waits = { waiting: 0, closing: false }
    const closing = yield* Deferred.make<void>()

    // Every answer that comes from a database names it, so a client can tell a database restored or
    // recreated under the same name from the one it synced with. The id is read before the request's
    // work, so the answer is written as soon as it is ready.
    const identify = (database: string, route: "pull" | "other") =>
      Effect.map(
        store.databaseId(database).pipe(Effect.catchAll(storeFailure(route))),
        (id) => (response: HttpServerResponse.HttpServerResponse): HttpServerResponse.HttpServerResponse =>
          id === undefined ? response : HttpServerResponse.setHeader(response, SyncProtocol.DATABASE_ID_HEADER, id)
      )

    const EXTENSIONS = [SyncProtocol.EXTENSION_SNAPSHOT, SyncProtocol.EXTENSION_PUSH_IDENTITY]
    const info = Effect.gen(function*() {
      yield* describe("GET /info")
      const { database } = yield* databaseParam
      const id = yield* store.databaseId(database).pipe(Effect.catchAll(storeFailure("other")))
      const result = yield* store.info(database).pipe(Effect.catchAll(storeFailure("other")))
      const body: typeof SyncProtocol.InfoResponse.Encoded = {
        current_generation: result.generation,
        max_frame_no: result.maxFrameNo,
        max_pull_frames: store.maxPullFrames,
        max_push_frames: maxPushFrames,
        ...(maxWaitSeconds > 0
          ? { extensions: [...EXTENSIONS, SyncProtocol.EXTENSION_WAIT, SyncProtocol.EXTENSION_WAIT_AFTER], max_wait_seconds: maxWaitSeconds }
          : { extensions: EXTENSIONS }),
        ...(id === undefined ? {} : { database_id: id })
      }
      const response = json(body)
      return id === undefined ? response : HttpServerResponse.setHeader(response, SyncProtocol.DATABASE_ID_HEADER, id)
    })

    // A stored file as the answer: read from disk as the client reads it (the request's scope keeps the
    // file open until the answer is sent), with its length so a cut answer is detectable.
    const fileResponse = (body: Body, headers?: Record<string, string>) =>
      Effect.gen(function*() {
        const log = yield* RequestLog
        log.bytes = body.size
        const bytes = ServerBody.bytesOf(body)
        if (bytes !== undefined) {
          return HttpServerResponse.uint8Array(bytes, { contentType: "application/octet-stream", headers })
        }
        // A failed read after the status is sent can only cut the connection, which the length exposes.
        return HttpServerResponse.stream(body.stream as Stream.Stream<Uint8Array, unknown>, {
          contentType: "application/octet-stream",
          contentLength: body.size,
          headers
        })
      })

    const exportGeneration = Effect.gen(function*() {
      yield* describe("GET /export/{G}")
      const { database, params } = yield* databaseParam
      const generation = yield* fromEither(internal.parsePathNumber(params.generation, "generation"))
      const stamp = yield* identify(database, "other")
      const body = yield* store.openExport(database, generation).pipe(Effect.catchAll(storeFailure("other")))
      return stamp(yield* fileResponse(body))
    })

    const snapshot = Effect.gen(function*() {
      yield* describe("GET /snapshot")
      const { database } = yield* databaseParam
      const stamp = yield* identify(database, "other")
      const result = yield* store.snapshot(database).pipe(Effect.catchAll(storeFailure("other")))
      return stamp(
        yield* fileResponse(result.body, {
          [SyncProtocol.HEADER_GENERATION]: String(result.generation),
          [SyncProtocol.HEADER_FRAME]: String(result.frameNo)
        })
      )
    })

    const range = (params: Readonly<Record<string, string | undefined>>) =>
      Effect.gen(function*() {
        const generation = yield* fromEither(internal.parsePathNumber(params.generation, "generation"))
        const start = yield* fromEither(internal.parsePathNumber(params.start, "start"))
        const end = yield* fromEither(internal.parsePathNumber(params.end, "end"))
        if (end <= start) {
          return yield* fail(
            new internal.HttpFailure({ status: 400, code: "bad_range", message: "end must be greater than start" })
          )
        }
        return { generation, start, end }
      })

    const pull = Effect.gen(function*() {
      yield* describe("GET /sync/{G}/{start}/{end}")
      const { database, params } = yield* databaseParam
      const { end, generation, start } = yield* range(params)
      const capped = Math.min(end, start + store.maxPullFrames)
      const request = yield* HttpServerRequest.HttpServerRequest
      const log = yield* RequestLog
      // Without the extension the preference is ignored, as RFC 7240 has servers do.
      const asked = maxWaitSeconds === 0 ? undefined : SyncProtocol.parsePreferWait(request.headers[SyncProtocol.HEADER_PREFER])
      const granted = asked === undefined || waits.closing || waits.waiting >= maxWaitingPulls
        ? 0
        : Math.min(asked, maxWaitSeconds)
      // The wait granted: 0 also when the pull turned out to be one that could not wait after all.
      const applied = (response: HttpServerResponse.HttpServerResponse) =>
        asked === undefined ? response : HttpServerResponse.setHeader(
          response,
          SyncProtocol.HEADER_PREFERENCE_APPLIED,
          SyncProtocol.formatWait(log.waitRefused ? 0 : granted)
        )
      const stamp = yield* identify(database, "pull")
      // 503, never 500, on this route: the libSQL client reads a 500 here as "checkpoint needed".
      const result = yield* waitingPull.pull(
        store,
        database,
        generation,
        start,
        capped,
        granted * 1000,
        guardWait(log, request),
        asked === undefined ? undefined : SyncProtocol.parsePreferAfter(request.headers[SyncProtocol.HEADER_PREFER])
      ).pipe(
        Effect.catchAll(storeFailure("pull"))
      )
      if (result._tag === "CheckpointNeeded") {
        log.outcome = "checkpoint_needed"
        return applied(stamp(
          json({ status: "checkpoint_needed", generation: result.generation, max_frame_no: result.maxFrameNo }, 400)
        ))
      }
      if (result.frames.length === 0) {
        // An empty 200 is an error to clients; the store promised CheckpointNeeded instead.
        return yield* Effect.dieMessage("ServerStore.pull returned no frames")
      }
      const body = WalFrame.encodeWire(result.frames)
      log.frames = result.frames.length
      log.bytes = body.byteLength
      return applied(stamp(HttpServerResponse.uint8Array(body, { contentType: "application/octet-stream" })))
    })

    // A wait is counted while it lasts (a client that hangs up interrupts it, which ends the count), ends
    // at once on shutdown, and is skipped when the server already holds `maxWaitingPulls` of them.
    const guardWait = (log: Context.Tag.Service<RequestLog>, request: HttpServerRequest.HttpServerRequest) =>
    (
      wait: Effect.Effect<void, StoreError>
    ) =>
      Effect.suspend(() => {
        if (waits.closing || waits.waiting >= maxWaitingPulls) {
          log.waitRefused = true
          return Effect.void
        }
        waits.waiting++
        const during = whileWaiting === undefined ? wait : whileWaiting(request, wait)
        return Effect.raceFirst(during, Deferred.await(closing)).pipe(
          Effect.timed,
          Effect.map(([duration]) => {
            log.waited = Duration.toSeconds(duration)
          }),
          Effect.ensuring(Effect.sync(() => {
            waits.waiting--
          }))
        )
      })

    const push = (route: string) =>
      Effect.gen(function*() {
        yield* describe(route)
        const { database, params } = yield* databaseParam
        const { end, generation, start } = yield* range(params)
        const baton = yield* fromEither(internal.parseBaton(params.baton))
        const count = end - start
        if (count > maxPushFrames) {
          return yield* fail(internal.tooLarge(`a push carries at most ${maxPushFrames} frames, not ${count}`))
        }
        const expectedBytes = count * WalFrame.FRAME_SIZE
        const request = yield* HttpServerRequest.HttpServerRequest
        // (the body read into a buffer kept between requests: the store copies whatever it keeps of the frames)
        return yield* Scratch.withBuffer(expectedBytes, (into) => Effect.gen(function*() {
          const declared = request.headers["content-length"]
          if (declared !== undefined && /^[0-9]{1,15}$/.test(declared) && Number(declared) <= maxBodyBytes) {
            if (Number(declared) !== expectedBytes) {
              return yield* fail(
                new internal.HttpFailure({
                  status: 400,
                  code: "bad_frames",
                  message: `frames ${start}..${end - 1} take ${expectedBytes} bytes, the body declares ${declared}`
                })
              )
            }
          }
          const body = yield* internal.readBody(request, maxBodyBytes, 2 * maxBodyBytes, into)
          const log = yield* RequestLog
          log.bytes = body.byteLength
          if (body.byteLength !== expectedBytes) {
            return yield* fail(
              new internal.HttpFailure({
                status: 400,
                code: "bad_frames",
                message: `frames ${start}..${end - 1} take ${expectedBytes} bytes, the body has ${body.byteLength}`
              })
            )
          }
          const frames = yield* WalFrame.decodeWire(body).pipe(
            Effect.mapError((error) => new internal.HttpFailure({ status: 400, code: "bad_frames", message: error.message }))
          )
          // Sound without the baton's earlier frames: they can only add pages a commit size must cover.
          yield* WalFrame.validateTransactions(frames).pipe(
            Effect.mapError((error) => new internal.HttpFailure({ status: 400, code: "bad_frames", message: error.message }))
          )
          log.frames = frames.length
          const stamp = yield* identify(database, "other")
          // A push that reached the store finishes even if the client goes away: its answer may be lost,
          // which the protocol allows (re-push is idempotent), but a half-applied push is not.
          // The identity the pusher's frames build on, when it names one (extension `push_identity`).
          const named = request.headers[SyncProtocol.DATABASE_ID_HEADER]
          const result = yield* store.push(database, generation, start, end, frames, baton, {
            databaseId: named === undefined || named === "" ? undefined : named
          }).pipe(
            Effect.catchAll(storeFailure("other")),
            Effect.uninterruptible
          )
          log.outcome = result._tag === "Conflict" ? "conflict" : "ok"
          if (result._tag === "Conflict") {
            return stamp(json({ status: "conflict", generation: result.generation, max_frame_no: result.maxFrameNo }))
          }
          return stamp(json(
            result.baton === undefined
              ? { status: "ok", generation: result.generation, max_frame_no: result.maxFrameNo }
              : { status: "ok", generation: result.generation, max_frame_no: result.maxFrameNo, baton: result.baton }
          ))
        }))
      })

    // Liveness: the process answers. No store access, so a slow store never gets the process restarted.
    const health = Effect.as(describe("GET /health"), json({ status: "ok" }))

    // Readiness: the store answers (a load balancer sends no traffic here while it does not).
    const ready = Effect.gen(function*() {
      yield* describe("GET /ready")
      // Mapped as on the pull route: a store that does not answer is 503, which load balancers read as "not ready".
      yield* store.stats.pipe(Effect.catchAll(storeFailure("pull")))
      return json({ status: "ready" })
    })

    const metrics = Effect.gen(function*() {
      yield* describe("GET /metrics")
      // A store that does not answer leaves its gauges as they were; the request counts still matter then.
      const stats = yield* Effect.option(store.stats)
      if (Option.isSome(stats)) {
        yield* Metric.set(serverMetrics.databases, stats.value.databases)
        yield* Metric.set(serverMetrics.openBatons, stats.value.openBatons)
      }
      yield* Metric.set(serverMetrics.waitingPulls, waits.waiting)
      const text = serverMetrics.renderPrometheus(yield* Metric.snapshot)
      return HttpServerResponse.text(text, { contentType: "text/plain; version=0.0.4; charset=utf-8" })
    })

    const router = HttpRouter.empty.pipe(
      HttpRouter.get("/health", health),
      HttpRouter.get("/ready", ready),
      HttpRouter.get("/metrics", metrics),
      HttpRouter.get("/db/:name/info", info),
      HttpRouter.get("/db/:name/snapshot", snapshot),
      HttpRouter.get("/db/:name/export/:generation", exportGeneration),
      HttpRouter.get("/db/:name/sync/:generation/:start/:end", pull),
      HttpRouter.post("/db/:name/sync/:generation/:start/:end", push("POST /sync/{G}/{start}/{end}")),
      HttpRouter.post("/db/:name/sync/:generation/:start/:end/:baton", push("POST /sync/{G}/{start}/{end}/{baton}"))
    )
    // Strict paths: `/info/` is not `/info`.
    const routed = yield* HttpRouter.toHttpApp(router).pipe(HttpRouter.withRouterConfig({ ignoreTrailingSlash: false }))

    const dispatch = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const path = yield* fromEither(internal.pathOf(request.url))
      // Load balancers probe these without credentials; they tell nothing about any database.
      const probe = (request.method === "GET" || request.method === "HEAD") && (path === "/health" || path === "/ready")
      if (expected !== undefined && !probe) {
        yield* fromEither(internal.authorize(expected, request.headers["authorization"]))
      }
      return yield* routed.pipe(
        Effect.catchIf(
          (error): error is HttpServerError.RouteNotFound => error._tag === "RouteNotFound",
          () => fail(internal.classifyUnrouted(request.method, path))
        )
      )
    })

    const shutdown = Effect.suspend(() => {
      waits.closing = true
      return Deferred.succeed(closing, undefined)
    })

    const handler = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const started = yield* Clock.currentTimeNanos
      const log: Context.Tag.Service<RequestLog> = {
        database: undefined,
        route: "unrouted",
        frames: 0,
        bytes: 0,
        outcome: undefined,
        error: undefined,
        detail: undefined,
        waited: 0,
        waitRefused: false
      }
      return yield* dispatch.pipe(
        Effect.catchAll((failure) => {
          log.error = failure.code
          return Effect.succeed(failureResponse(failure))
        }),
        Effect.catchAllCause((cause) => {
          if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause)
          log.error = "internal"
          log.detail = Cause.pretty(cause)
          // Any 5xx but 503 on the pull route would read as "checkpoint needed" to the libSQL client.
          const status = log.route.startsWith("GET /sync") ? 503 : 500
          return Effect.succeed(
            failureResponse(new internal.HttpFailure({ status, code: "internal", message: "internal server error" }))
          )
        }),
        Effect.provideService(RequestLog, log),
        Effect.onExit((exit) =>
          Effect.clockWith((clock) =>
            Effect.withFiberRuntime<void>((fiber) => {
              const ended = clock.unsafeCurrentTimeNanos()
              const status = Exit.isSuccess(exit) ? exit.value.status : 499
              const annotations: Record<string, unknown> = {
                database: log.database ?? "-",
                method: request.method,
                route: log.route,
                status,
                frames: log.frames,
                bytes: log.bytes,
                ms: Math.round(Number(ended - started) / 1e4) / 100
              }
              if (log.outcome !== undefined) annotations.outcome = log.outcome
              if (log.error !== undefined) annotations.error = log.error
              if (log.detail !== undefined) annotations.detail = log.detail
              if (log.waited > 0) annotations.waited_ms = Math.round(log.waited * 1000)
              logLine(fiber, clock, status >= 500 ? LogLevel.Error : LogLevel.Info, "request", annotations)
              recordMetrics(fiber, log, status, Number(ended - started) / 1e9)
              return Effect.void
            })
          )
        )
      )
    })
    return { handler, shutdown } satisfies App
  })

/**
 * `HttpServer.serveEffect`, without the platform's span per request when the tracer is Effect's own (it
 * exports nowhere): that span parses the URL and records every header of every request, and each log
 * line becomes an event of it. An app that installs a tracer keeps the spans.
 */
const serveEffect = <R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, never, R>) =>
  Effect.flatMap(Effect.tracer, (tracer) =>
    tracer === Effect.runSync(Effect.tracer)
      ? HttpMiddleware.withTracerDisabledWhenEffect(HttpServer.serveEffect(handler), () => true)
      : HttpServer.serveEffect(handler))

/**
 * Serves the protocol on the `HttpServer` in context (any platform).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<never, never, HttpServer.HttpServer | ServerStore> =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const app = yield* makeApp(options)
    yield* serveEffect(app.handler)
    // Added last, so run first: waiting pulls answer before the server stops serving.
    yield* Effect.addFinalizer(() => app.shutdown)
  }))

/**
 * Options of `layerNode`: the protocol's, where to listen, and how long a request may take to arrive.
 *
 * @since 0.1.0
 * @category models
 */
export interface NodeOptions extends Options {
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly requestTimeoutMs?: number | undefined
  readonly headersTimeoutMs?: number | undefined
  /** A connection idle this long (say, a client that stopped reading an answer) is closed (default 120 000). */
  readonly socketTimeoutMs?: number | undefined
  /**
   * On shutdown (the layer's scope closing, e.g. SIGTERM under `NodeRuntime.runMain`) the listener closes at
   * once and requests in flight get this long to finish before their connections are cut (default 30 000).
   */
  readonly shutdownTimeoutMs?: number | undefined
}


/**
 * Serves the protocol on a Node HTTP server listening on `host:port` (port 0 picks a free port; read
 * it from the `HttpServer` this layer outputs, or use `databaseUrl`). A request must arrive whole within
 * `requestTimeoutMs` (default 60 000; headers within `headersTimeoutMs`, default 20 000), else 408; requests
 * Node's parser refuses (oversized headers, bad framing) get a JSON error too.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNode = (options: NodeOptions = {}): Layer.Layer<HttpServer.HttpServer, HttpServerError.ServeError, ServerStore> =>
  Layer.unwrapEffect(Effect.sync(() => {
    const shutdownTimeoutMs = options.shutdownTimeoutMs ?? 30_000
    let node: nodeHttpGuard.GuardedServer | undefined
    // The drain is the last finalizer added, so it runs first: before the routes are removed and before
    // the store (built earlier) closes under requests still using it.
    const serving = Layer.scopedDiscard(Effect.gen(function*() {
      // The connection of a waiting pull is idle by design: the socket timeout is lifted while it waits.
      // (no scope of its own: providing one replaces the request's, which costs more than the wait's bookkeeping)
      const app = yield* makeApp(options, (request, wait) => {
        const socket = NodeHttpServerRequest.toIncomingMessage(request).socket
        return Effect.acquireUseRelease(
          Effect.sync(() => socket.setTimeout(0)),
          () => wait,
          () => Effect.sync(() => socket.setTimeout(node?.timeout ?? nodeHttpGuard.DEFAULT_SOCKET_TIMEOUT_MS))
        )
      })
      let handling = 0
      const counted = Effect.acquireUseRelease(
        Effect.sync(() => handling++),
        () => app.handler,
        () => Effect.sync(() => handling--)
      )
      yield* serveEffect(counted)
      // Waiting pulls are answered first (what is there): a drain would otherwise wait out their waits.
      yield* Effect.addFinalizer(() =>
        Effect.zipRight(
          app.shutdown,
          node === undefined ? Effect.void : Effect.promise(() => node!.drain(shutdownTimeoutMs, () => handling))
        )
      )
    }))
    return serving.pipe(
      Layer.provideMerge(
        NodeHttpServer.layerServer(() => (node = nodeHttpGuard.createServer(options)), {
          host: options.host ?? "127.0.0.1",
          port: options.port ?? 8080
        })
      )
    )
  }))

/**
 * `layerNode` with its options read from `Config`, for example
 * `SyncServer.layerConfig({ port: Config.integer("PORT"), authToken: Config.redacted("SYNC_TOKEN") })`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<NodeOptions>
): Layer.Layer<HttpServer.HttpServer, HttpServerError.ServeError | ConfigError.ConfigError, ServerStore> =>
  Layer.unwrapEffect(Effect.map(Config.unwrap(config), layerNode))

/**
 * The base URL the server listens on, such as `http://127.0.0.1:8080`.
 *
 * @since 0.1.0
 * @category accessors
 */
export const baseUrl: Effect.Effect<string, never, HttpServer.HttpServer> = HttpServer.addressWith((address) =>
  Effect.succeed(
    address._tag === "UnixAddress"
      ? `http+unix://${address.path}`
      : `http://${address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname}:${address.port}`
  )
)

/**
 * The sync URL of one database on this server: `http://HOST:PORT/db/NAME`.
 *
 * @since 0.1.0
 * @category accessors
 */
export const databaseUrl = (name: string): Effect.Effect<string, never, HttpServer.HttpServer> =>
  Effect.map(baseUrl, (base) => `${base}/db/${encodeURIComponent(name)}`)
