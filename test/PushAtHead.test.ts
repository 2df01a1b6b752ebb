/**
 * A push at the remote's head goes without the pull before it: one request, starting at the synced frame
 * (sent again) and naming the recorded database, whatever its size, until one finds the replica behind
 * (then only small ones, until a push finds it at the head again). A stale one (another replica pushed since) is a conflict
 * the remote answers without storing anything, and the push's rounds with their pull follow; a remote
 * that is another database with the same history refuses it by identity; a push whose answer was lost is
 * settled by a pull, never sent at the head. Over the in-process store and over HTTP.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Chunk from "effect/Chunk"
import * as Queue from "effect/Queue"
import * as Scope from "effect/Scope"
import fc from "fast-check"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import type * as SyncRemote from "../src/SyncRemote.js"
import * as Push from "../src/internal/engine/push.js"
import { countingRemote, Harness, freshName, layerHttp, layerStore, openClient, remoteQuery, tempDir } from "./support/engine.js"

for (const [label, harness] of [["store", layerStore], ["http", layerHttp]] as const) {
  layer(harness, { excludeTestServices: true, timeout: 120_000 })(`push at the head (${label})`, (it) => {
    it.scoped("one request when at the head; behind, a silent conflict, then the pull and the push: every row once", () =>
      Effect.gen(function*() {
        const h = yield* Harness
        const name = freshName("at-head")
        const dir = yield* tempDir
        const { counts, remote, reset } = countingRemote(yield* h.remote(name))
        const a = yield* openClient(remote, NodePath.join(dir, "a"))
        const b = yield* openClient(yield* h.remote(name), NodePath.join(dir, "b"))
        yield* a.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
        // The first push after the open pulls first; `/info` (which says the remote checks identities) is
        // asked at most once.
        expect(yield* a.push).toBe(true)
        yield* a.execute("INSERT INTO t VALUES ('a0', 1)")
        expect(yield* a.push).toBe(true)
        yield* a.execute("INSERT INTO t VALUES ('a1', 1)")
        reset()
        const events = yield* a.subscribe
        expect(yield* a.push).toBe(true)
        expect(counts).toEqual({ info: 0, pull: 0, push: 1 })
        expect((yield* a.stats).pendingChanges).toBe(0)

        // Another replica pushes: A is behind. Its push at the head is refused, and the rounds follow.
        yield* b.pull
        yield* b.execute("INSERT INTO t VALUES ('b1', 1)")
        expect(yield* b.push).toBe(true)
        yield* a.execute("INSERT INTO t VALUES ('a2', 1)")
        reset()
        expect(yield* a.push).toBe(true)
        expect(counts.push).toBe(2)
        expect(counts.info).toBe(1)
        // No conflict is announced: the refused push only said that a pull comes first.
        const told = Chunk.toReadonlyArray(yield* Queue.takeAll(events)).map((e) => e._tag)
        expect(told).toContain("Finished")
        expect(told).not.toContain("ConflictRetry")
        yield* a.sync
        expect(yield* a.query("SELECT k FROM t ORDER BY k")).toEqual([{ k: "a0" }, { k: "a1" }, { k: "a2" }, { k: "b1" }])
        expect(yield* remoteQuery(yield* h.remote(name), "SELECT k, n FROM t ORDER BY k")).toEqual([
          { k: "a0", n: 1 },
          { k: "a1", n: 1 },
          { k: "a2", n: 1 },
          { k: "b1", n: 1 }
        ])
      }))

    it.scoped("a large push goes at the head too; after one found the replica behind, large ones pull first until a push finds it at the head", () =>
      Effect.gen(function*() {
        const h = yield* Harness
        const name = freshName("at-head-large")
        const dir = yield* tempDir
        const { counts, remote, reset } = countingRemote(yield* h.remote(name))
        const a = yield* openClient(remote, NodePath.join(dir, "a"))
        const b = yield* openClient(yield* h.remote(name), NodePath.join(dir, "b"))
        // 1500 rows in one statement: more pending changes than a push at the head takes after a stale one
        let next = 0
        const insertMany = (n: number) => {
          const from = next + 1
          next += n
          return a.execute(
            `WITH RECURSIVE s(i) AS (SELECT ${from} UNION ALL SELECT i + 1 FROM s WHERE i < ${next}) INSERT INTO t SELECT i FROM s`
          )
        }
        /** Writes `rows` rows on A and pushes them: the requests that push made. */
        const writeAndPush = (rows: number) =>
          Effect.gen(function*() {
            yield* insertMany(rows)
            reset()
            expect(yield* a.push).toBe(true)
            return { ...counts }
          })
        const bPushes = (k: number) =>
          Effect.gen(function*() {
            yield* b.pull
            yield* b.execute("INSERT INTO t VALUES (?)", [k])
            expect(yield* b.push).toBe(true)
          })
        const atHead = { info: 0, pull: 0, push: 1 }
        yield* a.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        expect(yield* a.push).toBe(true)
        yield* a.execute("INSERT INTO t VALUES (0)")
        expect(yield* a.push).toBe(true)

        expect(yield* writeAndPush(1500)).toEqual(atHead)

        // B pushes: A's large push at the head is stale (refused), then its rounds pull and push.
        yield* bPushes(-1)
        const stale = yield* writeAndPush(1500)
        expect(stale.push).toBe(2)
        expect(stale.pull).toBeGreaterThan(0)

        // At the head again, but the last try there was stale: a large push pulls first (one push request).
        // That pull brings nothing: the replica was at the head, so the next large push goes there.
        const pulledFirst = yield* writeAndPush(1500)
        expect(pulledFirst.push).toBe(1)
        expect(pulledFirst.pull).toBeGreaterThan(0)
        expect(yield* writeAndPush(1500)).toEqual(atHead)

        // Stale again; then a small push goes at the head and lands: large ones go there again.
        yield* bPushes(-2)
        expect((yield* writeAndPush(1500)).push).toBe(2)
        expect(yield* writeAndPush(1)).toEqual(atHead)
        expect(yield* writeAndPush(1500)).toEqual(atHead)

        expect((yield* a.stats).pendingChanges).toBe(0)
        expect(yield* remoteQuery(yield* h.remote(name), "SELECT count(*) AS n, count(DISTINCT k) AS d, min(k) AS lo, max(k) AS hi FROM t"))
          .toEqual([{ n: next + 3, d: next + 3, lo: -2, hi: next }])
      }))

    it.scoped("a push whose answer was lost is settled by the pull of the next push, never sent again at the head", () =>
      Effect.gen(function*() {
        const h = yield* Harness
        const name = freshName("lost-answer")
        const dir = yield* tempDir
        const path = NodePath.join(dir, "a")
        const inner = yield* h.remote(name)
        // The answers of the second push after the first are lost (the remote stored the frames).
        let pushes = 0
        const losing: SyncRemote.Service = {
          ...inner,
          push: (...args) =>
            Effect.flatMap(inner.push(...args), (result) =>
              ++pushes === 2 ? Effect.dieMessage("the answer was lost") : Effect.succeed(result))
        }
        const { counts, remote, reset } = countingRemote(losing)
        const scope = yield* Scope.make()
        const a = yield* Scope.extend(openClient(remote, path), scope)
        yield* a.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
        expect(yield* a.push).toBe(true)
        yield* a.execute("INSERT INTO t VALUES ('lost', 1)")
        expect(Exit.isFailure(yield* Effect.exit(a.push))).toBe(true)
        yield* a.execute("INSERT INTO t VALUES ('after', 1)")
        reset()
        expect(yield* a.push).toBe(true)
        // The outcome was in doubt: the push pulled first (the remote's progress row settles it).
        expect(counts.info).toBe(1)
        expect(yield* remoteQuery(inner, "SELECT k, n FROM t ORDER BY k")).toEqual([
          { k: "after", n: 1 },
          { k: "lost", n: 1 }
        ])
        // Reopened: the first push after an open pulls first too, and nothing is applied twice.
        yield* a.execute("INSERT INTO t VALUES ('reopened', 1)")
        yield* Scope.close(scope, Exit.void)
        reset()
        const again = yield* openClient(remote, path)
        expect(yield* again.push).toBe(true)
        expect(counts.info).toBeGreaterThanOrEqual(1)
        expect(yield* remoteQuery(inner, "SELECT k, n FROM t ORDER BY k")).toEqual([
          { k: "after", n: 1 },
          { k: "lost", n: 1 },
          { k: "reopened", n: 1 }
        ])
      }))
  })
}

