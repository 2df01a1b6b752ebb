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
  transferredChangeId: 9,
  activeCopy: "draft",
  copyInProgress: false,
  rollInProgress: false,
  draftBase: { generation: 2, frame: 12 }
}

/** node:fs noting each fsync, by the name `label` gives the file it was opened as. */
const countingFsyncs = (label: (file: string) => string) => {
  const synced: Array<string> = []
  const names = new Map<number, string>()
  const counting: SyncFiles.Service = {
    ...SyncFiles.node,
    openSync: (file, flags) => {
      const fd = SyncFiles.node.openSync(file, flags)
      names.set(fd, label(file))
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
  return { counting, synced }
}

describe("SyncMetadata", () => {
  it.scoped("round-trips through the file, replaced atomically without leftovers", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = NodePath.join(dir, "db-info")
      const store = SyncMetadata.make(path)
      expect(yield* store.read).toEqual(Option.none())
      yield* store.write(sample)
      yield* store.write({ ...sample, syncedFrame: 18 })
      expect(yield* store.read).toEqual(Option.some({ ...sample, syncedFrame: 18 }))
      expect(Fs.readdirSync(dir)).toEqual(["db-info"])
      yield* store.remove
      expect(yield* store.read).toEqual(Option.none())
    }))

  it.scoped("a file that is not valid metadata is a StorageError, not a guess", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = NodePath.join(dir, "db-info")
      for (const text of ["{", JSON.stringify({ ...sample, syncedFrame: -1 }), JSON.stringify({ ...sample, version: 7 })]) {
        Fs.writeFileSync(path, text)
        const error = yield* Effect.flip(SyncMetadata.make(path).read)
        expect(error).toMatchObject({ _tag: "StorageError", reason: "Metadata", path })
      }
    }))

  it.scoped("renameDurable: false fsyncs the new record's contents but not the directory; the default fsyncs both", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const path = NodePath.join(dir, "db-info")
      const { counting, synced } = countingFsyncs((file) => file === dir ? "directory" : "file")
      const store = SyncMetadata.make(path)
      yield* Effect.provideService(store.write(sample), SyncFiles.SyncFiles, counting)
      expect(synced).toEqual(["file", "directory"])
      synced.length = 0
      yield* Effect.provideService(store.write({ ...sample, syncedFrame: 18 }, { renameDurable: false }), SyncFiles.SyncFiles, counting)
      expect(synced).toEqual(["file"])
      expect(yield* store.read).toEqual(Option.some({ ...sample, syncedFrame: 18 }))
      expect(Fs.readdirSync(dir)).toEqual(["db-info"])
    }))

  it.effect("layerMemory keeps the last write", () =>
    Effect.gen(function*() {
      const store = yield* SyncMetadata.SyncMetadata
      yield* store.write(sample)
      expect(yield* store.read).toEqual(Option.some(sample))
    }).pipe(Effect.provide(SyncMetadata.layerMemory)))
})

/** A file store in a new directory, holding `sample`. */
const storeWithSample = Effect.gen(function*() {
  const dir = yield* tempDir
  const store = SyncMetadata.make(NodePath.join(dir, "db-info"))
  yield* store.write(sample)
  return { dir, store }
})

// The metadata written in two steps: the new record durable beside its place while the caller does other
// work, the current record standing until `commit`, nothing left behind by `discard` or by a failure.
describe("SyncMetadata.prepare", () => {
  it.scoped("the new record is fsynced beside the current one, which stands until commit; discard drops it", () =>
    Effect.gen(function*() {
      const { dir, store } = yield* storeWithSample
      const { counting, synced } = countingFsyncs((file) =>
        file === dir ? "directory" : NodePath.basename(file).startsWith("db-info.tmp-") ? "new" : file
      )
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
      const { dir, store } = yield* storeWithSample
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
