import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"
import * as NodePath from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as StoreRemote from "../src/StoreRemote.js"
import { openClient, tempDir } from "./support/engine.js"

describe("SyncDatabase tracing", () => {
  it.live("every public operation runs in a span named SyncDatabase.<operation>", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const store = yield* ServerStore.makeMemory()
      const db = yield* openClient(StoreRemote.make(store, "traced"), NodePath.join(dir, "traced"))

      // Records the name of every span started, and lets the default tracer do the rest.
      const names: Array<string> = []
      const base = yield* Effect.tracer
      const recording = Tracer.make({
        span: (name, ...rest) => {
          names.push(name)
          return base.span(name, ...rest)
        },
        context: base.context
      })

      yield* Effect.gen(function*() {
        yield* db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        yield* db.execute("INSERT INTO t VALUES (1)")
        expect(yield* db.query("SELECT id FROM t")).toEqual([{ id: 1 }])
        yield* db.push
        yield* db.pull
        yield* db.sync
        yield* db.stats
        yield* db.conflicts
      }).pipe(Effect.withTracer(recording))

      for (const operation of ["execute", "query", "push", "pull", "sync", "stats", "conflicts"]) {
        expect(names).toContain(`SyncDatabase.${operation}`)
      }
    })))
})
