/**
 * Child process of the crash tests: opens a SyncDatabase over HTTP at argv[2] on argv[3], inserts the
 * values argv[5..] into `t`, then syncs, SIGKILLing itself at the engine step named argv[4] ("none": never;
 * a bootstrap step: in the open that bootstraps).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Effect from "effect/Effect"
import * as SyncDatabase from "../../src/SyncDatabase.js"

const [path, url, crashAt, ...values] = process.argv.slice(2)

// Armed once the inserts are done: the kill lands in the sync (a write may fold Draft's WAL too, at the
// same named step, and would otherwise be killed before the second insert).
let armed = crashAt.startsWith("bootstrap:")

const program = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  for (const value of values) yield* db.execute("INSERT INTO t (k, n) VALUES (?, 1)", [value])
  armed = true
  yield* db.sync
})

program.pipe(
  Effect.provide(
    SyncDatabase.layer({
      path,
      url,
      // Tiny WAL bounds: every sync folds both copies, so the fold steps are among those killed.
      maxWalFrames: 1,
      onStep: (step) =>
        armed && step === crashAt
          ? Effect.sync(() => {
            process.kill(process.pid, "SIGKILL")
          })
          : Effect.void
    })
  ),
  Effect.provide(NodeHttpClient.layerUndici),
  Effect.runPromise
).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
