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
  /**
   * The database's identity: a random id created with the database and kept for its life. A server
   * restored from an older backup of the same database answers the same id; a wiped or recreated one
   * answers another. Absent from servers that predate it (the libSQL client ignores it).
   */
  database_id: Schema.optional(Schema.String)
})

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
 * The most frames one pull answer carries and one push request may carry.
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
