/**
 * The metadata written in two steps (`SyncMetadata.Service.prepare`): the new record durable beside its
 * place while the caller does other work, the current record standing until `commit`, nothing left behind
 * by `discard` or by a failure of any of its file operations.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as FaultInjection from "../src/FaultInjection.js"
import * as SyncFiles from "../src/SyncFiles.js"
import * as SyncMetadata from "../src/SyncMetadata.js"
import { tempDir } from "./support/engine.js"

const sample: SyncMetadata.Metadata = {
  version: 1,
  clientId: "client-1",
  generation: 2,
  syncedFrame: 17,
  lastPushedChangeId: 5,
  activeCopy: "draft",
  copyInProgress: false,
  rollInProgress: false,
  draftBase: { generation: 2, frame: 12 }
}

describe("SyncMetadata.prepare", () => {
  it.scoped("the new record is fsynced beside the current one, which stands until commit; discard drops it", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = NodePath.join(dir, "db-info")
      const store = SyncMetadata.make(path)
      yield* store.write(sample)
      const synced: Array<string> = []
      const names = new Map<number, string>()
      const counting: SyncFiles.Service = {
        ...SyncFiles.node,
        openSync: (file, flags) => {
          const fd = SyncFiles.node.openSync(file, flags)
          names.set(fd, file === dir ? "directory" : NodePath.basename(file).startsWith("db-info.tmp-") ? "new" : file)
          return fd
        },
        fsyncSync: (fd) => {
          synced.push(names.get(fd) ?? "?")
          SyncFiles.node.fsyncSync(fd)
        },
        fsyncAll: (fds) => {
          fds.forEach((fd) => synced.push(`${names.get(fd) ?? "?"} (off the thread)`))
          return SyncFiles.node.fsyncAll!(fds)
        }
      }
      const provided = <A, E>(effect: Effect.Effect<A, E>) => Effect.provideService(effect, SyncFiles.SyncFiles, counting)

      const prepared = yield* provided(store.prepare({ ...sample, syncedFrame: 18 }))
      expect(synced).toEqual(["new (off the thread)"])
      expect(yield* store.read).toEqual(Option.some(sample))
      expect(Fs.readdirSync(dir).sort()).toHaveLength(2)
      yield* provided(prepared.commit)
      expect(synced).toEqual(["new (off the thread)", "directory"])
      expect(yield* store.read).toEqual(Option.some({ ...sample, syncedFrame: 18 }))
      expect(Fs.readdirSync(dir)).toEqual(["db-info"])

      // Without the directory's fsync when asked; a discarded record leaves the current one alone.
      synced.length = 0
      yield* Effect.flatMap(provided(store.prepare({ ...sample, syncedFrame: 19 }, { renameDurable: false })), (p) => provided(p.commit))
      expect(synced).toEqual(["new (off the thread)"])
      yield* Effect.flatMap(provided(store.prepare({ ...sample, syncedFrame: 20 })), (p) => p.discard)
      expect(yield* store.read).toEqual(Option.some({ ...sample, syncedFrame: 19 }))
      expect(Fs.readdirSync(dir)).toEqual(["db-info"])
    }))

  it.scoped("each of its file operations failed once: a StorageError, the current record intact, no temp file", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = NodePath.join(dir, "db-info")
      const store = SyncMetadata.make(path)
      yield* store.write(sample)
      const plan = FaultInjection.makePlan()
      const files = FaultInjection.files(plan)
      const both = Effect.flatMap(store.prepare({ ...sample, syncedFrame: 18 }), (p) => p.commit).pipe(
        Effect.provideService(SyncFiles.SyncFiles, files)
      )
      yield* both
      // open, write, fsync, close, rename, the directory's open, fsync and close.
      const operations = [...plan.operations]
      expect(operations).toContain("rename")
      for (let at = 1; at <= operations.length; at++) {
        yield* store.write(sample)
        plan.arm(at, "before")
        const exit = yield* Effect.exit(both)
        expect(plan.fired?.at, `${operations[at - 1]}`).toBe(at)
        expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag, operations[at - 1]).toBe("StorageError")
        // Failed before the rename: the current record; at or after it: the new one. Never a torn one.
        const read = yield* store.read
        expect(read, operations[at - 1]).toEqual(Option.some({ ...sample, syncedFrame: operations.indexOf("rename") < at - 1 ? 18 : 17 }))
        if (operations.indexOf("rename") >= at - 1) expect(Fs.readdirSync(dir), operations[at - 1]).toEqual(["db-info"])
      }
      plan.disarm()
    }))
})
