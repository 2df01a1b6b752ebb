import { NodeHttpClient, NodeRuntime } from "@effect/platform-node"
import { Config, Console, Effect, Layer, Stream } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"
import { addNote, migrate } from "./notes.js"

// Live: a waiting pull stays open at the server, local writes are pushed 2 ms after they commit.
const SyncLive = SyncDatabase.layerConfig({
  path: Config.string("NOTES_DB").pipe(Config.withDefault("./notes.db")),
  url: Config.string("SYNC_URL").pipe(Config.withDefault("http://127.0.0.1:8080/db/notes"))
}, { live: true }).pipe(Layer.provide(NodeHttpClient.layerUndici))

const program = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  yield* migrate

  // Connected, syncing or offline, as it changes.
  yield* db.status.changes.pipe(
    Stream.map((status) => status.live),
    Stream.changes,
    Stream.runForEach((live) => Console.log(`sync: ${live}`)),
    Effect.forkScoped
  )

  yield* addNote(`note-${Date.now()}`, "written here, on every live replica a moment later")

  // The open notes now, and again whenever a write here or on another replica changes them.
  yield* db.reactive<{ id: string; body: string }>("SELECT id, body FROM notes WHERE done = 0 ORDER BY id").pipe(
    Stream.runForEach((notes) => Console.log(`${notes.length} open notes`, notes))
  )
})

program.pipe(Effect.scoped, Effect.provide(SyncLive), NodeRuntime.runMain)
