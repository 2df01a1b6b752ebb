/**
 * The error of the server store, defined here so that the store internals and the public module
 * (`ServerStore.StoreError`) share one class without importing each other.
 *
 * @internal
 */
import * as Schema from "effect/Schema"

/** @internal */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  reason: Schema.Literal(
    "BadRequest",
    "BadFrames",
    "Malformed",
    "UnknownBaton",
    "TooLarge",
    "GenerationNotFound",
    "GenerationGone",
    "Busy",
    "Storage"
  ),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}
