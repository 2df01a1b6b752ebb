import { NodeHttpClient, NodeRuntime } from "@effect/platform-node"
import { Config, Console, Effect, Layer, Schedule, Stream } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"
import { addNote, migrate } from "./notes.js"

const SyncLive = SyncDatabase.layerConfig({
  path: Config.string("NOTES_DB").pipe(Config.withDefault("./notes.db")),
  url: Config.string("SYNC_URL").pipe(Config.withDefault("http://127.0.0.1:8080/db/notes"))
}).pipe(Layer.provide(NodeHttpClient.layerUndici))

const program = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase

  // What sync does, as it happens (a UI would show a spinner or a progress bar from these).
  yield* db.events.pipe(
    Stream.runForEach((event) => {
      switch (event._tag) {
        case "Finished":
          return Console.log(`${event.operation}: ${event.pushedChanges} pushed, ${event.framesReceived} frames received`)
        case "Failed":
          return Console.log(`${event.operation} failed: ${event.error._tag}`)
        case "ConflictRetry":
          return Console.log(`another replica pushed first, retrying (round ${event.round})`)
        default:
          return Effect.void
      }
    }),
    Effect.forkScoped
  )

  // Sync every 30 seconds and 1 second after local writes stop; back off while offline; never two at
  // once. The fiber ends with the scope.
  yield* SyncDatabase.autoSync(Schedule.spaced("30 seconds"), { debounce: "1 second" })

  yield* migrate
  yield* addNote(`note-${Date.now()}`, "synced in the background")

  // Wait until the background sync has pushed everything.
  yield* db.status.changes.pipe(
    Stream.filter((status) => status.state === "idle" && status.pendingChanges === 0),
    Stream.runHead
  )
  yield* Console.log("all local changes are on the server")
})

program.pipe(Effect.scoped, Effect.provide(SyncLive), NodeRuntime.runMain)
