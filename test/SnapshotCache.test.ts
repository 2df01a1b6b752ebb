/**
 * The server's in-memory head snapshots: bounded in total and per entry, least recently used dropped first,
 * an entry only ever answered with the bytes stored under its key. The store's snapshot tests
 * (ServerStore.test.ts) run through it over every backend.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as ServerBody from "../src/internal/server/serverBody.js"
import { StoreError } from "../src/internal/server/storeError.js"
import * as SnapshotCache from "../src/internal/server/snapshotCache.js"

describe("SnapshotCache", () => {
  it("stays within its bounds, keeps what fits and was used last, answers only what was stored", () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 64 }),
      fc.integer({ min: 1, max: 64 }),
      fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 80 })), { maxLength: 60 }),
      (maxBytes, maxEntryBytes, operations) => {
        const cache = SnapshotCache.make({ maxBytes, maxEntryBytes })
        const stored = new Map<string, Uint8Array>()
        for (const [isSet, k, size] of operations) {
          const key = SnapshotCache.keyOf("db", "id", 1, k)
          if (isSet) {
            const bytes = new Uint8Array(size).fill(k + size)
            cache.set(key, bytes)
            if (size <= Math.min(maxBytes, maxEntryBytes)) {
              stored.set(key, bytes)
              // The entry just kept is there: only older ones make room.
              expect(cache.get(key)).toBe(bytes)
            } else {
              expect(cache.fits(size)).toBe(false)
            }
          } else {
            const got = cache.get(key)
            // Whatever is answered is the last bytes stored under that key.
            if (got !== undefined) expect(got).toBe(stored.get(key))
          }
          expect(cache.bytes()).toBeLessThanOrEqual(maxBytes)
        }
      }
    ))
  })

  it("names a snapshot by database, identity, generation and frame", () => {
    const keys = [
      SnapshotCache.keyOf("a", "id-1", 1, 5),
      SnapshotCache.keyOf("a", "id-2", 1, 5),
      SnapshotCache.keyOf("b", "id-1", 1, 5),
      SnapshotCache.keyOf("a", "id-1", 2, 5),
      SnapshotCache.keyOf("a", "id-1", 1, 6)
    ]
    expect(new Set(keys).size).toBe(keys.length)
  })

  it.scoped("a body over bytes in memory gives them whole (one write), a body over a file does not", () =>
    Effect.gen(function*() {
      const bytes = new Uint8Array(ServerBody.CHUNK_BYTES * 2 + 5).map((_, i) => i % 251)
      const inMemory = ServerBody.ofBytes(bytes)
      expect(ServerBody.bytesOf(inMemory)).toBe(bytes)
      expect(Buffer.compare(yield* ServerBody.readAll(inMemory), bytes)).toBe(0)
      const dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-body-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      Fs.writeFileSync(NodePath.join(dir, "f"), bytes)
      const onFile = yield* ServerBody.ofFile(NodePath.join(dir, "f"), (cause) => new StoreError({ reason: "Storage", message: "read", cause }))
      expect(ServerBody.bytesOf(onFile)).toBeUndefined()
      expect(Buffer.compare(yield* ServerBody.readAll(onFile), bytes)).toBe(0)
    }))
})
