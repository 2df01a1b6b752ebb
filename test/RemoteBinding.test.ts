/**
 * A local database belongs to one server database, and a server that forgot what it acknowledged is
 * never built on: real `serve` processes whose data directory is restored from an older copy, wiped, or
 * whose generations are dropped; the URL recorded at bootstrap. Pure decisions have property tests.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as Scope from "effect/Scope"
import * as fc from "fast-check"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as RemoteBinding from "../src/internal/engine/remoteBinding.js"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncError from "../src/SyncError.js"
import { tempDir } from "./support/engine.js"
import * as H from "./support/http.js"
import { type ServerProcess, spawnServer } from "./support/process.js"

const openIn = (scope: Scope.Scope, path: string, url: string, options: Partial<SyncDatabase.HttpOptions> = {}) =>
  Layer.buildWithScope(
    SyncDatabase.layer({ path, url, conflictBackoff: 5, ...options }).pipe(Layer.provide(NodeHttpClient.layerUndici)),
    scope
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

const open = (path: string, url: string, options: Partial<SyncDatabase.HttpOptions> = {}) =>
  Effect.flatMap(Effect.scope, (scope) => openIn(scope, path, url, options))

/** A `serve` process on `data`, on `port` when given; stopped (SIGTERM) by `stop` or the scope. */
const server = (data: string, port?: string) =>
  Effect.acquireRelease(
    Effect.promise(() => spawnServer(["--data", data, ...(port === undefined ? [] : ["--port", port])])),
    (s) => stop(s)
  )

const stop = (s: ServerProcess) =>
  Effect.promise(async () => {
    if (s.child.exitCode === null && s.child.signalCode === null) {
      s.child.kill("SIGTERM")
      await s.exited
    }
  })

const serverRows = (base: string, name: string) =>
  Effect.promise(async () => {
    const snapshot = await H.snapshot(base, name)
    const db = H.open(snapshot.file)
    try {
      return {
        digest: H.digestOf(snapshot),
        integrity: db.pragma("integrity_check", { simple: true }),
        rows: db.prepare("SELECT k FROM t ORDER BY k").all() as Array<{ k: string }>
      }
    } finally {
      db.close()
    }
  })

const filesDigest = (path: string) =>
  ["-info", "-draft", "-synced", "-synced-wal"].map((suffix) =>
    Fs.existsSync(`${path}${suffix}`) ? Fs.readFileSync(`${path}${suffix}`).toString("base64") : "absent"
  ).join("|")

