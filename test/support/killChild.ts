/**
 * Child process of test/ClientKill.test.ts: opens a SyncDatabase at argv[2] on the server database argv[3]
 * and, until killed, writes, pushes, pulls and syncs at random. Each write is reported by appending a line
 * to argv[5] AFTER its commit returned: `w <key>` for a row of `w`, `c` for an increment of this client's
 * counter in `c`. argv[4] names the client. With argv[6] = "final" it syncs until that succeeds, prints
 * `{"integrity": ...}` and exits 0.
 *
 * Client B keeps a reactive query running (`db.reactive`), so its pulls take the path that serves it, and is
 * live (`live: true`): it follows the remote on its synced copy between its own steps.
 *
 * Prints `open` before opening (after its imports), `ready` once open and `> <what>` before each step, for
 * the parent's timing and figures.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs"
import * as SyncDatabase from "../../src/SyncDatabase.js"

const [path, url, client, reportFile, mode] = process.argv.slice(2)

const report = (line: string) => Fs.appendFileSync(reportFile, `${line}\n`)
const run = Math.random().toString(36).slice(2, 10)

const program = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  // A brand-new client starts from the remote's base; the tables arrive with its frames.
  while ((yield* db.query("SELECT name FROM sqlite_master WHERE name = 'c'")).length === 0) {
    yield* Effect.ignore(db.pull)
  }
  // Client B watches a reactive query throughout: its pulls show the pulled rows from Synced and make the
  // copy with writes held, so kills land in that path too.
  if (client === "B") {
    yield* db.reactive("SELECT count(*) AS n FROM w").pipe(Stream.runDrain, Effect.ignore, Effect.forkScoped)
  }
  process.stdout.write("ready\n")
  if (mode === "final") {
    for (let attempt = 0;; attempt++) {
      const result = yield* Effect.either(db.sync)
      if (result._tag === "Right") break
      if (attempt > 50) return yield* Effect.die(result.left)
      yield* Effect.sleep("100 millis")
    }
    const integrity = yield* db.query("PRAGMA integrity_check")
    const pending = (yield* db.stats).pendingChanges
    process.stdout.write(`${JSON.stringify({ integrity, pending })}\n`)
    return
  }
  for (let i = 0;; i++) {
    const r = Math.random()
    // What it is doing, for the parent's figures of where kills landed.
    process.stdout.write(r < 0.6 ? "> write\n" : r < 0.73 ? "> push\n" : r < 0.86 ? "> pull\n" : "> sync\n")
    if (r < 0.45) {
      const key = `${client}:${run}:${i}`
      yield* db.execute("INSERT INTO w (id, client, key) VALUES (?, ?, ?)", [
        Math.floor(Math.random() * 2 ** 52),
        client,
        key
      ])
      report(`w ${key}`)
    } else if (r < 0.6) {
      yield* db.execute("UPDATE c SET n = n + 1 WHERE client = ?", [client])
      report("c")
    } else {
      const operation = r < 0.73 ? db.push : r < 0.86 ? db.pull : db.sync
      // Conflicts and a server still answering the other client are fine: the next round retries.
      yield* Effect.ignore(operation)
    }
  }
})

process.stdout.write("open\n")
program.pipe(
  Effect.scoped,
  Effect.provide(
    SyncDatabase.layer({
      path,
      url,
      clientName: client,
      // Client B is live as well: it follows A's commits on its synced copy and copies them to Draft when it
      // writes or closes, so kills land between those too.
      live: client === "B",
      conflictBackoff: 5,
      requestTimeout: "5 seconds",
      retrySchedule: Schedule.intersect(Schedule.spaced("50 millis"), Schedule.recurs(3))
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
