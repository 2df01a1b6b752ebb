/**
 * The HTTP contract of the WAL-frame sync protocol as Schemas: JSON bodies and path parameters.
 * See docs/protocol.md for every route, status and body.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * `GET /info` → 200.
 *
 * @since 0.1.0
 * @category schemas
 */
export const InfoResponse = Schema.Struct({
  current_generation: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)),
  /** This server's extension: the current generation's last committed frame. */
  max_frame_no: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(0))),
  /** This server's extension: the most frames one pull answer carries (the libSQL client asks for 128). */
  max_pull_frames: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))),
  /** This server's extension: the most frames one push request may carry (the libSQL client sends 128). */
  max_push_frames: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))),
  /** This server's extensions by name, such as `"snapshot"` (`GET /snapshot`) and `"wait"` (waiting pulls). */
  extensions: Schema.optional(Schema.Array(Schema.String)),
  /**
   * With the `"wait"` extension: the longest a pull at the head waits for the next commit, in seconds
   * (a longer `Prefer: wait=N` is cut to it).
   */
  max_wait_seconds: Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(0))),
  /**
   * The database's identity: a random id created with the database and kept for its life. A server
   * restored from an older backup of the same database answers the same id; a wiped or recreated one
   * answers another. Absent from servers that predate it (the libSQL client ignores it).
   */
  database_id: Schema.optional(Schema.String)
})

/**
 * The name in `/info`'s `extensions` of `GET /snapshot`: the current generation materialised at its head
 * frame, as one database file, with headers `x-sync-generation` and `x-sync-frame`.
 *
 * @since 0.1.0
 * @category constants
 */
export const EXTENSION_SNAPSHOT = "snapshot"

/**
 * The name in `/info`'s `extensions` of waiting pulls: a `GET /sync/{G}/{start}/{end}` that carries
 * `Prefer: wait=N` and finds nothing at or after `start` at the head of the current generation waits up to
 * N seconds (at most `max_wait_seconds`) for the next commit before it answers. Its answer carries
 * `Preference-Applied: wait=M`, M the seconds granted.
 *
 * @since 0.1.0
 * @category constants
 */
export const EXTENSION_WAIT = "wait"

/**
 * The name in `/info`'s `extensions` of waiting pulls that start at the client's last frame: a waiting
 * pull whose `Prefer` also names `after=F` (F the last frame the client holds of generation G) waits while
 * the head of G is frame F, then answers from `start` (at most F) as any pull does. Asked from F, the answer
 * carries the frame the client holds (to compare with its own) and the frames after it, in one request.
 *
 * @since 0.1.0
 * @category constants
 */
export const EXTENSION_WAIT_AFTER = "wait-after"

/**
 * The name in `/info`'s `extensions` of pushes that name their database: a `POST /sync/...` that carries
 * `x-database-id` (`DATABASE_ID_HEADER`) is answered `conflict` with the database's head, and nothing is
 * stored, when that is not the database's identity, or when it has no baton and starts after the head
 * (it must send the frame it builds on again). A client that names the identity it synced with can push
 * without asking `/info` first: its push lands only on that database, on the frame it knows.
 *
 * @since 0.1.0
 * @category constants
 */
export const EXTENSION_PUSH_IDENTITY = "push_identity"

/**
 * The request header a waiting pull carries (RFC 7240): `Prefer: wait=N`, N whole seconds.
 *
 * @since 0.1.0
 * @category constants
 */
export const HEADER_PREFER = "prefer"

/**
 * The answer header of a pull that asked to wait (RFC 7240): `Preference-Applied: wait=M`, M the seconds
 * the server granted (0 when it answered without waiting).
 *
 * @since 0.1.0
 * @category constants
 */
export const HEADER_PREFERENCE_APPLIED = "preference-applied"

/**
 * The server's default longest wait of a pull, in seconds (`max_wait_seconds`).
 *
 * @since 0.1.0
 * @category constants
 */
export const DEFAULT_MAX_WAIT_SECONDS = 30

/**
 * The longest wait a server may grant (`max_wait_seconds`); a `Prefer: wait=N` naming more is read as
 * this. It stays under the five minutes after which common HTTP clients (Node's fetch among them) give
 * up on an answer that has not started.
 *
 * @since 0.1.0
 * @category constants
 */
