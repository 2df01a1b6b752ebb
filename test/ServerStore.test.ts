import { describe, expect, inject, it } from "@effect/vitest"
import Database from "better-sqlite3"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as TestContext from "effect/TestContext"
import fc from "fast-check"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import { MAX_FRAMES_PER_REQUEST } from "../src/SyncProtocol.js"
import * as WalFrame from "../src/WalFrame.js"
import { freshSchema, suiteDatabase } from "./support/postgres.js"

type Store = ServerStore.Service
type MakeLayer = (options?: ServerStore.Options) => Layer.Layer<ServerStore.ServerStore, ServerStore.StoreError>

// ---------------------------------------------------------------------------------------------
// Real SQLite replicas and helpers

const makeTempDir = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix))

const tempDir: Effect.Effect<string, never, Scope.Scope> = Effect.acquireRelease(
  Effect.sync(() => makeTempDir("server-store-")),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

/**
 * A real SQLite database started from a generation's base, never checkpointed while in use, so its
 * WAL holds exactly the frames a libSQL-style client would push.
 */
interface Replica {
  readonly file: string
  readonly db: Database.Database
  /** Committed frames of its WAL, frame number = index + 1. */
  readonly frames: () => ReadonlyArray<WalFrame.Frame>
  /** TRUNCATE-checkpoints its WAL, as a client does when it moves to the next generation. */
  readonly checkpoint: () => Uint8Array
}

const openReplica = (base: Uint8Array): Effect.Effect<Replica, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const dir = makeTempDir("replica-")
      const file = path.join(dir, "db.sqlite")
      fs.writeFileSync(file, base)
      const db = new Database(file)
      db.pragma("wal_autocheckpoint = 0")
      const replica: Replica = {
        file,
        db,
        frames: () => {
          if (!fs.existsSync(`${file}-wal`)) return []
          return Option.match(WalFrame.parse(new Uint8Array(fs.readFileSync(`${file}-wal`))), {
            onNone: () => [],
            onSome: (wal) => wal.frames.map((f) => ({ ...f, page: f.page.slice() }))
          })
        },
        checkpoint: () => {
          const [row] = db.pragma("wal_checkpoint(TRUNCATE)") as Array<{ busy: number }>
          expect(row.busy).toBe(0)
          return new Uint8Array(fs.readFileSync(file))
        }
      }
      return { replica, dir }
    }),
    ({ dir, replica }) =>
      Effect.sync(() => {
        replica.db.close()
        fs.rmSync(dir, { recursive: true, force: true })
      })
  ).pipe(Effect.map(({ replica }) => replica))

/** Opens a database image in memory (a WAL-mode image must say rollback mode to be deserialized). */
const queryImage = <T>(image: Uint8Array, sql: string): Array<T> => {
  const copy = Buffer.from(image)
  copy[18] = 1
  copy[19] = 1
  const db = new Database(copy)
  try {
    return db.prepare(sql).all() as Array<T>
  } finally {
    db.close()
  }
}

const pullAll = (store: Store, name: string, generation: number, from = 1, window = 128) =>
  Effect.gen(function*() {
    const frames: Array<WalFrame.Frame> = []
    let next = from
    while (true) {
      const result = yield* store.pull(name, generation, next, next + window)
      if (result._tag === "CheckpointNeeded") return { frames, answer: result }
      expect(result.frames.length).toBeGreaterThan(0)
      frames.push(...result.frames)
      next += result.frames.length
    }
  })

/** What a fresh replica of the current generation sees: base plus every committed frame. */
const materialize = (store: Store, name: string) =>
  Effect.gen(function*() {
    const info = yield* store.info(name)
    const base = yield* store.exportGeneration(name, info.generation)
    const { frames } = yield* pullAll(store, name, info.generation)
    expect(frames.length).toBe(info.maxFrameNo)
    return WalFrame.applyFrames(base, frames)
  })

/** A body's bytes, checked against its size. */
const bodyBytes = (body: ServerStore.Body) =>
  Effect.map(Stream.runCollect(body.stream), (chunks) => {
    const bytes = Buffer.concat(Chunk.toReadonlyArray(chunks))
    expect(bytes.byteLength).toBe(body.size)
    return new Uint8Array(bytes)
  })

const rowsOf = (image: Uint8Array) => queryImage<{ id: number; v: string }>(image, "SELECT id, v FROM t ORDER BY id")

/** Pushes frames in chunks, following batons, checking every answer is Ok with end - 1. */
const pushChunks = (
  store: Store,
  name: string,
  generation: number,
  start: number,
  frames: ReadonlyArray<WalFrame.Frame>,
  chunk: number
) =>
  Effect.gen(function*() {
    let baton: string | undefined
    const answers: Array<ServerStore.PushResult> = []
    for (let i = 0; i < frames.length; i += chunk) {
      const part = frames.slice(i, i + chunk)
      const result = yield* store.push(name, generation, start + i, start + i + part.length, part, baton)
      expect(result).toMatchObject({ _tag: "Ok", generation, maxFrameNo: start + i + part.length - 1 })
      answers.push(result)
      baton = result._tag === "Ok" ? result.baton : undefined
    }
    return answers
  })

const failure = <A>(effect: Effect.Effect<A, ServerStore.StoreError>) => Effect.map(Effect.flip(effect), (e) => e.reason)

/** A replica from the database's current base, with a table `t` created and `rows` rows inserted. */
const seeded = (store: Store, name: string, rows = 3) =>
  Effect.gen(function*() {
    const base = yield* store.exportGeneration(name, 1)
    const replica = yield* openReplica(base)
    replica.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    const insert = replica.db.prepare("INSERT INTO t (v) VALUES (?)")
    for (let i = 0; i < rows; i++) insert.run(`row ${i}`)
    return { base, replica }
  })

/** Frames of one transaction inserting `count` rows with a page-sized payload each. */
const bigTransaction = (replica: Replica, count: number, tag: string) => {
  const before = replica.frames().length
  const insert = replica.db.prepare("INSERT INTO t (v) VALUES (? || hex(randomblob(1500)))")
  replica.db.transaction(() => {
    for (let i = 0; i < count; i++) insert.run(`${tag}${i}:`)
  })()
  const all = replica.frames()
  return { start: before + 1, frames: all.slice(before) }
}

/**
 * Frames that are not a SQLite database (for protocol tests with the check off): transactions as lists
 * of page numbers, each page tagged with its pusher (byte 0) and its frame index (bytes 4..7).
 */
const syntheticFrames = (pusher: number, transactions: ReadonlyArray<ReadonlyArray<number>>) => {
  const frames: Array<WalFrame.Frame> = []
  for (const pages of transactions) {
    const size = Math.max(...pages)
    pages.forEach((pgno, i) => {
      const page = new Uint8Array(WalFrame.PAGE_SIZE)
      page[0] = pusher + 1
      new DataView(page.buffer).setUint32(4, frames.length)
      frames.push({ pgno, commitSize: i === pages.length - 1 ? size : 0, page })
    })
  }
  return frames
}

