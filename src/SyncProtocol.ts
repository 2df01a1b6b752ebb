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
  /** This server's extensions by name, such as `"snapshot"` (`GET /snapshot`). */
  extensions: Schema.optional(Schema.Array(Schema.String))
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
 * Every other 4xx/5xx body: a stable machine-readable code in `error`, and a sentence in `message`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const ErrorBody = Schema.Struct({
  error: Schema.String,
  message: Schema.optional(Schema.String)
})

/**
 * A database name in `/db/{NAME}`.
 *
 * @since 0.1.0
 * @category schemas
 */
export const DatabaseName = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_-]{1,64}$/), Schema.brand("DatabaseName"))

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
