/**
 * Steps 1b and 2b: Draft's changes that the remote does not have are replayed onto Synced, in one SQLite
 * transaction, through the conflict policy.
 *
 * @internal
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as Capture from "../capture/capture.js"
import * as NodePath from "node:path"
import * as Replay from "../replay/replay.js"
import * as Executor from "../sqlite/executor.js"
import * as ConflictLog from "./conflictLog.js"
import { replayError, sqlStatementError } from "./errors.js"
import { on, type State, stepOn } from "./state.js"

/** @internal */
export type Mode = "push" | "pull"

/** The schema under which a push's replay reads Draft's change log on Synced's connection. */
const DRAFT_SCHEMA = "_sync_draft"

/**
 * Runs `use` on Synced with Draft's file attached as {@link DRAFT_SCHEMA} (given the schema, or
 * undefined when it cannot be attached), so that replay can copy runs of changes from the log in SQL (see
 * replay/bulk.ts). Attached outside the replay's transaction (SQLite refuses ATTACH and DETACH inside one)
 * and detached whatever the outcome: nothing of it outlives the push, and Draft is never written through it.
 */
const withDraftAttached = <A, E>(
  state: State,
  use: (schema: string | undefined) => Effect.Effect<A, E, SqlClient.SqlClient>
) =>
  on(
    state.synced,
    Effect.acquireUseRelease(
      Executor.withExecutor((exec) => {
        // (a plain path: the connection takes no URI filenames; only read, never written)
        const path = NodePath.resolve(state.paths.draft)
        exec.once(`ATTACH DATABASE '${path.replaceAll("'", "''")}' AS ${DRAFT_SCHEMA}`)
        return DRAFT_SCHEMA
      }).pipe(Effect.orElseSucceed(() => undefined)),
      use,
      (schema) =>
        schema === undefined
          ? Effect.void
          : Effect.ignore(Executor.withExecutor((exec) => exec.once(`DETACH DATABASE ${DRAFT_SCHEMA}`)))
    )
  )

/** How each read of Draft's change log runs (a pull preparing its copy outside the write gate takes it per read). */
export type ReadDraft = <A, E, R>(read: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * Pending changes from which a push attaches Draft's log to replay runs of them in bulk: below, attaching
 * and detaching it and looking for runs cost more than replaying them one by one.
 */
export const BULK_FROM = 16

/**
 * Step 1b and 2b: replay Draft's changes that the remote does not have onto Synced, in one SQLite
 * transaction. Push mode also writes the progress row; pull mode re-records the changes in Synced's
 * change log so that the copy to Draft keeps them pending. `pending`: how many changes after `progress`
 * the caller counted already (at least one), so that none is read to learn whether any is pending.
 */
export const replayDraftOntoSynced = Effect.fn("Engine.replayDraftOntoSynced")(
  function*(state: State, mode: Mode, progress: number, readDraft: ReadDraft = (read) => read, pending?: number) {
    if (pending === undefined) {
      const head = yield* readDraft(on(state.draft, Capture.pendingValues(progress, 1))).pipe(
        Effect.mapError(sqlStatementError("Capture"))
      )
      if (head.length === 0) return { replayed: 0, lastChangeId: progress }
    }
    const transform = state.options.transform
    const policy = { resolve: state.resolve, ...(transform ? { transform } : {}) }
    // Draft's log is read page by page as it replays, never held whole (in a pull, writes wait meanwhile;
    // a push replays what it finds, later changes wait for the next push).
    const source: Replay.Source = (afterId, limit) =>
      readDraft(stepOn(state.draft, (exec) => Capture.pendingValuesIn(exec, afterId, limit), Capture.pendingValues(afterId, limit)))
    const result = yield* (mode === "push"
      ? pending !== undefined && pending < BULK_FROM
        ? on(state.synced, Replay.applySource(source, { mode: "push", clientId: state.clientId, ...policy }))
        : withDraftAttached(
          state,
          (schema) => Replay.applySource(source, { mode: "push", clientId: state.clientId, ...policy }, schema)
        )
      : on(state.synced, Replay.applySource(source, { mode: "pull", ...policy }))).pipe(Effect.mapError(replayError))
    if (mode === "push") yield* Ref.set(state.pushConflicts, ConflictLog.entries(result))
    yield* state.step("replay:done")
    return { replayed: result.applied, lastChangeId: result.lastChangeId }
  }
)