const corruptBtree = (frame: WalFrame.Frame): WalFrame.Frame => {
  const page = frame.page.slice()
  // A leaf page claiming 65535 cells: structurally impossible, the kind of page quick_check exists for.
  const offset = frame.pgno === 1 ? 100 : 0
  page[offset + 3] = 0xff
  page[offset + 4] = 0xff
  return { ...frame, page }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite, run against every layer

/** The idle window of the real-time baton test: far above any stall between two calls on a loaded machine. */
const BATON_IDLE_REAL_MS = 2_000

const conformance = (label: string, makeLayer: MakeLayer) =>
  describe(`ServerStore conformance: ${label}`, () => {
    const withStore = <A, E>(
      options: ServerStore.Options,
      body: (store: Store) => Effect.Effect<A, E, Scope.Scope>
    ): Effect.Effect<A, E | ServerStore.StoreError, Scope.Scope> =>
      Effect.flatMap(ServerStore.ServerStore, body).pipe(Effect.provide(makeLayer(options)))

    it.scoped("creates a database on first use with the empty WAL-mode base", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          expect(yield* store.info("fresh")).toEqual({ generation: 1, maxFrameNo: 0 })
          const base = yield* store.exportGeneration("fresh", 1)
          expect(base.byteLength).toBe(4096)
          expect([base[18], base[19]]).toEqual([2, 2])
          expect(Buffer.from(base.subarray(0, 16)).toString("latin1")).toBe("SQLite format 3\0")
          expect(queryImage(base, "SELECT count(*) AS n FROM sqlite_schema")).toEqual([{ n: 0 }])
          expect(yield* failure(store.exportGeneration("fresh", 2))).toBe("GenerationNotFound")
          expect(yield* failure(store.exportGeneration("fresh", 0))).toBe("GenerationNotFound")
          expect(yield* store.pull("fresh", 1, 1, 10)).toEqual({ _tag: "CheckpointNeeded", generation: 1, maxFrameNo: 0 })
          // Databases are independent.
          expect(yield* store.info("other")).toEqual({ generation: 1, maxFrameNo: 0 })
        })))

    it.scoped("refuses database names that are not [A-Za-z0-9_-]{1,64}", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          for (const name of ["", "../etc", "a/b", "a b", "x".repeat(65), ".", "..", "é", "a\0b"]) {
            expect(yield* failure(store.info(name))).toBe("BadRequest")
            expect(yield* failure(store.exportGeneration(name, 1))).toBe("BadRequest")
            expect(yield* failure(store.pull(name, 1, 1, 2))).toBe("BadRequest")
          }
          expect(yield* store.info("x".repeat(64))).toEqual({ generation: 1, maxFrameNo: 0 })
          expect(yield* store.info("A-z_09")).toEqual({ generation: 1, maxFrameNo: 0 })
        })))

    it.scoped("stores pushed frames and serves them to pulls, byte for byte", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 5)
          const frames = replica.frames()
          expect(frames.length).toBeGreaterThan(2)
          const end = frames.length + 1
          expect(yield* store.push("db", 1, 1, end, frames)).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: end - 1 })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: end - 1 })
          const { answer, frames: pulled } = yield* pullAll(store, "db", 1, 1, 2)
          expect(answer).toEqual({ _tag: "CheckpointNeeded", generation: 1, maxFrameNo: end - 1 })
          expect(pulled.length).toBe(frames.length)
          pulled.forEach((frame, i) => expect(WalFrame.equals(frame, frames[i])).toBe(true))
          // A window past the head is cut at the head; one inside it is honoured.
          const tail = yield* store.pull("db", 1, 2, 1000)
          expect(tail._tag === "Frames" && tail.frames.length).toBe(frames.length - 1)
          const one = yield* store.pull("db", 1, 2, 3)
          expect(one._tag === "Frames" && one.frames.length).toBe(1)
          const image = yield* materialize(store, "db")
          expect(rowsOf(image)).toEqual(replica.db.prepare("SELECT id, v FROM t ORDER BY id").all())
          expect(Buffer.compare(image, replica.checkpoint())).toBe(0)
        })))

    it.scoped("validates pull and push arguments and changes nothing", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db")
          const frames = replica.frames()
          const n = frames.length
          expect(yield* failure(store.pull("db", 1, 0, 5))).toBe("BadRequest")
          expect(yield* failure(store.pull("db", 1, 3, 3))).toBe("BadRequest")
          expect(yield* failure(store.pull("db", 1, 3, 2))).toBe("BadRequest")
          expect(yield* failure(store.pull("db", 1, 1.5, 3))).toBe("BadRequest")
          expect(yield* failure(store.pull("db", 2, 1, 3))).toBe("GenerationNotFound")
          expect(yield* failure(store.pull("db", 0, 1, 3))).toBe("GenerationNotFound")
          expect(yield* failure(store.push("db", 1, 0, n, frames))).toBe("BadRequest")
          expect(yield* failure(store.push("db", 1, 1, 1, []))).toBe("BadRequest")
          expect(yield* failure(store.push("db", 1, 1, n, frames))).toBe("BadRequest")
          expect(yield* failure(store.push("db", 1, 1, n + 2, frames))).toBe("BadRequest")
          const many = Array.from({ length: MAX_FRAMES_PER_REQUEST + 1 }, () => frames[0])
          expect(yield* failure(store.push("db", 1, 1, many.length + 1, many))).toBe("TooLarge")
          expect(yield* failure(store.push("db", 2, 1, n + 1, frames))).toBe("GenerationNotFound")
          expect(yield* failure(store.push("../x", 1, 1, n + 1, frames))).toBe("BadRequest")
          const bad = (f: Partial<WalFrame.Frame>, at: number) => frames.map((frame, i) => (i === at ? { ...frame, ...f } : frame))
          const last = n - 1
          expect(yield* failure(store.push("db", 1, 1, n + 1, bad({ pgno: 0 }, 0)))).toBe("BadFrames")
          expect(yield* failure(store.push("db", 1, 1, n + 1, bad({ page: new Uint8Array(100) }, 0)))).toBe("BadFrames")
          expect(yield* failure(store.push("db", 1, 1, n + 1, bad({ pgno: 50 }, last - 1)))).toBe("BadFrames")
          expect(yield* failure(store.push("db", 1, 1, n + 1, bad({ commitSize: 1 }, last)))).toBe("BadFrames")
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: 0 })
          // And the genuine frames still go through afterwards.
          expect(yield* store.push("db", 1, 1, n + 1, frames)).toMatchObject({ _tag: "Ok", maxFrameNo: n })
        })))

    it.scoped("re-pushing frames it already has is idempotent", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 2)
          const first = replica.frames()
          const n = first.length
          yield* store.push("db", 1, 1, n + 1, first)
          expect(yield* store.push("db", 1, 1, n + 1, first)).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: n })
          expect(yield* store.push("db", 1, 2, n + 1, first.slice(1))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: n })
          expect(yield* store.push("db", 1, 1, 2, first.slice(0, 1))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 1 })
          // Overlap plus new frames: the known ones are compared, the new ones appended.
          replica.db.prepare("INSERT INTO t (v) VALUES ('more')").run()
          const all = replica.frames()
          expect(all.length).toBeGreaterThan(n)
          expect(yield* store.push("db", 1, 2, all.length + 1, all.slice(1))).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: all.length
          })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: all.length })
          expect(rowsOf(yield* materialize(store, "db")).map((r) => r.v)).toEqual(["row 0", "row 1", "more"])
        })))

    it.scoped("answers conflict when a frame at or below the head differs, and keeps the first writer's data", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { base, replica: a } = yield* seeded(store, "db", 2)
          const framesA = a.frames()
          yield* store.push("db", 1, 1, framesA.length + 1, framesA)
          const b = yield* openReplica(base)
          b.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t (v) VALUES ('from b')")
          const framesB = b.frames()
          expect(yield* store.push("db", 1, 1, framesB.length + 1, framesB)).toEqual({
            _tag: "Conflict",
            generation: 1,
            maxFrameNo: framesA.length
          })
          // A push that starts on a differing frame inside the head and runs past it conflicts too.
          bigTransaction(b, 3, "b")
          const moreB = b.frames()
          expect(moreB.length).toBeGreaterThan(framesA.length)
          expect(yield* store.push("db", 1, framesA.length, moreB.length + 1, moreB.slice(framesA.length - 1))).toMatchObject({
            _tag: "Conflict",
            maxFrameNo: framesA.length
          })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: framesA.length })
          expect(rowsOf(yield* materialize(store, "db")).map((r) => r.v)).toEqual(["row 0", "row 1"])
        })))

    it.scoped("answers a gap with the real head and stores nothing", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          const first = replica.frames()
          const n = first.length
          yield* store.push("db", 1, 1, n + 1, first)
          const { frames } = bigTransaction(replica, 5, "g")
          expect(frames.length).toBeGreaterThan(2)
          // Frames n+2.. without n+1: the client is told where the server really is.
          expect(yield* store.push("db", 1, n + 2, n + frames.length + 1, frames.slice(1))).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: n
          })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: n })
          expect(yield* store.push("db", 1, n + 1, n + frames.length + 1, frames)).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: n + frames.length
          })
          // Inside a baton session a gap answers the session's position and keeps the baton.
          const more = bigTransaction(replica, 6, "h")
          const at = n + frames.length + 1
          const r = yield* store.push("db", 1, at, at + 2, more.frames.slice(0, 2))
          const baton = r._tag === "Ok" ? r.baton : undefined
          expect(baton).toBeDefined()
          expect(yield* store.push("db", 1, at + 3, at + 4, more.frames.slice(3, 4), baton)).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: at + 1,
            baton
          })
        })))

    it.scoped("a transaction spanning requests stays invisible until its commit frame, and locks out other pushers", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { base, replica } = yield* seeded(store, "db", 1)
          const setup = replica.frames()
          yield* store.push("db", 1, 1, setup.length + 1, setup)
          const head = setup.length
          const { frames, start } = bigTransaction(replica, 40, "big")
          expect(start).toBe(head + 1)
          expect(frames.length).toBeGreaterThan(30)
          expect(frames.slice(0, -1).every((f) => f.commitSize === 0)).toBe(true)

          let baton: string | undefined
          const chunk = 8
          const parts = Math.ceil(frames.length / chunk)
          for (let p = 0; p < parts - 1; p++) {
            const from = start + p * chunk
            const part = frames.slice(p * chunk, (p + 1) * chunk)
            const r = yield* store.push("db", 1, from, from + part.length, part, baton)
            expect(r._tag).toBe("Ok")
            if (r._tag !== "Ok") return
            expect(r.maxFrameNo).toBe(from + part.length - 1)
            expect(r.baton).toBeDefined()
            if (baton !== undefined) expect(r.baton).toBe(baton)
            baton = r.baton
            // Invisible to pulls and info.
            expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head })
            expect(yield* store.pull("db", 1, head + 1, head + 100)).toEqual({ _tag: "CheckpointNeeded", generation: 1, maxFrameNo: head })
            // Other pushers are held off, unknown batons refused.
            const other = yield* openReplica(base)
            other.db.exec("CREATE TABLE u (x)")
            expect(yield* failure(store.push("db", 1, 1, other.frames().length + 1, other.frames()))).toBe("Busy")
            expect(yield* failure(store.push("db", 1, from, from + part.length, part, "not-a-baton"))).toBe("UnknownBaton")
            // A retry of the same request with the baton is answered the same way.
            expect(yield* store.push("db", 1, from, from + part.length, part, baton)).toEqual(r)
          }
          expect(yield* materialize(store, "db").pipe(Effect.map(rowsOf))).toHaveLength(1)
          const from = start + (parts - 1) * chunk
          const lastPart = frames.slice((parts - 1) * chunk)
          const done = yield* store.push("db", 1, from, from + lastPart.length, lastPart, baton)
          expect(done).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: head + frames.length })
          // A retry of the committing request (its answer was lost) is still answered Ok.
          expect(yield* store.push("db", 1, from, from + lastPart.length, lastPart, baton)).toEqual(done)
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head + frames.length })
          const image = yield* materialize(store, "db")
          expect(rowsOf(image)).toHaveLength(41)
          expect(Buffer.compare(image, replica.checkpoint())).toBe(0)
          // The database is free again.
          const other = yield* openReplica(yield* store.exportGeneration("db", 1))
          other.db.exec("CREATE TABLE u (x)")
          expect(yield* store.push("db", 1, 1, other.frames().length + 1, other.frames())).toMatchObject({ _tag: "Conflict" })
        })))

    it.scoped("a request can commit one transaction and leave the next one pending", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          const first = replica.frames()
          const { frames: big } = bigTransaction(replica, 10, "b")
          const all = [...first, ...big]
          const cut = first.length + 3
          const r1 = yield* store.push("db", 1, 1, cut + 1, all.slice(0, cut))
          expect(r1).toMatchObject({ _tag: "Ok", maxFrameNo: cut })
          expect(r1._tag === "Ok" && r1.baton).toBeTruthy()
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: first.length })
          const r2 = yield* store.push("db", 1, cut + 1, all.length + 1, all.slice(cut), r1._tag === "Ok" ? r1.baton : undefined)
          expect(r2).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: all.length })
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(11)
        })))

    it.scoped("transactions spanning requests, one after another, from one reused request buffer: stored byte for byte", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          // Each request's pages are views into one buffer, overwritten by the next request (as the
          // server reads bodies): what the store keeps of a pending request must be its own copy, and
          // buffers it reuses from a finished transaction must not reach the frames of a live one.
          const buffer = new Uint8Array(64 * WalFrame.PAGE_SIZE)
          const send = (start: number, part: ReadonlyArray<WalFrame.Frame>, baton: string | undefined) => {
            const views = part.map((frame, i) => {
              const page = buffer.subarray(i * WalFrame.PAGE_SIZE, (i + 1) * WalFrame.PAGE_SIZE)
              page.set(frame.page)
              return { ...frame, page }
            })
            return Effect.ensuring(
              store.push("db", 1, start, start + part.length, views, baton),
              Effect.sync(() => buffer.fill(0xa5))
            )
          }
          const pushed: Array<WalFrame.Frame> = []
          let next = 1
          for (const [round, chunk] of [[0, 40], [1, 7], [2, 64], [3, 33]] as const) {
            const first = round === 0 ? replica.frames() : []
            const { frames } = bigTransaction(replica, 60 + 20 * round, `r${round}-`)
            const all = [...first, ...frames]
            let baton: string | undefined
            for (let i = 0; i < all.length; i += chunk) {
              const part = all.slice(i, i + chunk)
              const result = yield* send(next + i, part, baton)
              expect(result).toMatchObject({ _tag: "Ok", maxFrameNo: next + i + part.length - 1 })
              baton = result._tag === "Ok" ? result.baton : undefined
            }
            expect(baton).toBeUndefined()
            pushed.push(...all)
            next += all.length
            expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: pushed.length })
          }
          const { frames: pulled } = yield* pullAll(store, "db", 1)
          expect(pulled.length).toBe(pushed.length)
          for (let i = 0; i < pushed.length; i++) expect(WalFrame.equals(pulled[i], pushed[i])).toBe(true)
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(1 + 60 + 80 + 100 + 120)
        })))

    it.scoped("requests and answers are capped at MAX_FRAMES_PER_REQUEST; pending transactions at maxPendingFrames", () =>
      withStore({ maxPendingFrames: 1100 }, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          const { frames: big } = bigTransaction(replica, 1100, "c")
          const all = replica.frames()
          expect(all.length).toBeGreaterThan(MAX_FRAMES_PER_REQUEST + 10)
          const answers = yield* pushChunks(store, "db", 1, 1, all, MAX_FRAMES_PER_REQUEST)
          expect(answers[0]._tag === "Ok" && answers[0].baton).toBeTruthy()
          const pulled = yield* store.pull("db", 1, 1, 100_000)
          expect(pulled._tag === "Frames" && pulled.frames.length).toBe(MAX_FRAMES_PER_REQUEST)
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(1101)
          // An unfinished transaction may not grow past the limit.
          const { frames: huge, start } = bigTransaction(replica, 1200, "d")
          const r = yield* store.push("db", 1, start, start + 1000, huge.slice(0, 1000))
          const baton = r._tag === "Ok" ? r.baton : undefined
          expect(baton).toBeDefined()
          expect(yield* failure(store.push("db", 1, start + 1000, start + 1200, huge.slice(1000, 1200), baton))).toBe("TooLarge")
          expect(big.length).toBeGreaterThan(0)
        })))

    it.scoped("an idle baton expires: its frames are dropped and the database released", () =>
      withStore({ batonIdleMs: 1000 }, (store) =>
        Effect.gen(function*() {
          const { base, replica } = yield* seeded(store, "db", 1)
          const setup = replica.frames()
          yield* store.push("db", 1, 1, setup.length + 1, setup)
          const head = setup.length
          const { frames } = bigTransaction(replica, 10, "x")
          const r = yield* store.push("db", 1, head + 1, head + 5, frames.slice(0, 4))
          const baton = r._tag === "Ok" ? r.baton : undefined
          expect(baton).toBeDefined()
          yield* TestClock.adjust(Duration.millis(900))
          // Still alive: using it keeps it alive.
          expect(yield* store.push("db", 1, head + 5, head + 7, frames.slice(4, 6), baton)).toMatchObject({ _tag: "Ok", baton })
          yield* TestClock.adjust(Duration.millis(900))
          const other = yield* openReplica(base)
          other.db.exec("CREATE TABLE u (x)")
          expect(yield* failure(store.push("db", 1, 1, other.frames().length + 1, other.frames()))).toBe("Busy")
          yield* TestClock.adjust(Duration.millis(200))
          expect(yield* failure(store.push("db", 1, head + 7, head + 9, frames.slice(6, 8), baton))).toBe("UnknownBaton")
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head })
          // The transaction can be pushed again from its start, without the dead baton.
          const again = yield* pushChunks(store, "db", 1, head + 1, frames, 4)
          expect(again[again.length - 1]).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: head + frames.length })
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(11)
        })))

    // The idle window is long enough that the checks inside it hold on a loaded machine (a 50 ms window
    // passed between two pushes at load 24); the sleep after it is longer than the window, and a sleep is
    // never shorter than asked, so the expiry check holds however slow the machine is.
    it.live("baton expiry with real time", () =>
      withStore({ batonIdleMs: BATON_IDLE_REAL_MS }, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          const setup = replica.frames()
          yield* store.push("db", 1, 1, setup.length + 1, setup)
          const { frames, start } = bigTransaction(replica, 5, "y")
          const r = yield* store.push("db", 1, start, start + 2, frames.slice(0, 2))
          expect(r._tag === "Ok" && r.baton).toBeTruthy()
          // The same request again is its owner's retry (answered with the baton); anything else is Busy.
          expect(yield* store.push("db", 1, start, start + 2, frames.slice(0, 2))).toEqual(r)
          const other = frames.slice(0, 2).map((f) => ({ ...f, page: f.page.map((b) => b ^ 1) }))
          expect(yield* failure(store.push("db", 1, start, start + 2, other))).toBe("Busy")
          yield* Effect.sleep(Duration.millis(BATON_IDLE_REAL_MS + 100))
          expect(yield* store.push("db", 1, start, start + frames.length, frames)).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: start + frames.length - 1
          })
        })).pipe(Effect.scoped))

    it.scoped("refuses a commit that would leave a malformed database, and stores nothing", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 3)
          const good = replica.frames()
          yield* store.push("db", 1, 1, good.length + 1, good)
          replica.db.prepare("INSERT INTO t (v) VALUES ('next')").run()
          const next = replica.frames().slice(good.length)
          const head = good.length
          // Corrupt the last copy of a b-tree page in the transaction (that is the one that counts).
          const corrupted = next.map((f, i) => (i === next.length - 1 ? corruptBtree(f) : f))
          expect(yield* failure(store.push("db", 1, head + 1, head + next.length + 1, corrupted))).toBe("Malformed")
          // A page 1 that leaves WAL mode is refused as well.
          const page1 = good.findIndex((f) => f.pgno === 1)
          expect(page1).toBeGreaterThanOrEqual(0)
          const leaveWal = next.length > 0
            ? [{ pgno: 1, commitSize: 0, page: (() => {
              const p = good[page1].page.slice()
              p[18] = 1
              p[19] = 1
              return p
            })() }, ...next]
            : []
          expect(yield* failure(store.push("db", 1, head + 1, head + leaveWal.length + 1, leaveWal))).toBe("Malformed")
          // Garbage in a brand-new page the transaction claims.
          const garbage = { pgno: 2, commitSize: 2, page: new Uint8Array(4096).fill(0x41) }
          expect(yield* failure(store.push("db", 1, head + 1, head + 2, [garbage]))).toBe("Malformed")
          // A commit size far beyond what the transaction writes (SQLite would call it corrupt) is refused
          // before anything that size is allocated.
          const forged = next.map((f, i) => (i === next.length - 1 ? { ...f, commitSize: 0xffff_fff0 } : f))
          expect(yield* failure(store.push("db", 1, head + 1, head + next.length + 1, forged))).toBe("Malformed")
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head })
          expect(yield* store.pull("db", 1, head + 1, head + 10)).toMatchObject({ _tag: "CheckpointNeeded", maxFrameNo: head })
          // The refused transaction left no trace: the genuine one is accepted.
          expect(yield* store.push("db", 1, head + 1, head + next.length + 1, next)).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: head + next.length
          })
          expect(rowsOf(yield* materialize(store, "db")).map((r) => r.v)).toEqual(["row 0", "row 1", "row 2", "next"])
        })))

    it.scoped("a push that names another database is a conflict and stores nothing; one that names this one is stored", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 3)
          const good = replica.frames()
          yield* store.push("db", 1, 1, good.length + 1, good)
          const id = yield* store.databaseId("db")
          expect(id).toBeDefined()
          replica.db.prepare("INSERT INTO t (v) VALUES ('next')").run()
          const next = replica.frames().slice(good.length)
          const head = good.length
          expect(yield* store.push("db", 1, head + 1, head + next.length + 1, next, undefined, { databaseId: "another" }))
            .toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: head })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head })
          // From the head frame, sent again byte for byte, and naming this database: stored.
          expect(
            yield* store.push("db", 1, head, head + next.length + 1, [good[head - 1], ...next], undefined, { databaseId: id })
          ).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: head + next.length })
          expect(rowsOf(yield* materialize(store, "db")).map((r) => r.v)).toEqual(["row 0", "row 1", "row 2", "next"])
          // A head frame that differs (another history at the same length): a conflict, nothing stored.
          replica.db.prepare("INSERT INTO t (v) VALUES ('later')").run()
          const later = replica.frames().slice(good.length + next.length)
          const otherHead = corruptBtree(next[next.length - 1])
          const at = head + next.length
          expect(yield* store.push("db", 1, at, at + later.length + 1, [otherHead, ...later], undefined, { databaseId: id }))
            .toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: at })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: at })
          // Starting after the head, naming the database: the frame it builds on is not here, a conflict.
          expect(yield* store.push("db", 1, at + 1, at + later.length + 1, later, undefined, { databaseId: id }))
            .toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: at })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: at })
          // Without a name, the same push is an ordinary one.
          expect(yield* store.push("db", 1, at + 1, at + later.length + 1, later))
            .toEqual({ _tag: "Ok", generation: 1, maxFrameNo: at + later.length })
        })))

    it.scoped("refuses a malformed commit to a database of more than 1 MiB too (checked off the request's thread)", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          const setup = replica.frames()
          yield* store.push("db", 1, 1, setup.length + 1, setup)
          // About 1.5 MB of rows.
          const { frames, start } = bigTransaction(replica, 400, "big")
          yield* pushChunks(store, "db", 1, start, frames, MAX_FRAMES_PER_REQUEST)
          const head = start + frames.length - 1
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head })
          replica.db.prepare("INSERT INTO t (v) VALUES ('next')").run()
          const next = replica.frames().slice(head)
          const corrupted = next.map((f, i) => (i === next.length - 1 ? corruptBtree(f) : f))
          expect(yield* failure(store.push("db", 1, head + 1, head + next.length + 1, corrupted))).toBe("Malformed")
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head })
          expect(yield* store.push("db", 1, head + 1, head + next.length + 1, next)).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: head + next.length
          })
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(402)
        })))

    it.scoped("a pusher whose acknowledged pending frames were lost cannot continue on someone else's frames", () =>
      withStore({ integrityCheck: "off", batonIdleMs: 1000 }, (store) =>
        Effect.gen(function*() {
          // A: one transaction of 6 frames; B: transactions of 2 frames each.
          const a = syntheticFrames(0, [[1, 2, 3, 1, 2, 3]])
          const b = syntheticFrames(1, [[1, 2], [1, 2], [1, 2]])
          const r1 = yield* store.push("db", 1, 1, 5, a.slice(0, 4))
          expect(r1).toMatchObject({ _tag: "Ok", maxFrameNo: 4 })
          // A vanishes; its session expires; B commits exactly up to A's acknowledged frame 4.
          yield* TestClock.adjust(Duration.millis(1500))
          expect(yield* store.push("db", 1, 1, 5, b.slice(0, 4))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 4 })
          // A comes back without its baton and continues at 5: it is asked for frame 4 again...
          expect(yield* store.push("db", 1, 5, 7, a.slice(4, 6))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 3 })
          // ...which is its pending frame, not B's commit frame: a conflict, and B's data stays alone.
          expect(yield* store.push("db", 1, 4, 7, a.slice(3, 6))).toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: 4 })
          // A newcomer at 5 (B itself here) is asked the same, has frame 4, and goes on.
          expect(yield* store.push("db", 1, 5, 7, b.slice(4, 6))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 3 })
          expect(yield* store.push("db", 1, 4, 7, b.slice(3, 6))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 6 })
          const { frames } = yield* pullAll(store, "db", 1)
          expect(frames.map((f) => f.page[0])).toEqual([2, 2, 2, 2, 2, 2])
          // Past the acknowledged frames nothing is asked again.
          const c = syntheticFrames(1, [[1, 2], [1, 2], [1, 2], [1, 2]])
          expect(yield* store.push("db", 1, 7, 9, c.slice(6, 8))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 8 })
        })))

    it.scoped("a pusher that lost its session and comes back past the head is not let to resend from the middle of its transaction", () =>
      withStore({ integrityCheck: "off", batonIdleMs: 1000 }, (store) =>
        Effect.gen(function*() {
          // The two-pusher property's counterexample (seed 1659308816). A: a 3-frame transaction, then two
          // 1-frame ones; B: 1-frame transactions.
          const a = syntheticFrames(0, [[1, 1, 1], [1], [1]])
          const b = syntheticFrames(1, [[1], [1]])
          expect(yield* store.push("db", 1, 1, 3, a.slice(0, 2))).toMatchObject({ _tag: "Ok", maxFrameNo: 2 })
          yield* TestClock.adjust(Duration.millis(1500))
          // B commits one frame, short of A's acknowledged frame 2.
          expect(yield* store.push("db", 1, 1, 2, b.slice(0, 1))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 1 })
          // A comes back after frame 2. Told "head is 1" it would resend a2, a3, ... on top of b1: instead it
          // is asked for frame 1, which it has and B does not share: a conflict, and b1 stays alone.
          expect(yield* store.push("db", 1, 3, 6, a.slice(2, 5))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 0 })
          expect(yield* store.push("db", 1, 1, 6, a.slice(0, 5))).toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: 1 })
          const { frames } = yield* pullAll(store, "db", 1)
          expect(frames.map((f) => f.page[0])).toEqual([2])
          // Had nobody committed, it is asked for the head frame it built on, has it, and its whole
          // transaction goes in after it.
          const c = syntheticFrames(0, [[1], [1, 1, 1]])
          expect(yield* store.push("db2", 1, 1, 2, c.slice(0, 1))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 1 })
          expect(yield* store.push("db2", 1, 2, 4, c.slice(1, 3))).toMatchObject({ _tag: "Ok", maxFrameNo: 3 })
          yield* TestClock.adjust(Duration.millis(1500))
          expect(yield* store.push("db2", 1, 4, 5, c.slice(3, 4))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 0 })
          expect(yield* store.push("db2", 1, 1, 5, c)).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 4 })
          const { frames: all } = yield* pullAll(store, "db2", 1)
          expect(all.every((f, i) => WalFrame.equals(f, c[i]))).toBe(true)
        })))

    it.scoped("a malformed commit at the end of a baton session ends the session", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          const setup = replica.frames()
          yield* store.push("db", 1, 1, setup.length + 1, setup)
          const head = setup.length
          const { frames } = bigTransaction(replica, 6, "m")
          const r = yield* store.push("db", 1, head + 1, head + 3, frames.slice(0, 2))
          const baton = r._tag === "Ok" ? r.baton : undefined
          const rest = frames.slice(2)
          const bad = rest.map((f, i) => (i === rest.length - 1 ? corruptBtree(f) : f))
          expect(yield* failure(store.push("db", 1, head + 3, head + frames.length + 1, bad, baton))).toBe("Malformed")
          expect(yield* failure(store.push("db", 1, head + 3, head + frames.length + 1, rest, baton))).toBe("UnknownBaton")
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: head })
          yield* pushChunks(store, "db", 1, head + 1, frames, 3)
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(7)
        })))

    it.scoped("rolls to a new generation whose base is byte-identical to a replica's TRUNCATE checkpoint", () =>
      withStore({ generationFrames: 6 }, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 2)
          const first = replica.frames()
          expect(first.length).toBeLessThanOrEqual(6)
          yield* store.push("db", 1, 1, first.length + 1, first)
          expect((yield* store.info("db")).generation).toBe(1)
          const { frames, start } = bigTransaction(replica, 6, "r")
          // A push that is not committed does not roll, even past the threshold.
          const r1 = yield* store.push("db", 1, start, start + 5, frames.slice(0, 5))
          expect(r1._tag === "Ok" && r1.baton).toBeTruthy()
          expect((yield* store.info("db")).generation).toBe(1)
          // The committing push answers with the URL's generation, then the store has rolled.
          const r2 = yield* store.push("db", 1, start + 5, start + frames.length, frames.slice(5), r1._tag === "Ok" ? r1.baton : undefined)
          const last1 = start + frames.length - 1
          expect(r2).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: last1 })
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
          const base1 = yield* store.exportGeneration("db", 1)
          const { frames: all1, answer } = yield* pullAll(store, "db", 1)
          expect(all1.length).toBe(last1)
          expect(answer).toEqual({ _tag: "CheckpointNeeded", generation: 2, maxFrameNo: 0 })
          const base2 = yield* store.exportGeneration("db", 2)
          expect(Buffer.compare(base2, WalFrame.applyFrames(base1, all1))).toBe(0)
          expect(Buffer.compare(base2, replica.checkpoint())).toBe(0)
          expect([base2[18], base2[19]]).toEqual([2, 2])
          // Pushing to the old generation is a conflict naming its last frame.
          expect(yield* store.push("db", 1, 1, first.length + 1, first)).toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: last1 })
          // The replica continues in generation 2 from frame 1.
          replica.db.prepare("INSERT INTO t (v) VALUES ('gen2')").run()
          const g2 = replica.frames()
          expect(yield* store.push("db", 2, 1, g2.length + 1, g2)).toEqual({ _tag: "Ok", generation: 2, maxFrameNo: g2.length })
          expect(yield* store.pull("db", 2, g2.length + 1, g2.length + 10)).toEqual({
            _tag: "CheckpointNeeded",
            generation: 2,
            maxFrameNo: g2.length
          })
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(9)
          expect(yield* failure(store.exportGeneration("db", 3))).toBe("GenerationNotFound")
        })))

    it.scoped("keepGenerations drops old generations: they answer GenerationGone", () =>
      withStore({ generationFrames: 1, keepGenerations: 1 }, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 1)
          const lastFrames: Array<number> = []
          let generation = 1
          let frames = replica.frames()
          for (let round = 0; round < 3; round++) {
            yield* store.push("db", generation, 1, frames.length + 1, frames)
            lastFrames.push(frames.length)
            expect((yield* store.info("db")).generation).toBe(generation + 1)
            const base = replica.checkpoint()
            expect(Buffer.compare(base, yield* store.exportGeneration("db", generation + 1))).toBe(0)
            generation++
            // Two commits, so the generation goes past one frame.
            replica.db.prepare("INSERT INTO t (v) VALUES (?)").run(`g${generation}`)
            replica.db.prepare("INSERT INTO t (v) VALUES (?)").run(`g${generation}b`)
            frames = replica.frames()
            expect(frames.length).toBeGreaterThan(1)
          }
          // Current is 4; with one old generation kept, 3 stays, 1 and 2 are gone.
          expect(yield* store.info("db")).toEqual({ generation: 4, maxFrameNo: 0 })
          expect(yield* failure(store.exportGeneration("db", 1))).toBe("GenerationGone")
          expect(yield* failure(store.exportGeneration("db", 2))).toBe("GenerationGone")
          expect(yield* failure(store.pull("db", 2, 1, 10))).toBe("GenerationGone")
          expect((yield* store.exportGeneration("db", 3)).byteLength).toBeGreaterThan(0)
          expect((yield* store.pull("db", 3, 1, 10))._tag).toBe("Frames")
          expect(yield* store.pull("db", 3, lastFrames[2] + 1, 100)).toEqual({ _tag: "CheckpointNeeded", generation: 4, maxFrameNo: 0 })
          // A push to a dropped generation is still a conflict, as for any old generation.
          expect(yield* store.push("db", 2, 1, frames.length + 1, frames)).toEqual({ _tag: "Conflict", generation: 2, maxFrameNo: lastFrames[1] })
        })))

    it.scoped("a snapshot is the current generation at its head, byte for byte, and a replica pulls on after it", () =>
      withStore({ generationFrames: 12 }, (store) =>
        Effect.gen(function*() {
          // A new database: the snapshot is the base at frame 0.
          const empty = yield* Effect.scoped(store.snapshot("db"))
          expect({ generation: empty.generation, frameNo: empty.frameNo }).toEqual({ generation: 1, frameNo: 0 })
          const base1 = yield* store.exportGeneration("db", 1)
          expect(Buffer.compare(yield* Effect.scoped(Effect.flatMap(store.snapshot("db"), (s) => bodyBytes(s.body))), base1)).toBe(0)

          const { replica } = yield* seeded(store, "db", 3)
          const first = replica.frames()
          yield* store.push("db", 1, 1, first.length + 1, first)
          // A body opened now keeps reading this state whatever happens next.
          const scope = yield* Scope.make()
          const held = yield* Scope.extend(store.snapshot("db"), scope)
          expect({ generation: held.generation, frameNo: held.frameNo }).toEqual({ generation: 1, frameNo: first.length })
          const atFirst = yield* materialize(store, "db")
          expect(held.body.size).toBe(atFirst.byteLength)

          const more = bigTransaction(replica, 2, "s")
          yield* store.push("db", 1, more.start, more.start + more.frames.length, more.frames)
          const head = first.length + more.frames.length
          const snap = yield* Effect.scoped(Effect.flatMap(store.snapshot("db"), (s) =>
            Effect.map(bodyBytes(s.body), (bytes) => ({ generation: s.generation, frameNo: s.frameNo, bytes }))))
          expect({ generation: snap.generation, frameNo: snap.frameNo }).toEqual({ generation: 1, frameNo: head })
          expect(Buffer.compare(snap.bytes, yield* materialize(store, "db"))).toBe(0)
          expect(Buffer.compare(yield* bodyBytes(held.body), atFirst)).toBe(0)
          yield* Scope.close(scope, Exit.void)

          // A replica bootstrapped from the snapshot continues with the frames after it.
          const fromSnapshot = yield* openReplica(snap.bytes)
          fromSnapshot.db.prepare("INSERT INTO t (v) VALUES ('after the snapshot')").run()
          const next = fromSnapshot.frames()
          expect(yield* store.push("db", 1, head + 1, head + next.length + 1, next)).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: head + next.length
          })
          const latest = yield* Effect.scoped(Effect.flatMap(store.snapshot("db"), (s) => bodyBytes(s.body)))
          expect(Buffer.compare(latest, fromSnapshot.checkpoint())).toBe(0)
          expect(rowsOf(latest).map((r) => r.v).at(-1)).toBe("after the snapshot")

          // After a roll, the snapshot belongs to the new generation (the replica's WAL restarted at its
          // checkpoint above, so its frames now follow frame head + next.length).
          const pushed = head + next.length
          const rolling = bigTransaction(fromSnapshot, 12, "roll").frames
          yield* pushChunks(store, "db", 1, pushed + 1, rolling, 5)
          const rolled = yield* Effect.scoped(Effect.flatMap(store.snapshot("db"), (s) =>
            Effect.map(bodyBytes(s.body), (bytes) => ({ generation: s.generation, frameNo: s.frameNo, bytes }))))
          expect({ generation: rolled.generation, frameNo: rolled.frameNo }).toEqual({ generation: 2, frameNo: 0 })
          expect(Buffer.compare(rolled.bytes, fromSnapshot.checkpoint())).toBe(0)
        })))

    it.scoped("openExport streams a generation's base; a body opened before a drop keeps reading it", () =>
      withStore({ generationFrames: 1, keepGenerations: 0 }, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 2)
          const base1 = yield* store.exportGeneration("db", 1)
          const scope = yield* Scope.make()
          const held = yield* Scope.extend(store.openExport("db", 1), scope)
          expect(held.size).toBe(base1.byteLength)
          const frames = replica.frames()
          yield* store.push("db", 1, 1, frames.length + 1, frames)
          // Rolled to 2 and, with the push that rolls it to 3, generation 1 is dropped.
          const base2 = replica.checkpoint()
          expect(Buffer.compare(yield* Effect.scoped(Effect.flatMap(store.openExport("db", 2), bodyBytes)), base2)).toBe(0)
          replica.db.prepare("INSERT INTO t (v) VALUES ('g2')").run()
          replica.db.prepare("INSERT INTO t (v) VALUES ('g2b')").run()
          replica.db.prepare("INSERT INTO t (v) VALUES ('g2c')").run()
          replica.db.prepare("INSERT INTO t (v) VALUES ('g2d')").run()
          const g2 = replica.frames()
          yield* store.push("db", 2, 1, g2.length + 1, g2)
          expect((yield* store.info("db")).generation).toBe(3)
          expect(yield* failure(Effect.scoped(store.openExport("db", 1)))).toBe("GenerationGone")
          expect(Buffer.compare(yield* bodyBytes(held), base1)).toBe(0)
          yield* Scope.close(scope, Exit.void)
          // A big base streams in several chunks and arrives whole.
          const big = yield* Effect.scoped(Effect.flatMap(store.openExport("db", 3), (body) =>
            Effect.map(Stream.runCollect(body.stream), (chunks) => ({ size: body.size, chunks: Chunk.toReadonlyArray(chunks) }))))
          expect(big.chunks.reduce((n, c) => n + c.byteLength, 0)).toBe(big.size)
        })))

    it.scoped("pull answers carry up to maxPullFrames frames (1024 by default)", () =>
      Effect.gen(function*() {
        const frames = syntheticFrames(0, [Array.from({ length: 1500 }, (_, i) => i + 1)])
        const fill = (store: Store) =>
          Effect.gen(function*() {
            let baton: string | undefined
            for (let at = 0; at < frames.length; at += 1000) {
              const part = frames.slice(at, at + 1000)
              const r = yield* store.push("db", 1, at + 1, at + part.length + 1, part, baton)
              baton = r._tag === "Ok" ? r.baton : undefined
            }
            expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: 1500 })
          })
        const count = (r: ServerStore.PullResult) => (r._tag === "Frames" ? r.frames.length : -1)
        // One generation throughout: 1500 frames would roll by the default rule.
        yield* withStore({ integrityCheck: "off", generationGrowth: "never" }, (store) =>
          Effect.gen(function*() {
            expect(store.maxPullFrames).toBe(1024)
            yield* fill(store)
            expect(count(yield* store.pull("db", 1, 1, 5000))).toBe(1024)
          }))
        yield* withStore({ integrityCheck: "off", generationGrowth: "never", maxPullFrames: 4096 }, (store) =>
          Effect.gen(function*() {
            expect(store.maxPullFrames).toBe(4096)
            yield* fill(store)
            const all = yield* store.pull("db", 1, 1, 5000)
            expect(count(all)).toBe(1500)
            if (all._tag === "Frames") all.frames.forEach((f, i) => expect(WalFrame.equals(f, frames[i])).toBe(true))
            expect(count(yield* store.pull("db", 1, 2, 100))).toBe(98)
          }))
        const refused = yield* Effect.exit(withStore({ maxPullFrames: 16_385 }, (store) => store.info("db")))
        expect(Exit.isFailure(refused) && Cause.isDie(refused.cause)).toBe(true)
      }))

    it.scoped("by default a generation rolls once its frames outgrow its base and the minimum, into a byte-identical base", () =>
      withStore({ integrityCheck: "off", generationMinFrames: 8 }, (store) =>
        Effect.gen(function*() {
          // Generation 1's base is one page: the minimum decides. Frames 1..8 stay, the commit past 8 rolls.
          const g1 = syntheticFrames(0, [[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]])
          yield* store.push("db", 1, 1, 9, g1.slice(0, 8))
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: 8 })
          yield* store.push("db", 1, 9, 21, g1.slice(8))
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
          const base2 = yield* store.exportGeneration("db", 2)
          expect(base2.byteLength).toBe(16 * WalFrame.PAGE_SIZE)
          expect(Buffer.compare(base2, WalFrame.applyFrames(yield* store.exportGeneration("db", 1), g1))).toBe(0)
          // Generation 2's base is 16 pages: now the frames must pass 16 (growth factor 1).
          const g2 = syntheticFrames(1, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4], [1]])
          yield* store.push("db", 2, 1, 17, g2.slice(0, 16))
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 16 })
          yield* store.push("db", 2, 17, 18, g2.slice(16))
          expect(yield* store.info("db")).toEqual({ generation: 3, maxFrameNo: 0 })
        })))

    it.scoped("generationGrowth scales the rule, and 'never' keeps one generation", () =>
      Effect.gen(function*() {
        const frames = syntheticFrames(0, Array.from({ length: 40 }, () => [1, 2]))
        yield* withStore({ integrityCheck: "off", generationMinFrames: 0, generationGrowth: "never" }, (store) =>
          Effect.gen(function*() {
            yield* store.push("db", 1, 1, 81, frames)
            expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: 80 })
          }))
        yield* withStore({ integrityCheck: "off", generationMinFrames: 0, generationGrowth: 10 }, (store) =>
          Effect.gen(function*() {
            // A base of one page and a factor of 10: the commit that passes 10 frames rolls.
            yield* store.push("db", 1, 1, 11, frames.slice(0, 10))
            expect((yield* store.info("db")).generation).toBe(1)
            yield* store.push("db", 1, 11, 13, frames.slice(10, 12))
            expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
          }))
        for (const bad of [0, -1, Number.NaN]) {
          const exit = yield* Effect.exit(withStore({ generationGrowth: bad }, (store) => store.info("db")))
          expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
        }
      }))

    it.scoped("retention: an old generation goes once it is past the count and was superseded longer ago than the time", () =>
      Effect.gen(function*() {
        // Rolls at every commit of more than one frame; each push is two one-frame transactions.
        const rollOnce = (store: Store, generation: number) =>
          Effect.gen(function*() {
            yield* store.push("db", generation, 1, 3, syntheticFrames(generation, [[1], [1]]))
            expect((yield* store.info("db")).generation).toBe(generation + 1)
          })
        const kept = (store: Store, upTo: number) =>
          Effect.forEach(Array.from({ length: upTo }, (_, i) => i + 1), (g) =>
            Effect.map(Effect.either(store.exportGeneration("db", g)), (e) => e._tag === "Right"))

        // Both rules (the defaults are 2 generations and one hour; see ServerCore.test.ts), here with a
        // minute so the test clock does not have to run the store's timers through hours.
        yield* withStore({ integrityCheck: "off", generationFrames: 1, keepGenerations: 2, keepGenerationsMs: 60_000 }, (store) =>
          Effect.gen(function*() {
            for (let g = 1; g <= 4; g++) {
              yield* rollOnce(store, g)
              yield* TestClock.adjust(Duration.seconds(5))
            }
            expect(yield* kept(store, 5)).toEqual([true, true, true, true, true])
            yield* TestClock.adjust(Duration.minutes(2))
            yield* rollOnce(store, 5)
            // Current 6: 4 and 5 are the two before it; 1..3 were superseded minutes ago.
            expect(yield* kept(store, 6)).toEqual([false, false, false, true, true, true])
            expect(yield* failure(store.pull("db", 2, 1, 10))).toBe("GenerationGone")
          }))
        // Time only: everything superseded within the last minute stays, whatever the count.
        yield* withStore({ integrityCheck: "off", generationFrames: 1, keepGenerationsMs: 60_000 }, (store) =>
          Effect.gen(function*() {
            yield* rollOnce(store, 1)
            yield* TestClock.adjust(Duration.minutes(2))
            for (let g = 2; g <= 4; g++) yield* rollOnce(store, g)
            expect(yield* kept(store, 5)).toEqual([false, true, true, true, true])
          }))
        // Count only (time left out): exactly the count, at once.
        yield* withStore({ integrityCheck: "off", generationFrames: 1, keepGenerations: 1 }, (store) =>
          Effect.gen(function*() {
            for (let g = 1; g <= 3; g++) yield* rollOnce(store, g)
            expect(yield* kept(store, 4)).toEqual([false, false, true, true])
          }))
      }))

    it.scoped("a push that continues right after an old generation's last frame goes on in the next ones (the roll trap)", () =>
      withStore({ generationFrames: 6 }, (store) =>
        Effect.gen(function*() {
          // A pushes generation 1 past the threshold: its own push rolls the store to 2.
          const { base, replica: a } = yield* seeded(store, "db", 2)
          bigTransaction(a, 4, "a")
          const g1 = a.frames()
          expect(g1.length).toBeGreaterThan(6)
          const last1 = g1.length
          yield* store.push("db", 1, 1, last1 + 1, g1)
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })

          // A does not know: it writes on and pushes to generation 1 after its last frame.
          a.db.prepare("INSERT INTO t (v) VALUES ('after the roll')").run()
          const more = a.frames().slice(last1)
          expect(yield* store.push("db", 1, last1 + 1, last1 + more.length + 1, more)).toEqual({
            _tag: "Ok",
            generation: 1,
            maxFrameNo: last1 + more.length
          })
          // Stored as frames 1.. of generation 2, whose base is generation 1 with all its frames.
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: more.length })
          const g2 = (yield* pullAll(store, "db", 2)).frames
          g2.forEach((f, i) => expect(WalFrame.equals(f, more[i])).toBe(true))
          // A re-push (its answer was lost) is idempotent in generation 1's numbering too.
          expect(yield* store.push("db", 1, last1 + 1, last1 + more.length + 1, more)).toMatchObject({
            _tag: "Ok",
            maxFrameNo: last1 + more.length
          })

          // A keeps going in generation 1's numbering, with a transaction over several requests, past
          // another roll (generation 2 outgrows 6 frames): its frames land in generation 3.
          const big = bigTransaction(a, 8, "b")
          const answers = yield* pushChunks(store, "db", 1, big.start, big.frames, 3)
          expect(answers.at(-1)).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: big.start + big.frames.length - 1 })
          expect((yield* store.info("db")).generation).toBe(3)
          a.db.prepare("INSERT INTO t (v) VALUES ('in generation 3')").run()
          const tail = a.frames().slice(big.start + big.frames.length - 1)
          const at = big.start + big.frames.length
          expect(yield* store.push("db", 1, at, at + tail.length, tail)).toMatchObject({ _tag: "Ok", generation: 1 })
          expect(yield* store.info("db")).toEqual({ generation: 3, maxFrameNo: tail.length })
          const image = yield* materialize(store, "db")
          expect(Buffer.compare(image, a.checkpoint())).toBe(0)
          expect(rowsOf(image).map((r) => r.v).slice(-1)).toEqual(["in generation 3"])

          // B, who wrote on generation 1 without having all of it, still conflicts.
          const b = yield* openReplica(base)
          b.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t (v) VALUES ('b')")
          const fromB = b.frames()
          expect(yield* store.push("db", 1, 1, fromB.length + 1, fromB)).toMatchObject({ _tag: "Conflict", generation: 1 })
          // C held all of generation 1 but wrote something else than A after it: conflict with A's frames,
          // answered in generation 1's numbering.
          const c = yield* openReplica(WalFrame.applyFrames(base, g1))
          c.db.prepare("INSERT INTO t (v) VALUES ('c')").run()
          const fromC = c.frames()
          const answer = yield* store.push("db", 1, last1 + 1, last1 + fromC.length + 1, fromC)
          expect(answer._tag).toBe("Conflict")
          expect(answer.generation).toBe(1)
          expect(Buffer.compare(yield* materialize(store, "db"), image)).toBe(0)
        })))

    it.scoped("no roll while a pusher that lost its session holds acknowledged frames at or past the head", () =>
      withStore({ integrityCheck: "off", generationFrames: 3, batonIdleMs: 1000 }, (store) =>
        Effect.gen(function*() {
          const a = syntheticFrames(0, [[1, 2], [1, 2, 3, 4]])
          const b = syntheticFrames(1, [[1, 2], [1, 2]])
          yield* store.push("db", 1, 1, 3, a.slice(0, 2))
          // A's second transaction is pending when its session expires: frame 4 was answered Ok.
          expect(yield* store.push("db", 1, 3, 5, a.slice(2, 4))).toMatchObject({ _tag: "Ok", maxFrameNo: 4 })
          yield* TestClock.adjust(Duration.seconds(2))
          // B commits up to frame 4 exactly: past the threshold, but A still counts frame 4 as stored.
          expect(yield* store.push("db", 1, 3, 5, b.slice(2, 4))).toMatchObject({ _tag: "Ok", maxFrameNo: 4 })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: 4 })
          // A comes back after frame 4: it is asked for frame 4 again (and conflicts there), never let
          // continue in generation 2 on top of B's frames.
          expect(yield* store.push("db", 1, 5, 7, a.slice(4, 6))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 3 })
          expect(yield* store.push("db", 1, 4, 7, a.slice(3, 6))).toMatchObject({ _tag: "Conflict" })
          // Once commits pass A's frames, the roll happens.
          yield* store.push("db", 1, 4, 7, [b[3], ...syntheticFrames(2, [[1], [1]])])
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
        })))

    it.scoped("concurrent pushes of one database are serialized; different databases are independent", () =>
      withStore({}, (store) =>
        Effect.gen(function*() {
          const base = yield* store.exportGeneration("db", 1)
          const a = yield* openReplica(base)
          const b = yield* openReplica(base)
          a.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t (v) VALUES ('a')")
          b.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t (v) VALUES ('b')")
          const fa = a.frames()
          const fb = b.frames()
          const results = yield* Effect.all(
            [
              store.push("db", 1, 1, fa.length + 1, fa),
              store.push("db", 1, 1, fb.length + 1, fb),
              store.push("db", 1, 1, fa.length + 1, fa),
              store.push("db2", 1, 1, fb.length + 1, fb)
            ],
            { concurrency: "unbounded" }
          )
          const winner = results[0]._tag === "Ok" ? "a" : "b"
          expect(results.slice(0, 2).map((r) => r._tag).sort()).toEqual(["Conflict", "Ok"])
          expect(results[2]._tag).toBe(winner === "a" ? "Ok" : "Conflict")
          expect(results[3]._tag).toBe("Ok")
          expect(rowsOf(yield* materialize(store, "db")).map((r) => r.v)).toEqual([winner])
          expect(rowsOf(yield* materialize(store, "db2")).map((r) => r.v)).toEqual(["b"])
        })))

    it("property: two pushers, batons, retries and expiry never expose or mix partial streams", async () => {
      const arbStream = fc.array(fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 5 }), {
        minLength: 2,
        maxLength: 10
      })
      const arbStep = fc.oneof(
        fc.record({ kind: fc.constant("push" as const), client: fc.integer({ min: 0, max: 1 }), size: fc.integer({ min: 1, max: 7 }), repeat: fc.boolean() }),
        fc.record({ kind: fc.constant("clock" as const), ms: fc.integer({ min: 0, max: 12_000 }) })
      )
      await fc.assert(
        fc.asyncProperty(arbStream, arbStream, fc.array(arbStep, { minLength: 1, maxLength: 40 }), (txA, txB, steps) =>
          // Synthetic pages are not SQLite databases: this property is about the protocol, so no check.
          withStore({ integrityCheck: "off", batonIdleMs: 10_000 }, (store) =>
            Effect.gen(function*() {
              const streams = [syntheticFrames(0, txA), syntheticFrames(1, txB)]
              const clients = streams.map(() => ({ position: 0, baton: undefined as string | undefined, conflicted: false }))
              let seenHead = 0
              let seen: ReadonlyArray<WalFrame.Frame> = []
              const isCommitBoundary = (frames: ReadonlyArray<WalFrame.Frame>, n: number) => n === 0 || frames[n - 1].commitSize !== 0
              const checkInvariants = Effect.gen(function*() {
                const { maxFrameNo } = yield* store.info("m")
                const { frames: committed } = yield* pullAll(store, "m", 1, 1, 5)
                expect(committed.length).toBe(maxFrameNo)
                expect(maxFrameNo).toBeGreaterThanOrEqual(seenHead)
                seen.forEach((f, i) => expect(WalFrame.equals(f, committed[i])).toBe(true))
                if (maxFrameNo > 0) {
                  const owner = committed[0].page[0] - 1
                  committed.forEach((f, i) => expect(WalFrame.equals(f, streams[owner][i])).toBe(true))
                  expect(isCommitBoundary(streams[owner], maxFrameNo)).toBe(true)
                }
                seenHead = maxFrameNo
                seen = committed
                return committed
              })
              const pushOnce = (c: number, size: number) =>
                Effect.gen(function*() {
                  const client = clients[c]
                  const stream = streams[c]
                  if (client.conflicted || client.position >= stream.length) return undefined
                  const start = client.position + 1
                  const part = stream.slice(client.position, client.position + size)
                  const args = [start, start + part.length, part, client.baton] as const
                  const result = yield* Effect.either(store.push("m", 1, ...args))
                  return { args, result }
                })
              const apply = (c: number, outcome: NonNullable<Effect.Effect.Success<ReturnType<typeof pushOnce>>>) => {
                const client = clients[c]
                const { args: [, end], result } = outcome
                if (result._tag === "Left") {
                  expect(["Busy", "UnknownBaton"]).toContain(result.left.reason)
                  if (result.left.reason === "UnknownBaton") client.baton = undefined
                  return
                }
                const answer = result.right
                if (answer._tag === "Conflict") {
                  client.conflicted = true
                  return
                }
                expect(answer.maxFrameNo).toBeLessThanOrEqual(end - 1)
                client.position = answer.maxFrameNo
                client.baton = answer.baton
              }
              for (const step of steps) {
                if (step.kind === "clock") {
                  yield* TestClock.adjust(Duration.millis(step.ms))
                  continue
                }
                const outcome = yield* pushOnce(step.client, step.size)
                if (outcome === undefined) continue
                if (step.repeat) {
                  // The same request again, as after a lost answer: the same answer, nothing new stored.
                  const again = yield* Effect.either(store.push("m", 1, ...outcome.args))
                  if (outcome.result._tag === "Right" && outcome.result.right._tag === "Ok") {
                    expect(again).toEqual(outcome.result)
                  }
                }
                apply(step.client, outcome)
                const committed = yield* checkInvariants
                const answer = outcome.result._tag === "Right" ? outcome.result.right : undefined
                if (answer?._tag === "Ok" && answer.baton === undefined && answer.maxFrameNo === outcome.args[1] - 1) {
                  // Acknowledged without a session: those frames are committed, and they are this client's.
                  expect(committed.length).toBeGreaterThanOrEqual(answer.maxFrameNo)
                  for (let i = 0; i < answer.maxFrameNo; i++) expect(WalFrame.equals(committed[i], streams[step.client][i])).toBe(true)
                }
              }
              // Let sessions expire, then every pusher that can finish does.
              yield* TestClock.adjust(Duration.millis(20_000))
              for (let c = 0; c < clients.length; c++) {
                clients[c].baton = undefined
                for (let guard = 0; guard < 100; guard++) {
                  const outcome = yield* pushOnce(c, 4)
                  if (outcome === undefined) break
                  apply(c, outcome)
                }
              }
              const committed = yield* checkInvariants
              const finished = clients.filter((client, c) => !client.conflicted && client.position === streams[c].length)
              expect(finished.length).toBe(1)
              const winner = clients.indexOf(finished[0])
              expect(committed.length).toBe(streams[winner].length)
            })
          ).pipe(Effect.scoped, Effect.provide(TestContext.TestContext), Effect.runPromise)
        ),
        { numRuns: 30 }
      )
    }, 240_000)

    it("property: any chunking and duplication of a replica's pushes reproduces the replica", async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({
              inserts: fc.integer({ min: 0, max: 6 }),
              big: fc.boolean(),
              deleteSome: fc.boolean(),
              vacuum: fc.boolean()
            }),
            { minLength: 1, maxLength: 5 }
          ),
          fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 8 }),
          fc.array(fc.boolean(), { minLength: 1, maxLength: 8 }),
          (transactions, chunks, repeats) =>
            withStore({}, (store) =>
              Effect.gen(function*() {
                const { replica } = yield* seeded(store, "p", 1)
                const insert = replica.db.prepare("INSERT INTO t (v) VALUES (?)")
                for (const tx of transactions) {
                  replica.db.transaction(() => {
                    for (let i = 0; i < tx.inserts; i++) insert.run(tx.big ? "z".repeat(3000) : `v${i}`)
                    if (tx.deleteSome) replica.db.exec("DELETE FROM t WHERE id % 3 = 0")
                  })()
                  // VACUUM rewrites the file and shrinks it: commit sizes go down.
                  if (tx.vacuum) replica.db.exec("VACUUM")
                }
                const frames = replica.frames()
                let next = 1
                let baton: string | undefined
                let step = 0
                while (next <= frames.length) {
                  const size = chunks[step % chunks.length]
                  const part = frames.slice(next - 1, next - 1 + size)
                  const r = yield* store.push("p", 1, next, next + part.length, part, baton)
                  expect(r).toMatchObject({ _tag: "Ok", maxFrameNo: next + part.length - 1 })
                  if (repeats[step % repeats.length]) {
                    expect(yield* store.push("p", 1, next, next + part.length, part, r._tag === "Ok" ? r.baton : undefined)).toEqual(r)
                  }
                  baton = r._tag === "Ok" ? r.baton : undefined
                  next += part.length
                  step++
                }
                expect(baton).toBeUndefined()
                const image = yield* materialize(store, "p")
                expect(Buffer.compare(image, replica.checkpoint())).toBe(0)
              })
            ).pipe(Effect.scoped, Effect.runPromise)
        ),
        { numRuns: 12 }
      )
    })
  })

