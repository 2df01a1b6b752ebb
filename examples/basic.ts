/**
 * `npm run example`: a sync server and two replicas in one process, with no setup.
 *
 * The server (SyncServer over an in-memory ServerStore) listens on an ephemeral loopback port; "alice"
 * and "bob" are SyncDatabases with their files in a temporary directory, syncing over real HTTP.
 */
import { FetchHttpClient } from "@effect/platform"
import { Console, Context, Effect, Layer, Logger, LogLevel } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"
import { ServerStore, SyncServer } from "effect-sqlite-sync/server"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

// One replica of the `notes` database: a SyncDatabase with its own files.
const replica = (url: string, path: string) =>
  Layer.build(SyncDatabase.layer({ path, url }).pipe(Layer.provide(FetchHttpClient.layer))).pipe(
    Effect.map(Context.get(SyncDatabase.SyncDatabase))
  )

const program = Effect.gen(function*() {
  const url = yield* SyncServer.databaseUrl("notes")
  yield* Console.log(`server: ${url}`)
  const dir = yield* Effect.acquireRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-sqlite-sync-example-"))),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )
  const alice = yield* replica(url, Path.join(dir, "alice.db"))
  const bob = yield* replica(url, Path.join(dir, "bob.db"))

  // Alice creates the table and a note while "offline": everything is local until she syncs.
  yield* alice.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, author TEXT, body TEXT)")
  yield* alice.execute("INSERT INTO notes VALUES (?, ?, ?)", ["n1", "alice", "buy milk"])
  yield* alice.sync

  // Bob syncs (he gets the table and Alice's note), then writes his own.
  yield* bob.sync
  yield* bob.execute("INSERT INTO notes VALUES (?, ?, ?)", ["n2", "bob", "call mom"])
  yield* bob.execute("UPDATE notes SET body = ? WHERE id = ?", ["buy oat milk", "n1"])
  yield* bob.sync
  yield* alice.sync

  const rows = (db: SyncDatabase.Service) => db.query("SELECT id, author, body FROM notes ORDER BY id")
  yield* Console.log("alice sees:", JSON.stringify(yield* rows(alice)))
  yield* Console.log("bob sees:  ", JSON.stringify(yield* rows(bob)))
  const stats = yield* alice.stats
  yield* Console.log(
    `alice: ${stats.pendingChanges} pending changes, generation ${stats.generation}, frame ${stats.syncedFrame}`
  )
})

program.pipe(
  Effect.scoped,
  Effect.provide(SyncServer.layerNode({ port: 0 })),
  Effect.provide(ServerStore.layerMemory()),
  // The server logs one line per request; the example prints its own lines only.
  Logger.withMinimumLogLevel(LogLevel.Warning),
  Effect.runPromise
).catch((error) => {
  console.error(error)
  process.exitCode = 1
})
