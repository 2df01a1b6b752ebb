/**
 * How the engine reports failures of SQL it runs on the copies.
 *
 * @internal
 */
import type { SqlError } from "@effect/sql/SqlError"
import type * as ChangeReplay from "../../ChangeReplay.js"
import * as SyncError from "../../SyncError.js"

/** @internal */
export const sqlStatementError = (reason: "Statement" | "Replay" | "Capture", sql?: string) => (cause: unknown) =>
  new SyncError.SqlStatementError({
    reason,
    // The message itself, never `String(error)`: that prefixes the error's name (`CaptureError: ...`).
    message: cause instanceof Error && "cause" in cause && cause.cause instanceof Error
      ? cause.cause.message
      : cause instanceof Error
      ? cause.message
      : String(cause),
    ...(sql === undefined ? {} : { sql }),
    cause
  })

/**
 * Replay failures a policy did not settle become ConflictErrors naming the statement and the local
 * transaction; others stay SqlStatementErrors.
 *
 * @internal
 */
export const replayError = (error: ChangeReplay.ReplayError | SqlError) =>
  error._tag === "ReplayError" && (error.reason === "Constraint" || error.reason === "Unresolved")
    ? new SyncError.ConflictError({
      reason: error.reason,
      message: error.message,
      rounds: 0,
      ...(error.statement !== undefined ? { statement: error.statement } : {}),
      ...(error.txId !== undefined ? { txId: error.txId } : {}),
      ...(error.changeId !== undefined ? { changeId: error.changeId } : {}),
      ...(error.table !== undefined ? { table: error.table } : {}),
      ...(error.kind !== undefined ? { kind: error.kind } : {}),
      cause: error
    })
    : sqlStatementError("Replay")(error)
