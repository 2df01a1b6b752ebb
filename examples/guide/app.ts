import { NodeHttpClient, NodeRuntime } from "@effect/platform-node"
import { Config, Console, Effect, Layer, Option } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"
import { addNote, listNotes, migrate } from "./notes.js"

// NOTES_DB=./notes.db SYNC_URL=http://127.0.0.1:8080/db/notes npx tsx examples/guide/app.ts
const SyncLive = SyncDatabase.layerConfig({
  path: Config.string("NOTES_DB").pipe(Config.withDefault("./notes.db")),
  url: Config.string("SYNC_URL").pipe(Config.withDefault("http://127.0.0.1:8080/db/notes")),
  authToken: Config.redacted("SYNC_TOKEN").pipe(Config.option, Config.map(Option.getOrUndefined))
}).pipe(Layer.provide(NodeHttpClient.layerUndici))

const program = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  yield* migrate
  yield* addNote(`note-${Date.now()}`, "written locally, synced below")
  // Local writes never wait for the network; sync when it suits the app. Failures are typed (the
  // remote already retried transient ones): an unreachable server leaves the note pending.
  yield* db.sync.pipe(
    Effect.catchTags({
      NetworkError: (e) => Console.log(`offline, will sync later: ${e.message}`),
      ConflictError: (e) => Console.log(`busy remote, will retry: ${e.message}`)
    })
  )
  const notes = yield* listNotes
  const stats = yield* db.stats
  yield* Console.log(`${notes.length} notes, ${stats.pendingChanges} not pushed yet`)
})

program.pipe(Effect.provide(SyncLive), NodeRuntime.runMain)
