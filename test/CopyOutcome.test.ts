/**
 * A pull's copy is made while writes flow and swapped in with writes held (src/internal/engine/copy.ts):
 * a write that lands while the copy is made is never lost, in process (the copy is made again) nor across
 * a crash after the copy was flagged (open drops a copy over a WAL that changed, finishes one over the
 * same WAL). Real SQLite files, the in-process store as remote.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import { flaggedCopyOutcome } from "../src/internal/engine/copy.js"
import type * as SyncDatabase from "../src/SyncDatabase.js"
import { Harness, freshName, layerStore, openClient, remoteQuery, tempDir } from "./support/engine.js"

describe("flaggedCopyOutcome", () => {
  it("renames only over the WAL the copy was made for; a changed WAL without the fresh one means the rename happened", () => {
    expect(flaggedCopyOutcome(true, true)).toBe("finish")
    expect(flaggedCopyOutcome(true, undefined)).toBe("finish")
    expect(flaggedCopyOutcome(true, false)).toBe("drop")
    expect(flaggedCopyOutcome(false, false)).toBe("done")
    expect(flaggedCopyOutcome(false, true)).toBe("drop")
    expect(flaggedCopyOutcome(false, undefined)).toBe("drop")
  })
})

const rows = (db: SyncDatabase.Service) => db.query<{ k: string }>("SELECT k FROM t ORDER BY k")

layer(layerStore, { excludeTestServices: true, timeout: 120_000 })("a copy made while writes flow", (it) => {
  /** A writer with rows on the remote and a victim holding a pending row, the remote moved on since. */
  const setup = Effect.gen(function*() {
    const harness = yield* Harness
    const remote = yield* harness.remote(freshName("copy-outcome"))
    const dir = yield* tempDir
    const writer = yield* openClient(remote, NodePath.join(dir, "writer"))
    yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    yield* writer.execute("INSERT INTO t VALUES ('w-1')")
    yield* writer.push
    return { remote, dir, writer }
  })

  it.scoped("a write landing while the copy is made is kept: the copy is made again, the write pushed once", () =>
    Effect.gen(function*() {
      const { remote, dir, writer } = yield* setup
      const armed = yield* Ref.make(0)
      let self: SyncDatabase.Service | undefined
      const onStep = (step: string) =>
        Effect.gen(function*() {
          // The first copy's flag is on disk and writes are not held: a write lands now.
          if (step === "copy:flagged" && (yield* Ref.getAndUpdate(armed, (n) => (n === 1 ? 2 : n))) === 1) {
            yield* self!.execute("INSERT INTO t VALUES ('during')")
          }
        }).pipe(Effect.orDie)
      const victim = yield* openClient(remote, NodePath.join(dir, "victim"), { onStep })
      self = victim
      yield* victim.execute("INSERT INTO t VALUES ('v-1')")
      yield* writer.execute("INSERT INTO t VALUES ('w-2')")
      yield* writer.push
      yield* Ref.set(armed, 1)
      expect(yield* victim.pull).toBe(true)
      expect(yield* Ref.get(armed)).toBe(2)
      expect(yield* rows(victim)).toEqual(["during", "v-1", "w-1", "w-2"].map((k) => ({ k })))
      expect((yield* victim.stats).pendingChanges).toBe(2)
      yield* victim.push
      expect(yield* remoteQuery(remote, "SELECT k FROM t ORDER BY k")).toEqual(["during", "v-1", "w-1", "w-2"].map((k) => ({ k })))
    }))

  for (const writeLands of [true, false]) {
    it.scoped(
      writeLands
        ? "stopped after the copy's flag, a write landing after it: open drops the copy, the write stays"
        : "stopped after the copy's flag, nothing written since: open finishes the copy",
      () =>
        Effect.gen(function*() {
          const { remote, dir, writer } = yield* setup
          const path = NodePath.join(dir, "victim")
          const armed = yield* Ref.make(false)
          let self: SyncDatabase.Service | undefined
          const onStep = (step: string) =>
            Effect.gen(function*() {
              if (step !== "copy:flagged" || !(yield* Ref.getAndSet(armed, false))) return
              if (writeLands) yield* self!.execute("INSERT INTO t VALUES ('during')")
              // The process stops here: the fresh WAL is fsynced and flagged, nothing swapped yet.
              return yield* Effect.die("stopped after copy:flagged")
            }).pipe(Effect.orDie)
          const scope = yield* Scope.make()
          const victim = yield* Scope.extend(openClient(remote, path, { onStep }), scope)
          self = victim
          yield* victim.execute("INSERT INTO t VALUES ('v-1')")
          yield* writer.execute("INSERT INTO t VALUES ('w-2')")
          yield* writer.push
          yield* Ref.set(armed, true)
          expect(Exit.isFailure(yield* Effect.exit(victim.pull))).toBe(true)
          // The flag and the fresh WAL are left for open to judge.
          expect(JSON.parse(Fs.readFileSync(`${path}-info`, "utf8")).copyInProgress).toBe(true)
          expect(Fs.existsSync(`${path}-draft-wal.next`)).toBe(true)
          yield* Scope.close(scope, Exit.void)

          const reopened = yield* openClient(remote, path)
          expect(Fs.existsSync(`${path}-draft-wal.next`)).toBe(false)
          const metadata = JSON.parse(Fs.readFileSync(`${path}-info`, "utf8"))
          expect(metadata.copyInProgress).toBe(false)
          const mine = writeLands ? ["during", "v-1"] : ["v-1"]
          // Finished: Draft is the copy (the remote's w-2 with the pending v-1). Dropped: Draft as it was.
          expect(yield* rows(reopened)).toEqual(
            (writeLands ? ["during", "v-1", "w-1"] : ["v-1", "w-1", "w-2"]).map((k) => ({ k }))
          )
          if (writeLands) expect(metadata.draftBase).toBeUndefined()
          yield* reopened.sync
          const all = [...mine, "w-1", "w-2"].sort().map((k) => ({ k }))
          expect(yield* rows(reopened)).toEqual(all)
          expect(yield* remoteQuery(remote, "SELECT k FROM t ORDER BY k")).toEqual(all)
          expect((yield* reopened.stats).pendingChanges).toBe(0)
        })
    )
  }
})
