/**
 * Random interleavings of local writes (inserts, upserts, updates, deletes on a small shared key space),
 * pushes, pulls and syncs on three clients of one remote: after everyone syncs twice, every client holds
 * exactly the remote's rows, nothing is pending, and every file is a sound SQLite database.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as fc from "fast-check"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import type * as SyncError from "../src/SyncError.js"
import { openClient, remoteQuery } from "./support/engine.js"

type Op =
  | { readonly _tag: "upsert"; readonly client: number; readonly key: number; readonly value: number }
  | { readonly _tag: "update"; readonly client: number; readonly key: number; readonly value: number }
  | { readonly _tag: "delete"; readonly client: number; readonly key: number }
  | { readonly _tag: "push" | "pull" | "sync"; readonly client: number }

const CLIENTS = 3
const client = fc.integer({ min: 0, max: CLIENTS - 1 })
const key = fc.integer({ min: 0, max: 7 })
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ _tag: fc.constant("upsert" as const), client, key, value: fc.integer({ min: 0, max: 999 }) }) },
  { weight: 2, arbitrary: fc.record({ _tag: fc.constant("update" as const), client, key, value: fc.integer({ min: 0, max: 999 }) }) },
  { weight: 1, arbitrary: fc.record({ _tag: fc.constant("delete" as const), client, key }) },
  { weight: 3, arbitrary: fc.record({ _tag: fc.constantFrom("push" as const, "pull" as const, "sync" as const), client }) }
)

const run = (ops: ReadonlyArray<Op>, concurrent: boolean) =>
  Effect.gen(function*() {
    const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-converge-"))
    yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
    const store = yield* ServerStore.makeMemory()
    const remote = StoreRemote.make(store, "converge")
    // Upserts of shared keys: an insert meeting another client's row overwrites it (the default policy would
    // leave that to the application and fail the push).
    const options = { maxPushRounds: 60, conflicts: "lastPushWinsRow" } as const
    const first = yield* openClient(remote, NodePath.join(dir, "c0"), options)
    yield* first.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL, by INTEGER)")
    yield* first.push
    const clients = [first]
    for (let i = 1; i < CLIENTS; i++) {
      const db = yield* openClient(remote, NodePath.join(dir, `c${i}`), options)
      yield* db.pull
      clients.push(db)
    }
    const step = (o: Op): Effect.Effect<unknown, SyncError.SyncError> => {
      const db = clients[o.client]
      switch (o._tag) {
        case "upsert":
          return db.execute(
            "INSERT INTO t (k, v, by) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v, by = excluded.by",
            [o.key, o.value, o.client]
          )
        case "update":
          return db.execute("UPDATE t SET v = v + ?, by = ? WHERE k = ?", [o.value, o.client, o.key])
        case "delete":
          return db.execute("DELETE FROM t WHERE k = ?", [o.key])
        default:
          return db[o._tag]
      }
    }
    if (concurrent) {
      // Each client runs its own ops in order; the clients run at the same time.
      yield* Effect.forEach(clients, (_, i) =>
        Effect.forEach(ops.filter((o) => o.client === i), step, { discard: true }), { concurrency: "unbounded", discard: true })
    } else {
      yield* Effect.forEach(ops, step, { discard: true })
    }
    for (let round = 0; round < 2; round++) {
      for (const db of clients) yield* db.sync
    }
    const expected = yield* remoteQuery(remote, "SELECT k, v, by FROM t ORDER BY k")
    for (const db of clients) {
      expect(yield* db.query("SELECT k, v, by FROM t ORDER BY k")).toEqual(expected)
      expect((yield* db.stats).pendingChanges).toBe(0)
      expect(yield* db.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
    }
    const state = yield* remoteQuery(remote, "PRAGMA integrity_check")
    expect(state).toEqual([{ integrity_check: "ok" }])
  })

const property = (concurrent: boolean) =>
  fc.asyncProperty(fc.array(op, { minLength: 5, maxLength: 40 }), async (ops) => {
    const scope = Effect.runSync(Scope.make())
    try {
      await Effect.runPromise(Scope.extend(run(ops, concurrent), scope))
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })

describe("SyncDatabase convergence", () => {
  it("sequential random programs on three clients converge", { timeout: 120_000 }, async () => {
    await fc.assert(property(false), { numRuns: 8, seed: 20261129 })
  })

  it("concurrent random programs on three clients converge", { timeout: 120_000 }, async () => {
    await fc.assert(property(true), { numRuns: 8, seed: 4242 })
  })
})