describe("the remote a local database belongs to", () => {
  it.scoped("a server restored from an older copy: sync stops with RemoteBehind and changes nothing; rebootstrap keeps the pending change, pushed once", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const data = NodePath.join(dir, "server")
      const backup = NodePath.join(dir, "backup")
      const first = yield* server(data)
      const port = new URL(first.url).port
      const url = `${first.url}/db/shop`
      const pathA = NodePath.join(dir, "a")

      const scopeA = yield* Scope.make()
      const a = yield* openIn(scopeA, pathA, url)
      yield* a.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
      yield* a.execute("INSERT INTO t VALUES ('a1')")
      expect(yield* a.sync).toBe(true)

      // The backup: the data directory copied while the server is stopped.
      yield* stop(first)
      Fs.cpSync(data, backup, { recursive: true })
      const second = yield* server(data, port)
      for (const k of ["a2", "a3"]) {
        yield* a.execute("INSERT INTO t VALUES (?)", [k])
        expect(yield* a.sync).toBe(true)
      }
      const known = (yield* a.stats).syncedFrame

      // Restored from the backup; another replica then pushes more frames than `a` knows of.
      yield* stop(second)
      Fs.rmSync(data, { recursive: true })
      Fs.cpSync(backup, data, { recursive: true })
      const restored = yield* server(data, port)
      const b = yield* open(NodePath.join(dir, "b"), url)
      yield* b.pull
      for (let i = 1; b.stats !== undefined && i <= 12; i++) {
        yield* b.execute("INSERT INTO t VALUES (?)", [`b${i}`])
        yield* b.push
      }
      expect((yield* b.stats).syncedFrame).toBeGreaterThan(known)

      yield* a.execute("INSERT INTO t VALUES ('a4')")
      const before = yield* serverRows(restored.url, "shop")
      const localBefore = filesDigest(pathA)
      for (const operation of [a.sync, a.push, a.pull]) {
        const error = yield* Effect.flip(operation)
        expect(error).toBeInstanceOf(SyncError.RemoteMismatch)
        expect(error).toMatchObject({ reason: "RemoteBehind" })
      }
      expect(yield* serverRows(restored.url, "shop")).toEqual(before)
      expect(filesDigest(pathA)).toBe(localBefore)
      expect((yield* a.stats).pendingChanges).toBe(1)

      // Starting over from the server's state keeps the pending change; it is pushed once.
      yield* a.rebootstrap
      expect((yield* a.stats).pendingChanges).toBe(1)
      expect(yield* a.query("SELECT k FROM t WHERE k LIKE 'a%' ORDER BY k")).toEqual([{ k: "a1" }, { k: "a4" }])
      expect(yield* a.sync).toBe(true)
      expect((yield* a.stats).pendingChanges).toBe(0)
      const after = yield* serverRows(restored.url, "shop")
      expect(after.integrity).toBe("ok")
      const bRows = Array.from({ length: 12 }, (_, i) => `b${i + 1}`)
      expect(after.rows.map((r) => r.k)).toEqual(["a1", "a4", ...bRows].sort())
      // A fresh replica agrees, and passes SQLite's check.
      const fresh = yield* open(NodePath.join(dir, "fresh"), url)
      yield* fresh.pull
      expect((yield* fresh.query<{ k: string }>("SELECT k FROM t ORDER BY k")).map((r) => r.k)).toEqual(after.rows.map((r) => r.k))
      expect(yield* fresh.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
      yield* Scope.close(scopeA, Exit.void)
    }), 180_000)

  it.scoped("a generation the server dropped (410) is followed by a re-bootstrap, with an event; pending changes are pushed once", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const s = yield* Effect.acquireRelease(
        Effect.promise(() =>
          spawnServer(["--data", NodePath.join(dir, "server"), "--generation-frames", "4", "--keep-generations", "0"])
        ),
        stop
      )
      const url = `${s.url}/db/rolls`
      const a = yield* open(NodePath.join(dir, "a"), url)
      yield* a.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
      // Rows without a natural key (random ids): a change applied twice would show as two rows.
      yield* a.execute("CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
      const insertW = (db: SyncDatabase.Service, v: string) =>
        db.execute("INSERT INTO w VALUES (?, ?)", [Math.floor(Math.random() * 2 ** 52), v])
      expect(yield* a.sync).toBe(true)
      const generation = (yield* a.stats).generation

      // `a` holds changes while another replica makes the server roll past `a`'s generation, and drop it.
      yield* a.execute("INSERT INTO t VALUES ('a1')")
      yield* insertW(a, "a1")
      const b = yield* open(NodePath.join(dir, "b"), url)
      yield* b.pull
      for (let i = 1; i <= 8; i++) {
        yield* b.execute("INSERT INTO t VALUES (?)", [`b${i}`])
        yield* insertW(b, `b${i}`)
        yield* b.sync
      }
      expect((yield* b.stats).generation).toBeGreaterThan(generation + 1)
      const gone = yield* Effect.promise(() => H.request(s.url, { path: `/db/rolls/sync/${generation}/1/2` }))
      expect(gone.status).toBe(410)

      const events = yield* a.subscribe
      expect(yield* a.sync).toBe(true)
      const seen = Chunk.toReadonlyArray(yield* Queue.takeAll(events))
      const rebootstraps = seen.filter((e) => e._tag === "Rebootstrapped")
      // At least the one for `a`'s generation; with no generation kept, the roll its own push causes can
      // drop the next one too before its pull.
      expect(rebootstraps.length).toBeGreaterThanOrEqual(1)
      expect(rebootstraps[0]).toMatchObject({ reason: "GenerationGone", from: generation, operation: "sync" })
      expect(rebootstraps.every((e) => e._tag === "Rebootstrapped" && e.reason === "GenerationGone")).toBe(true)
      expect((yield* a.stats).pendingChanges).toBe(0)

      yield* b.sync
      const after = yield* serverRows(s.url, "rolls")
      expect(after.integrity).toBe("ok")
      expect(after.rows.map((r) => r.k)).toEqual(["a1", ...Array.from({ length: 8 }, (_, i) => `b${i + 1}`)].sort())
      const w = ["a1", ...Array.from({ length: 8 }, (_, i) => `b${i + 1}`)].sort().map((v) => ({ v }))
      expect(yield* b.query("SELECT v FROM w ORDER BY v")).toEqual(w)
      expect(yield* a.query("SELECT v FROM w ORDER BY v")).toEqual(w)
    }), 180_000)

  it.scoped("another URL is refused with UrlChanged and changes nothing; allowUrlChange moves the database", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const s = yield* server(NodePath.join(dir, "server"))
      const url = `${s.url}/db/shop`
      const path = NodePath.join(dir, "a")
      const scope = yield* Scope.make()
      const a = yield* openIn(scope, path, url)
      yield* a.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
      yield* a.push
      yield* a.execute("INSERT INTO t VALUES ('pending')")
      yield* Scope.close(scope, Exit.void)
      const before = filesDigest(path)

      // A typo: /db/other for /db/shop. Nothing is created on the server, nothing changes locally.
      const typo = `${s.url}/db/other`
      const refused = yield* Effect.flip(open(path, typo))
      expect(refused).toBeInstanceOf(SyncError.RemoteMismatch)
      expect(refused).toMatchObject({ reason: "UrlChanged", expected: url, actual: typo })
      expect(filesDigest(path)).toBe(before)
      const probe = yield* Effect.promise(() => H.request(s.url, { path: "/db/other/info" }))
      expect(probe.status).toBe(200)

      // The same database under another address (127.0.0.1 → localhost): refused unless moved explicitly.
      const moved = url.replace("127.0.0.1", "localhost")
      expect(yield* Effect.flip(open(path, moved))).toMatchObject({ _tag: "RemoteMismatch", reason: "UrlChanged" })
      const scope2 = yield* Scope.make()
      const m = yield* openIn(scope2, path, moved, { allowUrlChange: true })
      expect(yield* m.sync).toBe(true)
      yield* Scope.close(scope2, Exit.void)
      expect(JSON.parse(Fs.readFileSync(`${path}-info`, "utf8")).remoteUrl).toBe(moved)
      // From now on the old address is the other one.
      expect(yield* Effect.flip(open(path, url))).toMatchObject({ _tag: "RemoteMismatch", reason: "UrlChanged" })
      expect((yield* serverRows(s.url, "shop")).rows).toEqual([{ k: "pending" }])
    }), 120_000)

  it.scoped("a pull from a folded position with nothing new is one request; an answer naming another database is checked, and refused", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const data = NodePath.join(dir, "server")
      const first = yield* server(data)
      const port = new URL(first.url).port
      const url = `${first.url}/db/shop`
      const writer = yield* open(NodePath.join(dir, "writer"), url)
      yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
      yield* writer.execute("INSERT INTO t VALUES ('w1')")
      expect(yield* writer.push).toBe(true)
      const requests = (base: string, route: string) =>
        Effect.promise(async () => {
          const text = (await H.request(base, { path: "/metrics" })).body.toString()
          const escaped = route.replace(/[{}/]/g, (c) => `\\${c}`)
          return Array.from(text.matchAll(new RegExp(`^effect_sqlite_sync_requests_total\\{route="${escaped}",status="\\d+"\\} (\\d+)$`, "gm")))
            .reduce((sum, m) => sum + Number(m[1]), 0)
        })
      const INFO = "GET /info"
      const PULL = "GET /sync/{G}/{start}/{end}"

      // Bootstrapped at the head: its synced frame is in Synced's file. Its first pull, with nothing new,
      // asks for the frames after it and nothing else.
      const scope = yield* Scope.make()
      const fresh = yield* openIn(scope, NodePath.join(dir, "fresh"), url)
      const [info0, pulls0] = [yield* requests(first.url, INFO), yield* requests(first.url, PULL)]
      expect(yield* fresh.pull).toBe(false)
      expect([(yield* requests(first.url, INFO)) - info0, (yield* requests(first.url, PULL)) - pulls0]).toEqual([0, 1])
      expect(yield* fresh.query("SELECT k FROM t")).toEqual([{ k: "w1" }])

      // Something new: the answer's frames are used once the check (`/info`) passed.
      yield* writer.execute("INSERT INTO t VALUES ('w2')")
      expect(yield* writer.push).toBe(true)
      const info1 = yield* requests(first.url, INFO)
      expect(yield* fresh.pull).toBe(true)
      expect((yield* requests(first.url, INFO)) - info1).toBe(1)
      expect(yield* fresh.query("SELECT k FROM t ORDER BY k")).toEqual([{ k: "w1" }, { k: "w2" }])

      // A replica bootstrapped at the head; the server database is then wiped and made again under its
      // name by the same writes: the answer to the replica's first pull names another database, the check
      // refuses it, and nothing local changes.
      const latePath = NodePath.join(dir, "late")
      const late = yield* openIn(scope, latePath, url)
      yield* stop(first)
      Fs.rmSync(data, { recursive: true })
      yield* server(data, port)
      const rewriter = yield* open(NodePath.join(dir, "rewriter"), url)
      yield* rewriter.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
      yield* rewriter.execute("INSERT INTO t VALUES ('w1')")
      expect(yield* rewriter.push).toBe(true)
      yield* rewriter.execute("INSERT INTO t VALUES ('w2')")
      expect(yield* rewriter.push).toBe(true)
      const localBefore = filesDigest(latePath)
      for (const db of [late, fresh]) {
        expect(yield* Effect.flip(db.pull)).toMatchObject({ _tag: "RemoteMismatch", reason: "DatabaseReplaced" })
      }
      expect(filesDigest(latePath)).toBe(localBefore)
      expect(yield* late.query("SELECT k FROM t ORDER BY k")).toEqual([{ k: "w1" }, { k: "w2" }])
      yield* Scope.close(scope, Exit.void)
    }), 120_000)

  it("decisions: a URL or identity is refused only when one was recorded and it differs", () => {
    fc.assert(fc.property(fc.option(fc.string()), fc.option(fc.string()), fc.boolean(), (recorded, actual, allow) => {
      const r = recorded ?? undefined
      const a = actual ?? undefined
      const url = RemoteBinding.urlDecision(r, a, allow)
      expect(Either.isLeft(url)).toBe(r !== undefined && a !== undefined && r !== a && !allow)
      const id = RemoteBinding.identityDecision(r, a)
      expect(Either.isLeft(id)).toBe(r !== undefined && a !== undefined && r !== a)
      if (Either.isRight(id)) expect(id.right).toBe(r === undefined && a !== undefined ? "record" : "keep")
    }))
  })

  it("decisions: the remote is behind exactly when it lacks the synced position or another frame sits there", () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 5 }),
      fc.integer({ min: 0, max: 50 }),
      fc.integer({ min: 1, max: 5 }),
      fc.oneof(
        fc.record({ _tag: fc.constant("Frame" as const), same: fc.boolean() }),
        fc.record({ _tag: fc.constant("Ends" as const), maxFrameNo: fc.integer({ min: -1, max: 60 }) }),
        fc.constant({ _tag: "Missing" as const })
      ),
      (generation, syncedFrame, remoteGeneration, answer) => {
        const result = RemoteBinding.headDecision({ generation, syncedFrame }, remoteGeneration, answer)
        const behind = remoteGeneration < generation ||
          (answer._tag === "Frame" && !answer.same) ||
          (answer._tag === "Ends" && answer.maxFrameNo < syncedFrame) ||
          answer._tag === "Missing"
        expect(Either.isLeft(result)).toBe(behind)
      }
    ))
    fc.assert(fc.property(fc.integer({ min: 1, max: 100 }), fc.integer({ min: -1, max: 100 }), (start, maxFrameNo) => {
      expect(Either.isRight(RemoteBinding.rewindDecision(start, maxFrameNo))).toBe(maxFrameNo >= start - 2)
    }))
  })

  it("decisions: a pull's first answer settles the check only from a folded position, naming the recorded database at exactly the synced head", () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 0, max: 20 }),
      fc.integer({ min: 0, max: 20 }),
      fc.option(fc.constantFrom("id-1", "id-2")),
      fc.oneof(
        fc.record({
          _tag: fc.constant("CheckpointNeeded" as const),
          generation: fc.integer({ min: 1, max: 4 }),
          maxFrameNo: fc.integer({ min: 0, max: 22 }),
          databaseId: fc.option(fc.constantFrom("id-1", "id-2"), { nil: undefined })
        }),
        fc.constant({ _tag: "Frames" as const, frames: [] })
      ),
      (generation, syncedFrame, foldedFrame, recorded, answer) => {
        const known = { generation, syncedFrame, foldedFrame: Math.min(foldedFrame, syncedFrame), databaseId: recorded ?? undefined }
        const settled = RemoteBinding.settledByAnswer(known, answer)
        if (!RemoteBinding.settlesByAnswer(known)) expect(settled).toBe(false)
        expect(RemoteBinding.settlesByAnswer(known)).toBe(known.databaseId !== undefined && known.foldedFrame === syncedFrame)
        if (settled && answer._tag === "CheckpointNeeded") {
          // All `verify` would have learnt from `/info`, and every one of its checks passes on it.
          const info = { generation: answer.generation, maxFrameNo: answer.maxFrameNo, databaseId: answer.databaseId }
          expect(RemoteBinding.identityDecision(known.databaseId, info.databaseId)).toEqual(Either.right("keep"))
          const head = RemoteBinding.headFromInfo(known, info)
          expect(head).toEqual({ _tag: "Ends", maxFrameNo: syncedFrame })
          expect(Either.isRight(RemoteBinding.headDecision(known, info.generation, head))).toBe(true)
        }
        // Exactly: folded, the recorded identity named, nothing beyond the synced frame of its generation.
        expect(settled).toBe(
          RemoteBinding.settlesByAnswer(known) && answer._tag === "CheckpointNeeded" &&
            answer.databaseId === known.databaseId && answer.generation === generation && answer.maxFrameNo === syncedFrame
        )
      }
    ))
  })

  it("decisions: /info stands for pulling the synced frame again only for a folded frame of its own generation", () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 5 }),
      fc.integer({ min: 1, max: 50 }),
      fc.integer({ min: 0, max: 50 }),
      fc.integer({ min: 1, max: 5 }),
      fc.option(fc.integer({ min: 0, max: 60 })),
      (generation, syncedFrame, foldedFrame, remoteGeneration, maxFrameNo) => {
        const known = { generation, syncedFrame, foldedFrame: Math.min(foldedFrame, syncedFrame) }
        const info = { generation: remoteGeneration, databaseId: undefined, ...(maxFrameNo === null ? {} : { maxFrameNo }) }
        const answer = RemoteBinding.headFromInfo(known, info)
        const folded = known.foldedFrame === syncedFrame
        expect(answer !== undefined).toBe(folded && remoteGeneration === generation && maxFrameNo !== null)
        if (answer !== undefined) {
          // What a pull of the folded frame would have said: the remote has it exactly when its
          // generation reaches it (there are no local bytes to compare it with).
          const decided = RemoteBinding.headDecision(known, remoteGeneration, answer)
          expect(Either.isRight(decided)).toBe(maxFrameNo! >= syncedFrame)
        }
      }
    ))
  })
})
