import { Effect, Schema } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"

// SQLite has no boolean: 0 and 1 in the table, a boolean in the app.
const Flag = Schema.transform(Schema.Literal(0, 1), Schema.Boolean, {
  strict: true,
  decode: (n) => n === 1,
  encode: (b) => (b ? 1 : 0)
})

export class Note extends Schema.Class<Note>("Note")({
  id: Schema.String,
  body: Schema.String,
  done: Flag
}) {}

const decodeNotes = Schema.decodeUnknown(Schema.Array(Note))

// Idempotent: every replica runs it at start; the CREATE travels to the others with the next sync.
export const migrate = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  yield* db.execute("CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, body TEXT NOT NULL, done INTEGER NOT NULL)")
})

export const addNote = Effect.fn("Notes.add")(function*(id: string, body: string) {
  const db = yield* SyncDatabase.SyncDatabase
  yield* db.execute("INSERT INTO notes (id, body, done) VALUES (?, ?, 0)", [id, body])
})

export const completeNote = Effect.fn("Notes.complete")(function*(id: string) {
  const db = yield* SyncDatabase.SyncDatabase
  const { changes } = yield* db.execute("UPDATE notes SET done = 1 WHERE id = ?", [id])
  return changes === 1
})

export const listNotes = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  const rows = yield* db.query("SELECT id, body, done FROM notes ORDER BY id")
  return yield* decodeNotes(rows).pipe(Effect.orDie)
})
