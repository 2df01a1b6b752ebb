/**
 * The error of change capture, defined here so that the capture internals and the public module
 * (`ChangeCapture.CaptureError`) share one class without importing each other.
 *
 * @internal
 */
import * as Schema from "effect/Schema"

/** @internal */
export class CaptureError extends Schema.TaggedError<CaptureError>()("CaptureError", {
  reason: Schema.Literal("UnrecordedSchemaChange", "UnsupportedDdl", "InvalidStatement", "LogMigration"),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}
