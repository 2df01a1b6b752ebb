import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"
import { ServerStore, StoreRemote } from "effect-sqlite-sync/testing"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { addNote, completeNote, listNotes, migrate } from "./notes.js"

// A replica whose remote is a ServerStore in the same process: no server, no network, same protocol.
const replica = (name: string) =>
  Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "notes-test-"))),
      (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
    )
    const layer = SyncDatabase.layerRemote({ path: Path.join(dir, name) }).pipe(
      Layer.provide(StoreRemote.layer({ database: "notes" }))
    )
    // The ServerStore comes from the test's context, so both replicas share one remote.
    return Context.get(yield* Layer.build(layer), SyncDatabase.SyncDatabase)
  })

// Runs `effect` against one replica by providing it as the SyncDatabase.
const on = (db: SyncDatabase.Service) => Effect.provideService(SyncDatabase.SyncDatabase, db)

describe("notes", () => {
  it.scoped("a note added on one device is completed on another", () =>
    Effect.gen(function*() {
      const phone = yield* replica("phone")
      const laptop = yield* replica("laptop")

      yield* on(phone)(Effect.zipRight(migrate, addNote("n1", "buy milk")))
      yield* phone.sync
      yield* laptop.sync

      expect(yield* on(laptop)(completeNote("n1"))).toBe(true)
      yield* laptop.sync
      yield* phone.sync

      const notes = yield* on(phone)(listNotes)
      expect(notes.map((n) => [n.id, n.body, n.done])).toEqual([["n1", "buy milk", true]])
      expect((yield* phone.stats).pendingChanges).toBe(0)
    }).pipe(Effect.provide(ServerStore.layerMemory())))
})
