import { NodeHttpClient, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"

const Database = SyncDatabase.layer({
  path: process.env.NOTES_DB ?? "./notes.db",
  url: process.env.SYNC_URL ?? "http://127.0.0.1:8080/db/notes"
}).pipe(Layer.provide(NodeHttpClient.layerUndici))

const program = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  yield* db.execute("CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, body TEXT)")
  yield* db.execute("INSERT INTO notes VALUES (?, ?)", [crypto.randomUUID(), "hello from my app"])
  yield* db.sync // send the local writes, bring the server's
  yield* Console.log(yield* db.query("SELECT id, body FROM notes"))
})

program.pipe(Effect.provide(Database), NodeRuntime.runMain)
