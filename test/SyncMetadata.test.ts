import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
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
      const synced: Array<string> = []
      const names = new Map<number, string>()
      const counting: SyncFiles.Service = {
        ...SyncFiles.node,
        openSync: (file, flags) => {
          const fd = SyncFiles.node.openSync(file, flags)
          names.set(fd, file === dir ? "directory" : "file")
          return fd
        },
        fsyncSync: (fd) => {
          synced.push(names.get(fd) ?? "?")
          SyncFiles.node.fsyncSync(fd)
        }
      }
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
