/**
 * The bootstrap's file steps: both copies written and fsynced together with their directory
 * (`SyncFiles.fsyncAll`, all in flight at once), every descriptor closed whatever fails, and SQLite's check of a base in memory leaving
 * the downloaded bytes as they came (it runs while the copies' fsyncs are in flight, on the same bytes).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import BetterSqlite3 from "better-sqlite3"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as FaultInjection from "../src/FaultInjection.js"
import * as SyncFiles from "../src/SyncFiles.js"
import * as Files from "../src/internal/sqlite/files.js"
import * as Validate from "../src/internal/engine/validate.js"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bootfiles-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

/** Descriptors this process has open (Linux), to tell a leak. */
const openDescriptors = () => Fs.readdirSync("/proc/self/fd").length

/** A real SQLite database in WAL mode (bytes 18-19 = 2), as a base arrives. */
const walDatabase = (dir: string) => {
  const file = NodePath.join(dir, "source.db")
  const db = new BetterSqlite3(file)
  db.pragma("page_size = 4096")
  db.pragma("journal_mode = WAL")
  db.exec("CREATE TABLE t(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) INSERT INTO t SELECT i FROM n;")
  db.pragma("wal_checkpoint(TRUNCATE)")
  db.close()
  return new Uint8Array(Fs.readFileSync(file))
}

describe("bootstrap files", () => {
  it("node's fsyncAll fsyncs every descriptor and rejects when one fails, after the others", async () => {
    const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bootfiles-"))
    try {
      const fds = ["a", "b", "c"].map((n) => Fs.openSync(NodePath.join(dir, n), "w"))
      await expect(SyncFiles.node.fsyncAll!(fds)).resolves.toBeUndefined()
      const closed = Fs.openSync(NodePath.join(dir, "d"), "w")
      Fs.closeSync(closed)
      await expect(SyncFiles.node.fsyncAll!([fds[0], closed, fds[2]])).rejects.toMatchObject({ code: "EBADF" })
      fds.forEach((fd) => Fs.closeSync(fd))
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it.scoped("writeNewFiles: every file holds the bytes, with and without fsyncAll", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const bytes = new Uint8Array(3 * 4096).map((_, i) => i % 253)
      const { fsyncAll: _, ...oneByOne } = SyncFiles.node
      for (const [name, service] of [["together", SyncFiles.node], ["one by one", oneByOne]] as const) {
        const paths = [NodePath.join(dir, `${name}-1`), NodePath.join(dir, `${name}-2`)]
        const before = openDescriptors()
        yield* Files.writeNewFiles(paths, bytes).pipe(Effect.provideService(SyncFiles.SyncFiles, service))
        expect(openDescriptors()).toBe(before)
        for (const path of paths) expect(Buffer.compare(Fs.readFileSync(path), bytes)).toBe(0)
      }
    }))

  it.scoped("writeNewFiles: the directory is fsynced together with the files, opened once every name exists", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const opened: Array<string> = []
      const batches: Array<ReadonlyArray<string>> = []
      const names = new Map<number, string>()
      const recording: SyncFiles.Service = {
        ...SyncFiles.node,
        openSync: (path, flags) => {
          const fd = SyncFiles.node.openSync(path, flags)
          names.set(fd, NodePath.basename(path))
          opened.push(NodePath.basename(path))
          return fd
        },
        fsyncAll: (fds) => {
          batches.push(fds.map((fd) => names.get(fd)!))
          return SyncFiles.node.fsyncAll!(fds)
        }
      }
      const paths = [NodePath.join(dir, "synced"), NodePath.join(dir, "draft")]
      yield* Files.writeNewFiles(paths, new Uint8Array(4096).fill(1)).pipe(Effect.provideService(SyncFiles.SyncFiles, recording))
      expect(opened).toEqual(["synced", "draft", NodePath.basename(dir)])
      expect(batches).toEqual([["synced", "draft", NodePath.basename(dir)]])
    }))

  it.scoped("writeNewFiles: each of its file operations failed once is a StorageError, and no descriptor stays open", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const bytes = new Uint8Array(2 * 4096).fill(7)
      const plan = FaultInjection.makePlan()
      const files = FaultInjection.files(plan)
      const paths = [NodePath.join(dir, "synced"), NodePath.join(dir, "draft")]
      yield* Files.writeNewFiles(paths, bytes).pipe(Effect.provideService(SyncFiles.SyncFiles, files))
      // open and write (twice), the directory's open, fsync (both files and the directory), close (three).
      const operations = [...plan.operations]
      expect(operations.filter((o) => o === "fsync")).toHaveLength(3)
      for (let at = 1; at <= operations.length; at++) {
        for (const fault of ["before", "after"] as const) {
          paths.forEach((p) => Fs.rmSync(p, { force: true }))
          plan.arm(at, fault)
          const before = openDescriptors()
          const exit = yield* Effect.exit(Files.writeNewFiles(paths, bytes).pipe(Effect.provideService(SyncFiles.SyncFiles, files)))
          expect(plan.fired?.at, `${at} ${fault}`).toBe(at)
          expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag, `${operations[at - 1]} ${fault}`)
            .toBe("StorageError")
          expect(openDescriptors(), `${operations[at - 1]} ${fault}`).toBe(before)
        }
      }
      plan.disarm()
    }))

  it.scoped("SQLite's check of a base in memory leaves its bytes as they came, whether it passes or not", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const base = walDatabase(dir)
      expect([base[18], base[19]]).toEqual([2, 2])
      const copy = Uint8Array.from(base)
      yield* Validate.databaseBytes(base, "base")
      expect(Buffer.compare(base, copy)).toBe(0)
      // Broken pages: refused, and the bytes (a view into a larger buffer) are left as they were.
      const larger = new Uint8Array(base.byteLength + 100)
      const broken = larger.subarray(50, 50 + base.byteLength)
      broken.set(base)
      broken.fill(0xff, 4096, 4096 * 2)
      const brokenCopy = Uint8Array.from(larger)
      const refused = yield* Effect.flip(Validate.databaseBytes(broken, "base"))
      expect(refused.reason).toBe("InvalidData")
      expect(Buffer.compare(larger, brokenCopy)).toBe(0)
    }))
})
