/**
 * Commits made through any server process sharing a PostgreSQL store wake the waiting pulls of every
 * process: each commit (and roll) sends `NOTIFY` on the schema's channel inside its push transaction, so
 * PostgreSQL delivers it only once the transaction committed; each process `LISTEN`s on a connection of
 * its own and reports what it hears to its `CommitNotifier`.
 *
 * A listening connection can die without telling (the server restarted, the backend was terminated, a
 * half-open TCP connection), and a notification sent while nobody listens is lost. So the process
 * notifies itself a ping every second: while pings come back the listener is known to work; once they
 * stop for `STALE_MS`, the databases with waiting pulls are polled for their head every `POLL_MS` until
 * they come back, and after `RESTART_MS` the listener is started again on a new connection. When a
 * listener (re)starts hearing, every waiter looks at its head again, which covers the commits whose
 * notification nobody heard.
 *
 * @internal
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as crypto from "node:crypto"
import type { DatabaseInfo } from "../../ServerStore.js"
import type { CommitNotifier } from "./commitNotify.js"
import type { StoreError } from "./storeError.js"

/** How often the listener pings itself. */
export const PING_MS = 1_000

/** No ping heard for this long: the heads of waited-on databases are polled. */
export const STALE_MS = 2_500

/** How often they are polled then. */
export const POLL_MS = 500

/** No ping heard for this long: the listener is started again on a new connection. */
export const RESTART_MS = 5_000

/**
 * The channel of a schema's commits: a PostgreSQL identifier of at most 63 bytes, the same for every
 * process on the schema and different for different schemas.
 */
export const channelOf = (schema: string): string => {
  const plain = `${schema}_commits`
  return plain.length <= 63 ? plain : `${schema.slice(0, 38)}_${crypto.createHash("sha256").update(schema).digest("hex").slice(0, 16)}_commits`
}

/** The notification of a commit: the database, and its head after the commit. */
export const formatPayload = (database: string, generation: number, frameNo: number): string =>
  `${database}:${generation}:${frameNo}`

/** A commit's notification, or undefined for anything else on the channel (pings). */
export const parsePayload = (payload: string): { readonly database: string; readonly head: DatabaseInfo } | undefined => {
  const match = /^([A-Za-z0-9_-]{1,64}):([0-9]{1,10}):([0-9]{1,10})$/.exec(payload)
  if (match === null) return undefined
  return { database: match[1], head: { generation: Number(match[2]), maxFrameNo: Number(match[3]) } }
}

/**
 * Sends a commit's notification; inside the push transaction, so it is delivered when (and only if) the
 * transaction commits.
 */
export const notifyCommit = (
  sql: PgClient.PgClient,
  channel: string,
  database: string,
  generation: number,
  frameNo: number
): Effect.Effect<void, SqlError> =>
  Effect.asVoid(sql`SELECT pg_notify(${channel}, ${formatPayload(database, generation, frameNo)})`)

/** Listens for the schema's commits for the scope's life (see the module comment). */
export const watch = (sql: PgClient.PgClient, schema: string) =>
(
  notifier: CommitNotifier,
  head: (database: string) => Effect.Effect<DatabaseInfo, StoreError>
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const channel = channelOf(schema)
    const ping = `ping:${crypto.randomUUID()}`
    // When a ping last came back (0: not since the listener started), and whether it is heard now.
    let lastPong = 0
    let hearing = false

    const onMessage = (payload: string) =>
      Effect.sync(() => {
        if (payload === ping) {
          lastPong = Date.now()
          if (!hearing) {
            hearing = true
            // Commits between the last notification heard and now were not heard: look again.
            notifier.notifyAll()
          }
          return
        }
        const commit = parsePayload(payload)
        if (commit !== undefined) notifier.notify(commit.database, commit.head)
      })

    // One listening connection until its pings stop coming back (or it fails); then a new one.
    const session = Effect.gen(function*() {
      const started = Date.now()
      hearing = false
      const listener = yield* Effect.fork(Stream.runForEach(sql.listen(channel), onMessage))
      for (;;) {
        yield* Effect.ignore(sql.notify(channel, ping))
        yield* Effect.sleep(PING_MS)
        if ((yield* Fiber.poll(listener))._tag === "Some") break
        if (Date.now() - Math.max(lastPong, started) > RESTART_MS) break
      }
      if (hearing) {
        yield* Effect.logWarning(`ServerStore: the PostgreSQL listener on ${channel} stopped hearing; starting it again`)
      }
      hearing = false
      // Stopping it drops its connection (a dead one fails its UNLISTEN, which is fine); a connection
      // that hangs is waited for rather than replaced, so no stuck connection is ever left behind.
      yield* Effect.ignore(Effect.exit(Fiber.interrupt(listener)))
    })
    yield* session.pipe(
      Effect.zipRight(Effect.sleep(POLL_MS)),
      Effect.forever,
      Effect.interruptible,
      Effect.forkScoped
    )

    // While the listener is not known to hear, the databases somebody waits on are polled.
    const poll = Effect.suspend(() =>
      Date.now() - lastPong <= STALE_MS || notifier.size() === 0
        ? Effect.void
        : Effect.forEach(
          notifier.databases(),
          (database) => Effect.ignore(Effect.tap(head(database), (info) => Effect.sync(() => notifier.notify(database, info)))),
          { discard: true }
        )
    )
    yield* poll.pipe(
      Effect.zipRight(Effect.sleep(POLL_MS)),
      Effect.forever,
      Effect.interruptible,
      Effect.forkScoped
    )
  })