conformance("layerMemory", (options) => ServerStore.layerMemory(options))

conformance("layer (embedded SQLite in a temp directory)", (options) =>
  Layer.unwrapScoped(Effect.map(tempDir, (directory) => ServerStore.layer({ ...options, directory }))))

// Each store gets a schema of its own in one PostgreSQL database of this file.
const postgresLayer = (options: ServerStore.Options = {}) =>
  Layer.unwrapEffect(
    Effect.map(
      Effect.promise(() => suiteDatabase(inject("postgresUrl"), "server_store")),
      (url) => ServerStore.layerPostgres({ ...options, url, schema: freshSchema() })
    )
  )

conformance("layerPostgres (a real PostgreSQL server)", postgresLayer)

// ---------------------------------------------------------------------------------------------
// What only the disk store can show

describe("ServerStore.layer: persistence", () => {
  const run = <A, E>(directory: string, options: ServerStore.Options, body: (store: Store) => Effect.Effect<A, E, Scope.Scope>) =>
    Effect.flatMap(ServerStore.ServerStore, body).pipe(Effect.provide(ServerStore.layer({ ...options, directory })), Effect.scoped)

  it.scoped("reopening the same directory keeps generations, bases, frames and the check's head", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const options = { generationFrames: 4, keepGenerations: 1 }
      const replicaBase = yield* run(directory, options, (store) => store.exportGeneration("db", 1))
      const replica = yield* openReplica(replicaBase)
      replica.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
      const insert = replica.db.prepare("INSERT INTO t (v) VALUES (?)")
      for (let i = 0; i < 5; i++) insert.run(`r${i}`)
      const g1 = replica.frames()
      expect(g1.length).toBeGreaterThan(4)
      const before = yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          yield* store.push("db", 1, 1, g1.length + 1, g1)
          expect((yield* store.info("db")).generation).toBe(2)
          return { base2: yield* store.exportGeneration("db", 2), pulled: (yield* pullAll(store, "db", 1)).frames }
        }))
      expect(Buffer.compare(before.base2, replica.checkpoint())).toBe(0)
      insert.run("in g2")
      const g2 = replica.frames()
      yield* run(directory, options, (store) => store.push("db", 2, 1, g2.length + 1, g2))
      // Leftovers a crash could leave next to the head file do not matter.
      fs.writeFileSync(path.join(directory, "db", "head.db-wal"), new Uint8Array(5000).fill(7))
      fs.writeFileSync(path.join(directory, "db", "head.db-shm"), new Uint8Array(100).fill(9))
      fs.writeFileSync(path.join(directory, "db", "head.db"), new Uint8Array(4096))
      fs.writeFileSync(path.join(directory, "db", "head.db.tmp-999999"), new Uint8Array(10))
      yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: g2.length })
          expect(Buffer.compare(yield* store.exportGeneration("db", 2), before.base2)).toBe(0)
          const again = (yield* pullAll(store, "db", 1)).frames
          expect(again.length).toBe(before.pulled.length)
          again.forEach((f, i) => expect(WalFrame.equals(f, before.pulled[i])).toBe(true))
          expect(rowsOf(yield* materialize(store, "db")).map((r) => r.v)).toEqual(["r0", "r1", "r2", "r3", "r4", "in g2"])
          // The rebuilt head still guards commits.
          insert.run("after reopen")
          const g2b = replica.frames().slice(g2.length)
          const bad = g2b.map((f, i) => (i === g2b.length - 1 ? corruptBtree(f) : f))
          expect(yield* failure(store.push("db", 2, g2.length + 1, g2.length + bad.length + 1, bad))).toBe("Malformed")
          expect(yield* store.push("db", 2, g2.length + 1, g2.length + g2b.length + 1, g2b)).toMatchObject({ _tag: "Ok" })
        }))
      // Lowering keepGenerations between runs drops the surplus on open.
      yield* run(directory, { keepGenerations: 0 }, (store) =>
        Effect.gen(function*() {
          expect(yield* failure(store.exportGeneration("db", 1))).toBe("GenerationGone")
          expect((yield* store.info("db")).generation).toBe(2)
        }))
      expect(fs.existsSync(path.join(directory, "db", "store.sqlite"))).toBe(true)
      expect(fs.readdirSync(path.join(directory, "db")).filter((f) => f.includes(".tmp-"))).toEqual([])
    }))

  it.scoped("a roll's base is the committed head byte for byte: heads checked on the worker, shrunk, refused, rebuilt or unchecked", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const dir = path.join(directory, "db")
      // Rolls at every commit past 4 frames; the head passes 1 MiB, so its check runs on the worker.
      const options = { generationFrames: 4, keepGenerations: 20 }
      const replica = yield* openReplica(yield* run(directory, options, (store) => store.exportGeneration("db", 1)))
      replica.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
      let generation = 1
      let pushed = 0
      // Pushes the replica's frames since the last push, which must roll; the replica then moves on to the
      // next generation as a client does (TRUNCATE checkpoint), and the new base must be its file.
      const pushRolling = (store: Store) =>
        Effect.gen(function*() {
          const frames = replica.frames().slice(pushed)
          expect(yield* store.push("db", generation, pushed + 1, pushed + frames.length + 1, frames)).toMatchObject({ _tag: "Ok" })
          expect(yield* store.info("db")).toEqual({ generation: generation + 1, maxFrameNo: 0 })
          generation++
          pushed = 0
          expect(Buffer.compare(yield* store.exportGeneration("db", generation), replica.checkpoint())).toBe(0)
        })
      yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          bigTransaction(replica, 5, "small")
          yield* pushRolling(store)
          bigTransaction(replica, 1000, "big")
          expect(fs.statSync(path.join(dir, "head.db")).size).toBeLessThan(1024 * 1024)
          yield* pushRolling(store)
          expect(fs.statSync(path.join(dir, "head.db")).size).toBeGreaterThan(1024 * 1024)
          // A refused commit leaves the head as it was: the next roll's base is still the committed head.
          replica.db.exec("UPDATE t SET v = v || 'x' WHERE id % 7 = 0")
          const good = replica.frames()
          const bad = good.map((f, i) => (i === good.length - 1 ? corruptBtree(f) : f))
          expect(yield* failure(store.push("db", generation, 1, bad.length + 1, bad))).toBe("Malformed")
          yield* pushRolling(store)
          // A commit that shrinks the database: the head is cut to the commit's size.
          replica.db.exec("DELETE FROM t WHERE id % 2 = 0")
          replica.db.exec("VACUUM")
          yield* pushRolling(store)
        }))
      // A head damaged while the server was down is rebuilt from the store before it is used.
      fs.writeFileSync(path.join(dir, "head.db"), new Uint8Array(4096))
      yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          replica.db.exec("UPDATE t SET v = 'y' WHERE id % 5 = 0")
          yield* pushRolling(store)
        }))
      // Without checks the head is not kept: rolls write their base from the store.
      yield* run(directory, { ...options, integrityCheck: "off" }, (store) =>
        Effect.gen(function*() {
          replica.db.exec("UPDATE t SET v = 'z' WHERE id % 3 = 0")
          yield* pushRolling(store)
          replica.db.exec("DELETE FROM t WHERE id % 3 = 0")
          yield* pushRolling(store)
        }))
      // ...and the head left behind by that run is not trusted by the next one that checks.
      yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          replica.db.exec("UPDATE t SET v = 'w' WHERE id % 4 = 1")
          yield* pushRolling(store)
          expect(rowsOf(yield* materialize(store, "db"))).toEqual(replica.db.prepare("SELECT id, v FROM t ORDER BY id").all())
        }))
      expect(fs.readdirSync(dir).filter((f) => f.includes(".tmp-"))).toEqual([])
    }))

  it.scoped("bases are files: a crash's leftovers go on open, and a store that kept bases in a table is moved to files", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const dir = path.join(directory, "db")
      const options = { generationFrames: 2 }
      const before = yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 3)
          const frames = replica.frames()
          yield* store.push("db", 1, 1, frames.length + 1, frames)
          expect((yield* store.info("db")).generation).toBe(2)
          yield* Effect.scoped(store.snapshot("db"))
          return { base1: yield* store.exportGeneration("db", 1), base2: yield* store.exportGeneration("db", 2) }
        }))
      expect(fs.readdirSync(dir).filter((f) => f.startsWith("base-")).sort()).toEqual(["base-1.db", "base-2.db"])
      expect(Buffer.compare(fs.readFileSync(path.join(dir, "base-2.db")), before.base2)).toBe(0)
      // What a crash can leave: a base written for a generation whose row never came, a snapshot, temp files.
      fs.writeFileSync(path.join(dir, "base-3.db"), new Uint8Array(4096))
      fs.writeFileSync(path.join(dir, "base-3.db.tmp-123"), new Uint8Array(10))
      fs.writeFileSync(path.join(dir, "snapshot-2-0.db.tmp-1-ab"), new Uint8Array(10))
      // The layout of stores written before bases were files: a `bases` table and no files.
      const legacy = new Database(path.join(dir, "store.sqlite"))
      legacy.exec("CREATE TABLE bases (generation INTEGER PRIMARY KEY, base BLOB NOT NULL)")
      legacy.prepare("INSERT INTO bases VALUES (1, ?), (2, ?)").run(Buffer.from(before.base1), Buffer.from(before.base2))
      legacy.close()
      fs.rmSync(path.join(dir, "base-1.db"))
      fs.rmSync(path.join(dir, "base-2.db"))
      yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          expect(yield* store.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
          expect(Buffer.compare(yield* store.exportGeneration("db", 1), before.base1)).toBe(0)
          expect(Buffer.compare(yield* Effect.scoped(Effect.flatMap(store.openExport("db", 2), bodyBytes)), before.base2)).toBe(0)
        }))
      expect(fs.readdirSync(dir).filter((f) => f !== "store.sqlite-wal" && f !== "store.sqlite-shm").sort()).toEqual([
        "base-1.db",
        "base-2.db",
        "head.db",
        "store.sqlite"
      ])
      const tables = new Database(path.join(dir, "store.sqlite"), { readonly: true })
      expect(tables.prepare("SELECT name FROM sqlite_schema WHERE name = 'bases'").all()).toEqual([])
      tables.close()
      // A base file that is gone while its generation is kept is a storage error, not an empty database.
      fs.rmSync(path.join(dir, "base-2.db"))
      const error = yield* Effect.flip(run(directory, options, (store) => store.info("db")))
      expect(error.reason).toBe("Storage")
    }))

  it.scoped("the head file the check runs on stays equal to base + committed frames", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const head = path.join(directory, "db", "head.db")
      yield* run(directory, {}, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 2)
          let pushed = 0
          const sync = Effect.gen(function*() {
            const frames = replica.frames()
            yield* pushChunks(store, "db", 1, pushed + 1, frames.slice(pushed), 5)
            pushed = frames.length
          })
          yield* sync
          for (let round = 0; round < 4; round++) {
            bigTransaction(replica, 3 + round, `h${round}`)
            replica.db.exec(`DELETE FROM t WHERE id % ${round + 2} = 0`)
            if (round % 2 === 1) replica.db.exec("VACUUM")
            // A refused commit in between must not leave anything in the head.
            const bad = bigTransaction(replica, 1, "x").frames
            const corrupted = bad.map((f, i) => (i === bad.length - 1 ? corruptBtree(f) : f))
            const fresh = replica.frames().slice(pushed, -bad.length)
            yield* pushChunks(store, "db", 1, pushed + 1, fresh, 4)
            pushed += fresh.length
            expect(yield* failure(store.push("db", 1, pushed + 1, pushed + corrupted.length + 1, corrupted))).toBe("Malformed")
            expect(Buffer.compare(fs.readFileSync(head), yield* materialize(store, "db"))).toBe(0)
            expect(fs.existsSync(`${head}-wal`)).toBe(false)
            // (a large commit keeps a copy of the head until its verdict: gone after either)
            const leftovers = () => fs.readdirSync(path.dirname(head)).filter((entry) => entry.includes(".tmp-"))
            expect(leftovers()).toEqual([])
            yield* sync
            expect(Buffer.compare(fs.readFileSync(head), yield* materialize(store, "db"))).toBe(0)
            expect(leftovers()).toEqual([])
          }
        }))
    }))

  it.scoped("a refused commit that cuts the database short leaves the head file as it was, checked here or on the worker", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const head = path.join(directory, "db", "head.db")
      yield* run(directory, { generationGrowth: "never" }, (store) =>
        Effect.gen(function*() {
          const { replica } = yield* seeded(store, "db", 2)
          let pushed = 0
          const sync = Effect.gen(function*() {
            const frames = replica.frames()
            yield* pushChunks(store, "db", 1, pushed + 1, frames.slice(pushed), 200)
            pushed = frames.length
          })
          // about 200 KB (checked on the calling thread), then about 3 MB (on the worker)
          for (const rows of [40, 700]) {
            bigTransaction(replica, rows, `r${rows}:`)
            replica.db.exec("DELETE FROM t WHERE id % 10 != 0")
            yield* sync
            const sizeBefore = fs.statSync(head).size
            // VACUUM gives the deleted rows' pages back: its commit cuts the file short
            replica.db.exec("VACUUM")
            const vacuum = replica.frames().slice(pushed)
            expect(vacuum[vacuum.length - 1].commitSize * WalFrame.PAGE_SIZE).toBeLessThan(sizeBefore / 2)
            const corrupted = vacuum.map((f, i) => (i === vacuum.length - 1 ? corruptBtree(f) : f))
            expect(yield* failure(store.push("db", 1, pushed + 1, pushed + vacuum.length + 1, corrupted))).toBe("Malformed")
            expect(fs.statSync(head).size).toBe(sizeBefore)
            expect(Buffer.compare(fs.readFileSync(head), yield* materialize(store, "db"))).toBe(0)
            expect(fs.existsSync(`${head}-wal`)).toBe(false)
            // (a large commit keeps a copy of the head until its verdict: gone after either)
            const leftovers = () => fs.readdirSync(path.dirname(head)).filter((entry) => entry.includes(".tmp-"))
            expect(leftovers()).toEqual([])
            yield* sync
            expect(Buffer.compare(fs.readFileSync(head), yield* materialize(store, "db"))).toBe(0)
            expect(leftovers()).toEqual([])
          }
        }))
    }))

  it.scoped("layerConfig reads its options from Config", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const layer = ServerStore.layerConfig({
        directory: Config.string("DATA"),
        generationFrames: Config.integer("GENERATION_FRAMES")
      })
      const info = yield* Effect.flatMap(ServerStore.ServerStore, (store) => store.info("cfg")).pipe(
        Effect.provide(layer),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DATA", directory], ["GENERATION_FRAMES", "3"]])))
      )
      expect(info).toEqual({ generation: 1, maxFrameNo: 0 })
      expect(fs.existsSync(path.join(directory, "cfg", "store.sqlite"))).toBe(true)
    }))

  it.scoped("frames answered Ok while pending stay protected across a restart", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const options = { integrityCheck: "off" as const }
      const a = syntheticFrames(0, [[1, 2, 3, 1, 2, 3]])
      const b = syntheticFrames(1, [[1, 2], [1, 2], [1, 2]])
      yield* run(directory, options, (store) =>
        Effect.map(store.push("db", 1, 1, 5, a.slice(0, 4)), (r) => expect(r).toMatchObject({ _tag: "Ok", maxFrameNo: 4 })))
      // The restart lost A's session; B commits up to A's acknowledged frame; A resumes at 5.
      yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          expect(yield* store.push("db", 1, 1, 5, b.slice(0, 4))).toMatchObject({ _tag: "Ok", maxFrameNo: 4 })
        }))
      yield* run(directory, options, (store) =>
        Effect.gen(function*() {
          expect(yield* store.push("db", 1, 5, 7, a.slice(4, 6))).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: 3 })
          expect(yield* store.push("db", 1, 4, 7, a.slice(3, 6))).toMatchObject({ _tag: "Conflict" })
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: 4 })
        }))
    }))

  it.scoped("a second store over the same directory is refused while the first is open", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const first = yield* ServerStore.make({ directory })
      yield* first.info("db")
      const second = yield* ServerStore.make({ directory })
      const error = yield* Effect.flip(second.info("db"))
      expect(error.reason).toBe("Storage")
      expect(error.message).toContain("another process")
    }))

  it.live("an Ok push survives kill -9 of the process that answered it", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const base = yield* run(directory, {}, (store) => store.exportGeneration("db", 1))
      const replica = yield* openReplica(base)
      replica.db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
      const insert = replica.db.prepare("INSERT INTO t (v) VALUES (?)")
      for (let i = 0; i < 20; i++) insert.run(`durable ${i}`)
      const frames = replica.frames()
      const framesFile = path.join(directory, "frames.bin")
      fs.writeFileSync(framesFile, WalFrame.encodeWire(frames))
      const answer = yield* Effect.async<string, Error>((resume) => {
        const child = spawn(
          process.execPath,
          ["--import", "tsx", path.join(import.meta.dirname, "support", "serverStoreChild.ts"), directory, "db", framesFile],
          { stdio: ["ignore", "pipe", "pipe"] }
        )
        let out = ""
        let err = ""
        child.stderr.on("data", (d) => (err += d))
        child.stdout.on("data", (d) => {
          out += d
          if (out.includes("\n")) child.kill("SIGKILL")
        })
        child.on("exit", (_code, signal) =>
          signal === "SIGKILL" ? resume(Effect.succeed(out.trim())) : resume(Effect.fail(new Error(`child exited: ${err}`))))
      })
      expect(JSON.parse(answer)).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: frames.length })
      yield* run(directory, {}, (store) =>
        Effect.gen(function*() {
          expect(yield* store.info("db")).toEqual({ generation: 1, maxFrameNo: frames.length })
          expect(rowsOf(yield* materialize(store, "db"))).toHaveLength(20)
        }))
    }).pipe(Effect.scoped))
})

