/**
 * Runs the stores' malformed-database check on a worker thread: on a database file (the disk store's
 * head.db and its WAL) or on a database image held in memory (the PostgreSQL store's head). The check
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

const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads")
const Database = require(workerData.betterSqlite3)
const corrupt = (e) => e && typeof e.code === "string" && (e.code.startsWith("SQLITE_CORRUPT") || e.code.startsWith("SQLITE_NOTADB"))
// Moves a checked WAL into its database file. The file is derived data (rebuilt after a crash), so the
// checkpoint needs no fsync. True when the WAL is gone into the file.
const checkpoint = (file) => {
  let db
  try {
    db = new Database(file, { fileMustExist: true })
    db.pragma("synchronous = OFF")
    const [result] = db.pragma("wal_checkpoint(TRUNCATE)")
    return result.busy === 0
  } catch {
    return false
  } finally {
    try { if (db) db.close() } catch {}
  }
}
parentPort.on("message", ({ id, file, image, plan, checkpointAfter }) => {
  // The connection is closed before the answer goes out: a checkpoint of the file (here, after the
  // answer, or by the store) with a reader still open would be busy.
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
  // After the verdict left: the caller stores the commit meanwhile, and hears of the checkpoint later.
  if (checkpointAfter && reply.problem === null) parentPort.postMessage({ id, checkpointed: checkpoint(file) })
})
`

type Reply = {
  readonly id: number
  readonly problem?: string | null
  readonly error?: string
  /** The second reply of a check asked to checkpoint: whether the WAL went into the file. */
  readonly checkpointed?: boolean
}

export interface Checker {
  /**
   * SQLite's verdict on the database file (and its WAL): the pragmas of `plan` in order, undefined
   * when none finds anything wrong.
   */
  readonly check: (file: string, plan: CheckPlan) => Effect.Effect<string | undefined, Error>
  /**
   * `check`, sent now and answered by the returned `verdict`; when it finds nothing, the worker then
   * runs a TRUNCATE checkpoint of the file's WAL into it, after the verdict is answered. The caller may
   * work meanwhile (store the commit). `settled` completes once the worker is done with the file: true
   * when the WAL went into it, or when the check found something (the file untouched, the WAL the
   * caller's to delete); false when the check or the checkpoint failed or the worker was lost. Checks
   * and checkpoints run in the order sent.
   */
  readonly checkThenCheckpoint: (
    file: string,
    plan: CheckPlan
  ) => Effect.Effect<{
    readonly verdict: Effect.Effect<string | undefined, Error>
    readonly settled: Effect.Effect<boolean>
  }>
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
  // Checks asked to checkpoint after a passing verdict, until the worker says how the checkpoint went.
  const checkpoints = new Map<number, Deferred.Deferred<boolean>>()
  const held = () => waiting.size + checkpoints.size

  const failAll = (error: Error) => {
    for (const deferred of waiting.values()) Deferred.unsafeDone(deferred, Effect.fail(error))
    waiting.clear()
    for (const deferred of checkpoints.values()) Deferred.unsafeDone(deferred, Effect.succeed(false))
    checkpoints.clear()
  }

  const start = (): Worker => {
    if (worker !== undefined) return worker
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { betterSqlite3 } })
    w.unref()
    w.on("message", (reply: Reply) => {
      if (reply.checkpointed !== undefined) {
        const done = checkpoints.get(reply.id)
        checkpoints.delete(reply.id)
        if (held() === 0) w.unref()
        if (done !== undefined) Deferred.unsafeDone(done, Effect.succeed(reply.checkpointed))
        return
      }
      const deferred = waiting.get(reply.id)
      if (deferred === undefined) return
      waiting.delete(reply.id)
      // A verdict that passed is followed by its checkpoint's reply. A finding leaves the file as it was
      // (settled); a failure leaves it unknown.
      const checkpoint = checkpoints.get(reply.id)
      if (checkpoint !== undefined && (reply.error !== undefined || reply.problem != null)) {
        checkpoints.delete(reply.id)
        Deferred.unsafeDone(checkpoint, Effect.succeed(reply.error === undefined))
      }
      if (held() === 0) w.unref()
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
    message: { readonly file?: string; readonly image?: Uint8Array; readonly plan: CheckPlan; readonly checkpointAfter?: boolean },
    checkpoint?: Deferred.Deferred<boolean>
  ): Effect.Effect<string | undefined, Error> => {
      const deferred = Deferred.unsafeMake<string | undefined, Error>(FiberId.none)
      const id = nextId++
      waiting.set(id, deferred)
      if (checkpoint !== undefined) checkpoints.set(id, checkpoint)
      try {
        const w = start()
        // Held only while a check is out, so an idle worker never keeps the process alive.
        w.ref()
        w.postMessage({ id, ...message })
      } catch (error) {
        waiting.delete(id)
        checkpoints.delete(id)
        if (checkpoint !== undefined) Deferred.unsafeDone(checkpoint, Effect.succeed(false))
        return Effect.fail(error instanceof Error ? error : new Error(String(error)))
      }
      return Deferred.await(deferred)
    }

  return {
    check: (file, plan) => Effect.suspend(() => post({ file, plan })),
    checkThenCheckpoint: (file, plan) =>
      Effect.sync(() => {
        const checkpointed = Deferred.unsafeMake<boolean>(FiberId.none)
        // Posted now (the effect below only waits), so the check runs while the caller goes on.
        return { verdict: post({ file, plan, checkpointAfter: true }, checkpointed), settled: Deferred.await(checkpointed) }
      }),
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
