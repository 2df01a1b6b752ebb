/**
 * Child process of test/Ownership.test.ts: opens a SyncDatabase at argv[2] on argv[3], prints `open`
 * once it holds it, and waits until killed.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Effect from "effect/Effect"
import * as SyncDatabase from "../../src/SyncDatabase.js"

const [path, url] = process.argv.slice(2)

Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  yield* db.pull
  yield* db.execute("INSERT INTO t (k) VALUES ('child')")
  process.stdout.write("open\n")
  return yield* Effect.never
}).pipe(
  Effect.provide(SyncDatabase.layer({ path, url })),
  Effect.provide(NodeHttpClient.layerUndici),
  Effect.runPromise
).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
