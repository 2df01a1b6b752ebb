/**
 * Runs the stores' malformed-database check on a worker thread: on a database file (the disk store's
 * head.db) or on a database image held in memory (the PostgreSQL store's head). The check
 * reads the whole database (about 1 ms of CPU per MB), and better-sqlite3 is synchronous: on the main
 * thread it would stall every other request of the server, for every database, while one push is checked.
 *
 * The worker is plain JavaScript given as source (`eval`), so it runs the same under tsx, vitest and
 * compiled code, and loads the better-sqlite3 that this module resolves.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"
import type * as Scope from "effect/Scope"
import { createRequire } from "node:module"
import { Worker } from "node:worker_threads"
import type { CheckPlan } from "./changedTables.js"
import { CHECK_CACHE_PRAGMA } from "./sqliteImage.js"

const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads")
const Database = require(workerData.betterSqlite3)
const corrupt = (e) => e && typeof e.code === "string" && (e.code.startsWith("SQLITE_CORRUPT") || e.code.startsWith("SQLITE_NOTADB"))
parentPort.on("message", ({ id, file, image, plan }) => {
  // The connection is closed before the answer goes out: the store may write the file once it has it.
  let reply
  let db
  try {
    if (image !== undefined) {
      // A WAL-mode header (bytes 18/19 = 2) cannot be deserialized; the content reads the same in rollback
      // mode. The image is this thread's own copy.
      const bytes = Buffer.from(image.buffer, image.byteOffset, image.byteLength)
      if (bytes.byteLength >= 20) { bytes[18] = 1; bytes[19] = 1 }
      db = new Database(bytes)
    } else {
      db = new Database(file, { readonly: true, fileMustExist: true })
    }
    let problem = null
    if (plan.length > 0) db.pragma(${JSON.stringify(CHECK_CACHE_PRAGMA)})
    for (const pragma of plan) {
      const messages = db.pragma(pragma).map((row) => String(Object.values(row)[0]))
      if (messages.length === 1 && messages[0] === "ok") continue
      problem = messages.slice(0, 5).join("; ")
      break
    }
    reply = { id, problem }
  } catch (e) {
    reply = corrupt(e) ? { id, problem: String(e.message) } : { id, error: String((e && e.message) || e) }
  } finally {
    try { if (db) db.close() } catch {}
  }
  parentPort.postMessage(reply)
})
`

type Reply = {
  readonly id: number
  readonly problem?: string | null
  readonly error?: string
}

export interface Checker {
  /**
   * SQLite's verdict on the database file: the pragmas of `plan` in order, undefined when none finds
   * anything wrong. Sent now and answered by the returned effect, so the caller may work meanwhile (store
   * the commit). The worker has closed the file when the verdict arrives. Checks run in the order sent.
   */
  readonly send: (file: string, plan: CheckPlan) => Effect.Effect<Effect.Effect<string | undefined, Error>>
  /** The same verdict on a database image held in memory (copied to the worker; `image` is not changed). */
  readonly checkImage: (image: Uint8Array, plan: CheckPlan) => Effect.Effect<string | undefined, Error>
  /**
   * Starts the worker now if it is not running, without waiting for it: a caller that expects to check
   * soon keeps the thread's start (loading SQLite, tens of milliseconds, more on a busy machine) out of
   * that check's wait.
   */
  readonly warm: () => void
}

/** One worker for the whole store, started on first use and stopped with the scope. */
export const make: Effect.Effect<Checker, never, Scope.Scope> = Effect.gen(function*() {
  const betterSqlite3 = createRequire(import.meta.url).resolve("better-sqlite3")
  let worker: Worker | undefined
  let nextId = 0
  const waiting = new Map<number, Deferred.Deferred<string | undefined, Error>>()

  const failAll = (error: Error) => {
    for (const deferred of waiting.values()) Deferred.unsafeDone(deferred, Effect.fail(error))
    waiting.clear()
  }

  const start = (): Worker => {
    if (worker !== undefined) return worker
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { betterSqlite3 } })
    w.unref()
    w.on("message", (reply: Reply) => {
      const deferred = waiting.get(reply.id)
      if (deferred === undefined) return
      waiting.delete(reply.id)
      if (waiting.size === 0) w.unref()
      Deferred.unsafeDone(
        deferred,
        reply.error !== undefined ? Effect.fail(new Error(reply.error)) : Effect.succeed(reply.problem ?? undefined)
      )
    })
    // A dead worker fails what it had and is replaced on the next check.
    const lost = (error: Error) => {
      if (worker === w) worker = undefined
      failAll(error)
    }
    w.on("error", lost)
    w.on("exit", (code) => lost(new Error(`check worker exited with code ${code}`)))
    worker = w
    return w
  }

  yield* Effect.addFinalizer(() =>
    Effect.promise(async () => {
      const w = worker
      worker = undefined
      if (w !== undefined) await w.terminate()
    })
  )

  // Posts the message at once; the effect answered waits for the verdict.
  const post = (
    message: { readonly file?: string; readonly image?: Uint8Array; readonly plan: CheckPlan }
  ): Effect.Effect<string | undefined, Error> => {
      const deferred = Deferred.unsafeMake<string | undefined, Error>(FiberId.none)
      const id = nextId++
      waiting.set(id, deferred)
      try {
        const w = start()
        // Held only while a check is out, so an idle worker never keeps the process alive.
        w.ref()
        w.postMessage({ id, ...message })
      } catch (error) {
        waiting.delete(id)
        return Effect.fail(error instanceof Error ? error : new Error(String(error)))
      }
      return Deferred.await(deferred)
    }

  return {
    // Posted now (the effect answered only waits), so the check runs while the caller goes on.
    send: (file, plan) => Effect.sync(() => post({ file, plan })),
    checkImage: (image, plan) => (plan.length === 0 ? Effect.succeed(undefined) : Effect.suspend(() => post({ image, plan }))),
    warm: () => {
      try {
        start()
      } catch {
        // started again by the first check, which reports the failure
      }
    }
  }
})