// ---------------------------------------------------------------------------------------------
// Several server processes on one PostgreSQL database: two stores over one schema, each with its own
// memory (open handles, head images, session caches), as two `serve` processes would have.

describe("ServerStore.layerPostgres: two stores on one schema", () => {
  const twoStores = <A, E>(options: ServerStore.Options, body: (a: Store, b: Store) => Effect.Effect<A, E, Scope.Scope>) =>
    Effect.gen(function*() {
      const url = yield* Effect.promise(() => suiteDatabase(inject("postgresUrl"), "server_store"))
      const schema = freshSchema("two")
      const a = yield* ServerStore.makePostgres({ ...options, url, schema })
      const b = yield* ServerStore.makePostgres({ ...options, url, schema })
      return yield* body(a, b)
    })

  it.scoped("a baton transaction started on one continues on the other; the database is locked on both", () =>
    twoStores({}, (a, b) =>
      Effect.gen(function*() {
        const { base, replica } = yield* seeded(a, "db", 1)
        const setup = replica.frames()
        yield* a.push("db", 1, 1, setup.length + 1, setup)
        const head = setup.length
        expect(yield* b.info("db")).toEqual({ generation: 1, maxFrameNo: head })
        const { frames, start } = bigTransaction(replica, 30, "x")
        let baton: string | undefined
        const stores = [a, b]
        for (let i = 0, n = 0; i < frames.length; i += 6, n++) {
          const part = frames.slice(i, i + 6)
          const store = stores[n % 2]
          const r = yield* store.push("db", 1, start + i, start + i + part.length, part, baton)
          expect(r).toMatchObject({ _tag: "Ok", maxFrameNo: start + i + part.length - 1 })
          baton = r._tag === "Ok" ? r.baton : undefined
          if (baton !== undefined) {
            // Pending frames are invisible and the database is held on both stores.
            expect(yield* stores[(n + 1) % 2].info("db")).toEqual({ generation: 1, maxFrameNo: head })
            const other = yield* openReplica(base)
            other.db.exec("CREATE TABLE u (x)")
            expect(yield* failure(stores[(n + 1) % 2].push("db", 1, 1, other.frames().length + 1, other.frames()))).toBe("Busy")
            // A retry of the request on the other store is answered the same.
            expect(yield* stores[(n + 1) % 2].push("db", 1, start + i, start + i + part.length, part, baton)).toEqual(r)
          }
        }
        expect(baton).toBeUndefined()
        for (const store of stores) {
          const image = yield* materialize(store, "db")
          expect(rowsOf(image)).toHaveLength(31)
        }
        expect(Buffer.compare(yield* materialize(b, "db"), replica.checkpoint())).toBe(0)
      })))

  it.scoped("concurrent pushes through both are serialized: one winner, frames numbered once", () =>
    twoStores({}, (a, b) =>
      Effect.gen(function*() {
        const base = yield* a.exportGeneration("db", 1)
        const replicas = yield* Effect.forEach([0, 1, 2, 3], () => openReplica(base))
        replicas.forEach((r, i) => r.db.exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t (v) VALUES ('w${i}')`))
        const results = yield* Effect.all(
          replicas.map((r, i) => (i % 2 === 0 ? a : b).push("db", 1, 1, r.frames().length + 1, r.frames())),
          { concurrency: "unbounded" }
        )
        expect(results.filter((r) => r._tag === "Ok")).toHaveLength(1)
        const winner = results.findIndex((r) => r._tag === "Ok")
        for (const store of [a, b]) {
          expect(rowsOf(yield* materialize(store, "db")).map((r) => r.v)).toEqual([`w${winner}`])
        }
      })))

  it.scoped("the commit check runs on the committed head, not on what one store saw last", () =>
    twoStores({}, (a, b) =>
      Effect.gen(function*() {
        const { replica } = yield* seeded(a, "db", 2)
        let pushed = 0
        const stores = [a, b]
        for (let round = 0; round < 6; round++) {
          // Whichever store took the last commit, the other one checks the next against the real head.
          const store = stores[round % 2]
          bigTransaction(replica, 2, `r${round}`)
          const fresh = replica.frames().slice(pushed)
          const corrupted = fresh.map((f, i) => (i === fresh.length - 1 ? corruptBtree(f) : f))
          expect(yield* failure(store.push("db", 1, pushed + 1, pushed + corrupted.length + 1, corrupted))).toBe("Malformed")
          expect(yield* store.push("db", 1, pushed + 1, pushed + fresh.length + 1, fresh)).toMatchObject({ _tag: "Ok" })
          pushed += fresh.length
        }
        expect(Buffer.compare(yield* materialize(a, "db"), replica.checkpoint())).toBe(0)
      })))

  // A store that did not take the last commits builds the committed head from the base and the frames,
  // read a batch at a time: a transaction cut by a batch boundary must still be applied whole, both for
  // the commit check and for the base of a roll.
  const pastOneBatch = (a: Store) =>
    Effect.gen(function*() {
      const { replica } = yield* seeded(a, "db", 1)
      let pushed = 0
      let straddles = false
      for (let round = 0; pushed <= 1100; round++) {
        bigTransaction(replica, 90, `r${round}`)
        const fresh = replica.frames().slice(pushed)
        if (pushed < 1024 && pushed + fresh.length > 1024 && replica.frames()[1023].commitSize === 0) straddles = true
        expect(yield* a.push("db", 1, pushed + 1, pushed + fresh.length + 1, fresh)).toMatchObject({ _tag: "Ok" })
        pushed += fresh.length
      }
      expect(straddles).toBe(true)
      return { replica, pushed }
    })

  it.scoped("the other store checks against the whole committed head when a transaction spans a read batch", () =>
    twoStores({ generationGrowth: "never" }, (a, b) =>
      Effect.gen(function*() {
        const { pushed, replica } = yield* pastOneBatch(a)
        const { frames } = bigTransaction(replica, 2, "b")
        expect(yield* b.push("db", 1, pushed + 1, pushed + frames.length + 1, frames)).toMatchObject({ _tag: "Ok" })
        expect(Buffer.compare(yield* materialize(a, "db"), replica.checkpoint())).toBe(0)
      })))

  it.scoped("a roll by the other store, check off, starts from the whole committed head", () =>
    twoStores({ integrityCheck: "off", generationFrames: 1200 }, (a, b) =>
      Effect.gen(function*() {
        const { pushed, replica } = yield* pastOneBatch(a)
        let last = pushed
        while (last <= 1200) {
          const { frames } = bigTransaction(replica, 30, `b${last}`)
          expect(yield* b.push("db", 1, last + 1, last + frames.length + 1, frames)).toMatchObject({ _tag: "Ok" })
          last += frames.length
        }
        expect(yield* a.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
        expect(Buffer.compare(yield* a.exportGeneration("db", 2), replica.checkpoint())).toBe(0)
      })))

  it.scoped("a generation rolls once, whichever store commits past the threshold", () =>
    twoStores({ generationFrames: 4 }, (a, b) =>
      Effect.gen(function*() {
        const { replica } = yield* seeded(a, "db", 3)
        const frames = replica.frames()
        expect(frames.length).toBeGreaterThan(4)
        const results = yield* Effect.all(
          [a.push("db", 1, 1, frames.length + 1, frames), b.push("db", 1, 1, frames.length + 1, frames)],
          { concurrency: "unbounded" }
        )
        // The first to take the lock commits and rolls in one transaction; the other then finds generation
        // 1 closed, as any push to an old generation does.
        expect(results.map((r) => r._tag).sort()).toEqual(["Conflict", "Ok"])
        expect(results.find((r) => r._tag === "Conflict")).toEqual({ _tag: "Conflict", generation: 1, maxFrameNo: frames.length })
        expect(yield* a.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
        expect(yield* b.info("db")).toEqual({ generation: 2, maxFrameNo: 0 })
        expect(yield* failure(b.exportGeneration("db", 3))).toBe("GenerationNotFound")
        expect(Buffer.compare(yield* b.exportGeneration("db", 2), replica.checkpoint())).toBe(0)
      })))
})