describe("push at the head", () => {
  it.scoped("a remote that is another database with the same history refuses it by identity; nothing is stored", () =>
    Effect.gen(function*() {
      const store = yield* ServerStore.makeMemory()
      const dir = yield* tempDir
      // The replica syncs with `orig`; later its remote is `copy`, which holds the same frames (a database
      // made again from them) but is another database.
      const target = { name: "orig" }
      const remoteOf = (name: string) => StoreRemote.make(store, name)
      const switching: SyncRemote.Service = {
        info: Effect.suspend(() => remoteOf(target.name).info),
        export: (g) => remoteOf(target.name).export(g),
        snapshot: Effect.suspend(() => remoteOf(target.name).snapshot),
        pull: (...args) => remoteOf(target.name).pull(...args),
        push: (...args) => remoteOf(target.name).push(...args)
      }
      const a = yield* openClient(switching, NodePath.join(dir, "a"))
      yield* a.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
      expect(yield* a.push).toBe(true)
      yield* a.execute("INSERT INTO t VALUES ('one')")
      expect(yield* a.push).toBe(true)
      // `copy`: every frame of `orig`, pushed as they are.
      const head = (yield* store.info("orig")).maxFrameNo
      const frames = yield* store.pull("orig", 1, 1, head + 1)
      if (frames._tag !== "Frames") return expect.unreachable()
      expect(frames.frames).toHaveLength(head)
      yield* store.push("copy", 1, 1, head + 1, frames.frames)
      expect(yield* store.databaseId("copy")).not.toBe(yield* store.databaseId("orig"))

      target.name = "copy"
      yield* a.execute("INSERT INTO t VALUES ('two')")
      expect(yield* Effect.flip(a.push)).toMatchObject({ _tag: "RemoteMismatch", reason: "DatabaseReplaced" })
      expect(yield* store.info("copy")).toEqual({ generation: 1, maxFrameNo: head })
      expect((yield* a.stats).pendingChanges).toBe(1)
    }))

  it("decision: how far a push at the head counts, and whether it goes", () => {
    fc.assert(fc.property(fc.boolean(), fc.nat(3000), (missedLast, pending) => {
      const bound = Push.atHeadCount(missedLast)
      // the count as the push makes it: the pending changes, up to the bound
      const counted = Math.min(pending, bound)
      const goes = Push.atHeadGoes(counted, missedLast)
      // nothing pending never goes; a replica whose last try at the head was stale goes only with at most
      // 1000 changes (the count reaches past that to tell); otherwise any number goes
      expect(goes).toBe(pending > 0 && (!missedLast || pending <= 1000))
      // the count is read no further than the replay's choice needs, unless the size decides
      expect(bound).toBe(missedLast ? 1001 : 16)
    }))
  })

  it("decision: only with the remote checking identities, one recorded, the synced frame in the WAL, nothing to finish or settle", () => {
    fc.assert(fc.property(
      fc.record({
        databaseId: fc.option(fc.constant("id"), { nil: undefined }),
        syncedFrame: fc.nat(5),
        foldedFrame: fc.option(fc.nat(5), { nil: undefined }),
        rollInProgress: fc.boolean(),
        foldInProgress: fc.option(fc.boolean(), { nil: undefined }),
        transferredChangeId: fc.option(fc.nat(), { nil: undefined })
      }),
      fc.boolean(),
      (m, pushIdentity) => {
        const expected = pushIdentity && m.databaseId !== undefined && m.syncedFrame > (m.foldedFrame ?? 0) &&
          !m.rollInProgress && m.foldInProgress !== true && m.transferredChangeId === undefined
        expect(Push.atHeadDecision(m, pushIdentity)).toBe(expected)
      }
    ))
  })
})
