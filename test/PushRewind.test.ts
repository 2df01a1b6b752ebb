import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import * as WalFrame from "../src/WalFrame.js"
import { openClient, remoteQuery, tempDir } from "./support/engine.js"

// A pusher that lost its baton session after the server acknowledged some of its pending frames looks,
// to the server, just like a newcomer pushing at head + 1 once others' commits end exactly at one of those
// frames. The server then answers "ok, max_frame_no = head - 1": send frame `head` again. Our engine must
// resend from there (the frames it pulled) instead of treating it as a conflict forever.
describe("push after the server rewinds", () => {
  it.live("a client whose push is answered with a rewind resends from the server's frame and lands", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const store = yield* ServerStore.makeMemory({ batonIdleMs: 200 })
      const remote = StoreRemote.make(store, "rewind")

      // A lost pusher: a large transaction of which only uncommitted frames reach the server.
      const base = yield* store.exportGeneration("rewind", 1)
      const file = NodePath.join(dir, "lost.db")
      Fs.writeFileSync(file, base)
      const lost = new BetterSqlite3(file)
      lost.pragma("wal_autocheckpoint = 0")
      lost.exec("CREATE TABLE big(b BLOB); WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 30) INSERT INTO big SELECT randomblob(3000) FROM s")
      const lostFrames = Option.getOrThrow(WalFrame.parse(new Uint8Array(Fs.readFileSync(`${file}-wal`)))).frames
      lost.close()
      const pendingCount = lostFrames.length - 1
      // One frame a request, so the server acknowledges every frame number while they are pending.
      let baton: string | undefined
      for (let n = 1; n <= pendingCount; n++) {
        const answer = yield* store.push("rewind", 1, n, n + 1, [lostFrames[n - 1]], baton)
        expect(answer).toMatchObject({ _tag: "Ok", maxFrameNo: n })
        baton = answer._tag === "Ok" ? answer.baton : undefined
      }
      yield* Effect.sleep("400 millis") // its session idles out

      // Our client commits at frame 1 (its commit ends inside the lost pusher's acknowledged range) ...
      const client = yield* openClient(remote, NodePath.join(dir, "client"), { maxPushRounds: 3 })
      yield* client.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
      yield* client.execute("INSERT INTO t VALUES (1, 'one')")
      yield* client.push
      const head = (yield* store.info("rewind")).maxFrameNo
      expect(head).toBeGreaterThan(0)
      expect(head).toBeLessThan(pendingCount)

      // ... so its next push, at head + 1, is answered with a rewind; it must still land, exactly once.
      const direct = yield* store.push("rewind", 1, head + 1, head + 2, [lostFrames[0]])
      expect(direct).toEqual({ _tag: "Ok", generation: 1, maxFrameNo: head - 1 })
      yield* client.execute("INSERT INTO t VALUES (2, 'two')")
      expect(yield* client.push).toBe(true)
      expect(yield* remoteQuery(remote, "SELECT id, v FROM t ORDER BY id")).toEqual([
        { id: 1, v: "one" },
        { id: 2, v: "two" }
      ])
      expect((yield* client.stats).pendingChanges).toBe(0)
    })))
})
