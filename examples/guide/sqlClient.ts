import { FetchHttpClient } from "@effect/platform"
import { SqlClient, SqlSchema } from "@effect/sql"
import { Effect, Layer, Schema } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"

class Todo extends Schema.Class<Todo>("Todo")({ id: Schema.String, title: Schema.String }) {}

// Written against SqlClient only: it knows nothing of sync.
const program = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  // Random text ids: replicas that insert offline never pick the same key (SQLite-assigned integer ids
  // would collide, and the second push would fail with a KeyExists conflict).
  yield* sql`CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT NOT NULL)`
  const insert = SqlSchema.single({
    Request: Schema.Struct({ title: Schema.String }),
    Result: Todo,
    execute: ({ title }) => sql`INSERT INTO todos ${sql.insert({ id: crypto.randomUUID(), title })} RETURNING *`
  })
  // One local transaction: replayed on the server as one transaction, or not at all.
  yield* sql.withTransaction(Effect.all([insert({ title: "write" }), insert({ title: "sync" })]))
  yield* (yield* SyncDatabase.SyncDatabase).sync
  return yield* sql<Todo>`SELECT * FROM todos ORDER BY title`
})

// The only sync-specific line: this layer provides SqlClient and SyncDatabase.
const SqlLive = SyncDatabase.layerSqlClient({ path: "./todos.db", url: "http://127.0.0.1:8080/db/todos" }).pipe(
  Layer.provide(FetchHttpClient.layer)
)

export const main = program.pipe(Effect.provide(SqlLive))