export const MAX_WAIT_SECONDS_LIMIT = 240

/**
 * The `wait` preference of a `Prefer` header, in whole seconds, or undefined when it names none (or an
 * unreadable one). Preferences are comma-separated, names case-insensitive, values optionally quoted,
 * parameters after `;` ignored; the first `wait` counts (RFC 7240, section 2).
 *
 * @since 0.1.0
 * @category parsing
 */
export const parsePreferWait = (header: string | undefined): number | undefined => {
  const value = preferenceNumber(header, "wait")
  return value === undefined ? undefined : Math.min(value, MAX_WAIT_SECONDS_LIMIT)
}

/** The first preference `name` of a `Prefer` header as a whole number (see `parsePreferWait`). */
const preferenceNumber = (header: string | undefined, name: string): number | undefined => {
  if (header === undefined) return undefined
  for (const preference of header.split(",")) {
    const token = preference.split(";")[0]
    const eq = token.indexOf("=")
    if ((eq === -1 ? token : token.slice(0, eq)).trim().toLowerCase() !== name) continue
    if (eq === -1) return undefined
    const raw = token.slice(eq + 1).trim()
    const value = raw.length >= 2 && raw.startsWith("\"") && raw.endsWith("\"") ? raw.slice(1, -1) : raw
    return /^[0-9]{1,15}$/.test(value) ? Number(value) : undefined
  }
  return undefined
}

/**
 * The `after` preference of a `Prefer` header (`EXTENSION_WAIT_AFTER`): the frame whose being the head
 * makes a waiting pull wait, or undefined when it names none (or an unreadable one). Read like `wait`.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parsePreferAfter = (header: string | undefined): number | undefined => preferenceNumber(header, "after")

/**
 * The `Prefer` value of a wait of `seconds` while the head is frame `after` (`EXTENSION_WAIT_AFTER`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const formatWaitAfter = (seconds: number, after: number): string => `wait=${seconds}, after=${after}`

/**
 * The `Prefer` (or `Preference-Applied`) value of a wait of `seconds`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const formatWait = (seconds: number): string => `wait=${seconds}`

/**
 * `GET /snapshot` answer header: the generation the file belongs to.
 *
 * @since 0.1.0
 * @category constants
 */
export const HEADER_GENERATION = "x-sync-generation"

/**
 * `GET /snapshot` answer header: the frame the file is materialised at; a client continues by pulling
 * `/sync/{generation}/{frame + 1}/...`.
 *
 * @since 0.1.0
 * @category constants
 */
export const HEADER_FRAME = "x-sync-frame"

/**
 * The response header that carries the database's identity (`database_id` of `GET /info`) on every
 * answer that comes from the database: info, export, pulls (frames and `checkpoint_needed`) and pushes.
 * A push request may carry it too: the identity the pusher's frames build on (`EXTENSION_PUSH_IDENTITY`).
 *
 * @since 0.1.0
 * @category constants
 */
export const DATABASE_ID_HEADER = "x-database-id"

/**
 * `POST /sync/{G}/{start}/{end}[/{baton}]` → 200.
 *
 * @since 0.1.0
 * @category schemas
 */
export const PushResponse = Schema.Struct({
  status: Schema.Literal("ok", "conflict"),
  generation: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)),
  max_frame_no: Schema.Int.pipe(Schema.greaterThanOrEqualTo(0)),
  baton: Schema.optional(Schema.String)
})

/**
 * `GET /sync/{G}/{start}/{end}` → 400 when generation G has nothing at or after `start`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const CheckpointNeeded = Schema.Struct({
  status: Schema.Literal("checkpoint_needed"),
  generation: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)),
  max_frame_no: Schema.Int.pipe(Schema.greaterThanOrEqualTo(0))
})

/**
 * Why a store refused a request (the `reason` of `ServerStore.StoreError`). Each has one HTTP status
 * and error code, in `errorStatus`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const StoreErrorReason = Schema.Literal(
  "BadRequest",
  "BadFrames",
  "Malformed",
  "UnknownBaton",
  "TooLarge",
  "GenerationNotFound",
  "GenerationGone",
  "DatabaseLimit",
  "ReadOnly",
  "PendingLimit",
  "Busy",
  "Storage"
)

/**
 * @since 0.1.0
 * @category models
 */
