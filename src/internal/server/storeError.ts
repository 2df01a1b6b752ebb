/**
 * The error of the server store, defined here so that the store internals and the public module
 * (`ServerStore.StoreError`) share one class without importing each other.
 *
 * @internal
 */
import * as Schema from "effect/Schema"
import { StoreErrorReason } from "../../SyncProtocol.js"

/** @internal */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  reason: StoreErrorReason,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}
