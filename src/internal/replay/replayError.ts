/**
 * The error of replay, defined here so that the replay internals and the public module
 * (`ChangeReplay.ReplayError`) share one class without importing each other.
 *
 * @internal
 */
import * as Schema from "effect/Schema"

/** @internal */
export class ReplayError extends Schema.TaggedError<ReplayError>()("ReplayError", {
  reason: Schema.Literal("InvalidChange", "MissingTable", "NoRowIdentity", "Constraint", "Statement", "Unresolved"),
  message: Schema.String,
  changeId: Schema.optional(Schema.Number),
  txId: Schema.optional(Schema.Number),
  table: Schema.optional(Schema.String),
  /** The kind of row conflict a policy did not settle (reason `Unresolved`). */
  kind: Schema.optional(Schema.Literal("RowChanged", "RowMissing", "KeyExists")),
  statement: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {}