export type StoreErrorReason = typeof StoreErrorReason.Type

/**
 * Every code the server puts in the `error` field of a refusal.
 *
 * @since 0.1.0
 * @category schemas
 */
export const ErrorCode = Schema.Literal(
  // the request itself
  "bad_request",
  "bad_path",
  "bad_database_name",
  "bad_number",
  "bad_range",
  "bad_baton",
  "bad_frames",
  "not_found",
  "method_not_allowed",
  "unauthorized",
  "too_large",
  "header_too_large",
  "request_timeout",
  // the store's refusals (see `errorStatus`)
  "malformed_database",
  "unknown_baton",
  "generation_not_found",
  "generation_gone",
  "database_limit",
  "read_only",
  "pending_limit",
  "busy",
  "storage",
  "internal"
)

/**
 * @since 0.1.0
 * @category models
 */
export type ErrorCode = typeof ErrorCode.Type

/**
 * @since 0.1.0
 * @category models
 */
export interface ErrorStatus {
  readonly status: number
  readonly code: ErrorCode
  /** Seconds a client should wait before it tries again, sent as `Retry-After`. */
  readonly retryAfter?: number | undefined
}

/**
 * The HTTP status and error code of each store refusal: the one place that decides them. 5xx are the
 * server's conditions, which clients (the libSQL client included) retry; 4xx are final for the request.
 * `Storage` is 503 instead of 500 on the pull route, where the libSQL client takes a 500 for
 * "checkpoint needed" (see `storageStatusOnPull`).
 *
 * @since 0.1.0
 * @category constants
 */
export const errorStatus: { readonly [R in StoreErrorReason]: ErrorStatus } = {
  BadRequest: { status: 400, code: "bad_request" },
  BadFrames: { status: 400, code: "bad_frames" },
  Malformed: { status: 400, code: "malformed_database" },
  UnknownBaton: { status: 400, code: "unknown_baton" },
  TooLarge: { status: 413, code: "too_large" },
  GenerationNotFound: { status: 404, code: "generation_not_found" },
  GenerationGone: { status: 410, code: "generation_gone" },
  // The database does not exist and will not be created: final, like a missing generation.
  DatabaseLimit: { status: 404, code: "database_limit" },
  // The operator has to act (a read-only data directory); 503 tells clients the database is there.
  ReadOnly: { status: 503, code: "read_only" },
  // Other transactions hold the server's memory for pending frames; they end or idle out.
  PendingLimit: { status: 503, code: "pending_limit", retryAfter: 1 },
  Busy: { status: 503, code: "busy", retryAfter: 1 },
  Storage: { status: 500, code: "storage" }
}

/**
 * The status of a `Storage` refusal on `GET /sync/...`.
 *
 * @since 0.1.0
 * @category constants
 */
export const storageStatusOnPull = 503

/**
 * Every other 4xx/5xx body: a stable machine-readable code in `error`, and a sentence in `message`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const ErrorBody = Schema.Struct({
  /** One of `ErrorCode`; kept a string so a newer server's codes still decode. */
  error: Schema.String,
  message: Schema.optional(Schema.String)
})

/**
 * The database-name rule: 1 to 64 letters, digits, `-` or `_`. A name is also a directory name on the
 * server, so nothing else is allowed.
 *
 * @since 0.1.0
 * @category constants
 */
export const DATABASE_NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/

/**
 * @since 0.1.0
 * @category predicates
 */
export const isDatabaseName = (name: unknown): name is string =>
  typeof name === "string" && DATABASE_NAME_PATTERN.test(name)

/**
 * A database name in `/db/{NAME}`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const DatabaseName = Schema.String.pipe(Schema.pattern(DATABASE_NAME_PATTERN), Schema.brand("DatabaseName"))

/**
 * @since 0.1.0
 * @category models
 */
export type DatabaseName = typeof DatabaseName.Type

/**
 * The most frames one push request may carry, and the default most frames of one pull answer.
 *
 * @since 0.1.0
 * @category constants
 */
export const MAX_FRAMES_PER_REQUEST = 1024

/**
 * The batch size clients use (the libSQL client's).
 *
 * @since 0.1.0
 * @category constants
 */
export const CLIENT_BATCH_FRAMES = 128
