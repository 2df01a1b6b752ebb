/**
 * What a push and a pull cost in durable metadata writes and in requests, over a real HTTP server: one
 * metadata write each (the pull's copy flag, the push's acknowledgement), none for a pull that brings
 * nothing but what an earlier step left in memory; the check of the remote and the first frames asked for together. The metadata file still
 * says where the local database stands: right after each acknowledged push and each copy, and after close.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as SyncFiles from "../src/SyncFiles.js"
import { countingRemote, Harness, freshName, layerHttp, openClient, tempDir } from "./support/engine.js"

/** The file service, counting the replacements of `metadataPath` (each durable metadata write renames over it). */
const countingFiles = (metadataPath: string) => {
  const counts = { metadataWrites: 0 }
  const files: SyncFiles.Service = {
    ...SyncFiles.node,
    renameSync: (from, to) => {
      SyncFiles.node.renameSync(from, to)
      if (to === metadataPath) counts.metadataWrites++
    }
  }
  return { counts, files }
}

const onDisk = (path: string) => JSON.parse(Fs.readFileSync(`${path}-info`, "utf8"))

/** The file service, noting writes, fsyncs (of fsyncAll too) and renames by path, in order. */
const recordingFiles = () => {
  const ops: Array<string> = []
  const paths = new Map<number, string>()
  const files: SyncFiles.Service = {
    ...SyncFiles.node,
    openSync: (path, flags) => {
      const fd = SyncFiles.node.openSync(path, flags)
      paths.set(fd, path)
      return fd
    },
    writeSync: (fd, ...rest) => {
      ops.push(`write ${paths.get(fd)}`)
      return SyncFiles.node.writeSync(fd, ...rest)
    },
    fsyncSync: (fd) => {
      SyncFiles.node.fsyncSync(fd)
      ops.push(`fsync ${paths.get(fd)}`)
    },
    fsyncAll: async (fds) => {
      await SyncFiles.node.fsyncAll!(fds)
      for (const fd of fds) ops.push(`fsync ${paths.get(fd)}`)
    },
    renameSync: (from, to) => {
      SyncFiles.node.renameSync(from, to)
      ops.push(`rename ${to}`)
    }
  }
  return { ops, files }
}

