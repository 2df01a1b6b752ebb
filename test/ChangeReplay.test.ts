import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as ChangeCapture from "../src/ChangeCapture.js"
import * as ChangeReplay from "../src/ChangeReplay.js"
import { dump, exec, on, open, push, run } from "./support/changeSync.js"

const both = (a: any, b: any, statement: string) => Effect.zipRight(exec(a, statement), exec(b, statement))

describe("ChangeReplay", () => {
  it.scoped("smoke: insert/update/delete replay onto B", () =>
    Effect.gen(function*() {
      const a = yield* open()
      const b = yield* open()
      yield* both(a, b, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
      yield* on(a, ChangeCapture.install)
      yield* run(a, "INSERT INTO t VALUES (1, 'one'), (2, 'two')")
      yield* run(a, "UPDATE t SET v = 'uno' WHERE id = 1")
      yield* run(a, "DELETE FROM t WHERE id = 2")
      const result = yield* push(a, b)
      expect(result.lastChangeId).toBe(4)
      expect(yield* dump(b)).toEqual(yield* dump(a))
      expect(yield* on(b, ChangeReplay.progress("A"))).toBe(4)
    }))
})