layer(layerHttp, { excludeTestServices: true, timeout: 120_000 })("metadata writes and requests per push and pull", (it) => {
  it.scoped("a pull of one commit writes the metadata once, a push once, a pull of nothing only what was left in memory", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const name = freshName("writes")
      const dir = yield* tempDir
      const writer = yield* openClient(yield* harness.remote(name), NodePath.join(dir, "writer"))
      yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
      yield* writer.push

      const path = NodePath.join(dir, "reader")
      const { counts: files, files: service } = countingFiles(`${path}-info`)
      const { counts: requests, remote, reset: resetRequests } = countingRemote(yield* harness.remote(name))
      const scope = yield* Scope.make()
      const reader = yield* Scope.extend(openClient(remote, path), scope).pipe(
        Effect.provideService(SyncFiles.SyncFiles, service)
      )
      const reset = () => {
        files.metadataWrites = 0
        resetRequests()
      }

      // One commit arrives: one write (the copy's flag, which carries the pulled position).
      yield* writer.execute("INSERT INTO t VALUES ('w-1', 1)")
      yield* writer.push
      reset()
      expect(yield* reader.pull).toBe(true)
      expect(files.metadataWrites).toBe(1)
      // `/info` and the first frames (asked together), nothing more: the frame at the synced position is
      // folded into Synced's file (the reader bootstrapped from the head snapshot), so `/info`'s length of
      // its generation stands for pulling it again.
      expect(requests).toEqual({ info: 1, pull: 1, push: 0 })
      expect(yield* reader.query("SELECT k, n FROM t")).toEqual([{ k: "w-1", n: 1 }])
      const pulled = yield* reader.stats
      expect(onDisk(path).syncedFrame).toBe(pulled.syncedFrame)

      // Nothing new: the first such pull writes what the copy left in memory (its flag cleared), once.
      reset()
      expect(yield* reader.pull).toBe(false)
      expect(files.metadataWrites).toBe(1)
      expect(onDisk(path).copyInProgress).toBe(false)
      reset()
      expect(yield* reader.pull).toBe(false)
      expect(files.metadataWrites).toBe(0)
      // The frame at the synced position (in Synced's WAL now, compared by the check) and what follows it
      // come in one pull beside `/info`.
      expect(requests).toEqual({ info: 1, pull: 1, push: 0 })

      // A push of one row: one write (the acknowledgement), with the position it reached. At the head, it
      // is the push alone: it starts at the synced frame and names the database (no `/info`, no pull).
      yield* reader.execute("INSERT INTO t VALUES ('r-1', 1)")
      reset()
      expect(yield* reader.push).toBe(true)
      expect(files.metadataWrites).toBe(1)
      expect(requests).toEqual({ info: 0, pull: 0, push: 1 })
      const pushed = yield* reader.stats
      expect(pushed.pendingChanges).toBe(0)
      expect(onDisk(path).syncedFrame).toBe(pushed.syncedFrame)
      expect(onDisk(path).lastPushedChangeId).toBeGreaterThan(0)

      // Closed: the file holds everything (no copy left flagged).
      yield* Scope.close(scope, Exit.void)
      const closed = onDisk(path)
      expect(closed.copyInProgress).toBe(false)
      expect(closed.inUse).toBe(false)
      expect(closed.syncedFrame).toBe(pushed.syncedFrame)

      // And it opens where it stood.
      const again = yield* openClient(yield* harness.remote(name), path)
      expect(yield* again.query("SELECT k, n FROM t ORDER BY k")).toEqual([{ k: "r-1", n: 1 }, { k: "w-1", n: 1 }])
      expect((yield* again.stats).pendingChanges).toBe(0)
      yield* writer.pull
      expect(yield* writer.query("SELECT k, n FROM t ORDER BY k")).toEqual([{ k: "r-1", n: 1 }, { k: "w-1", n: 1 }])
    }))

  it.scoped("a pull's frames in Synced's WAL are fsynced before the metadata write that records their position", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const name = freshName("pulled-sync")
      const dir = yield* tempDir
      const writer = yield* openClient(yield* harness.remote(name), NodePath.join(dir, "writer"))
      yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
      yield* writer.push
      const path = NodePath.join(dir, "reader")
      const { files, ops } = recordingFiles()
      const reader = yield* openClient(yield* harness.remote(name), path).pipe(Effect.provideService(SyncFiles.SyncFiles, files))
      for (let i = 1; i <= 3; i++) {
        yield* writer.execute("INSERT INTO t VALUES (?, ?)", [`w-${i}`, i])
        yield* writer.push
        ops.length = 0
        expect(yield* reader.pull).toBe(true)
        const appended = ops.indexOf(`write ${path}-synced-wal`)
        expect(appended, ops.join("\n")).toBeGreaterThanOrEqual(0)
        const recorded = ops.findIndex((op, at) => at > appended && op === `rename ${path}-info`)
        expect(recorded, ops.join("\n")).toBeGreaterThan(appended)
        // The last write to the WAL before the metadata names its frames, then its fsync, then the metadata.
        const lastWrite = ops.lastIndexOf(`write ${path}-synced-wal`, recorded)
        const synced = ops.indexOf(`fsync ${path}-synced-wal`, lastWrite)
        expect(synced, ops.join("\n")).toBeGreaterThan(lastWrite)
        expect(synced, ops.join("\n")).toBeLessThan(recorded)
        expect(onDisk(path).syncedFrame).toBe((yield* reader.stats).syncedFrame)
        expect(yield* reader.query("SELECT count(*) AS n FROM t")).toEqual([{ n: i }])
      }
    }))
})

