/**
 * The server's request accounting and a waiter's wait, below the HTTP tests (SyncServer.test.ts,
 * LivePull.test.ts): a request counted through `recordRequest` lands in the series `Effect.tagMetrics`
 * around `Metric` updates would, the check's time is seconds, and `awaitWake` answers a wake, a timeout
 * and an interruption.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as CommitNotify from "../src/internal/server/commitNotify.js"
import * as serverMetrics from "../src/internal/server/serverMetrics.js"

/** The Prometheus lines of the server's metrics that start with `name`. */
const lines = (name: string) =>
  Effect.map(Metric.snapshot, (pairs) => serverMetrics.renderPrometheus(pairs).split("\n").filter((l) => l.startsWith(name)))

const valueOf = (all: ReadonlyArray<string>, series: string) => {
  const line = all.find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

const record = (route: string, status: number) =>
  Effect.withFiberRuntime<void>((fiber) => {
    serverMetrics.recordRequest(fiber.getFiberRef(FiberRef.currentMetricLabels), {
      route,
      status,
      seconds: 0.5,
      waited: 0.2,
      frames: 3,
      bytes: 12_360
    })
    return Effect.void
  })

describe("ServerMetrics", () => {
  it.effect("a request counts under its route and status, and the fiber's own labels come first", () =>
    Effect.gen(function*() {
      const route = "GET /sync/{G}/{start}/{end}"
      const requests = `effect_sqlite_sync_requests_total{route="${route}",status="200"}`
      const tagged = `effect_sqlite_sync_requests_total{app="metrics-test",route="${route}",status="200"}`
      const sent = `effect_sqlite_sync_frames_total{direction="pull"}`
      const before = yield* lines("effect_sqlite_sync_")
      yield* record(route, 200)
      yield* record(route, 200)
      yield* Effect.tagMetrics(record(route, 200), "app", "metrics-test")
      // What `Effect.tagMetrics` around `Metric.increment` counts under: the same series.
      yield* Effect.tagMetrics(Metric.increment(serverMetrics.requests), { app: "metrics-test", route, status: "200" })
      const after = yield* lines("effect_sqlite_sync_")
      expect(valueOf(after, requests) - valueOf(before, requests)).toBe(2)
      expect(valueOf(after, tagged) - valueOf(before, tagged)).toBe(2)
      expect(valueOf(after, sent) - valueOf(before, sent)).toBe(6)
      // a pull's serving time leaves its wait out: 0.5 s minus 0.2 s waited
      const sum = "effect_sqlite_sync_pull_seconds_sum"
      expect(valueOf(after, sum) - valueOf(before, sum)).toBeCloseTo(0.6, 6)
    }))

  it.live("the check's time is recorded in seconds", () =>
    Effect.gen(function*() {
      const before = yield* lines("effect_sqlite_sync_check_seconds")
      yield* serverMetrics.timeCheck(Effect.sleep("30 millis"))
      const after = yield* lines("effect_sqlite_sync_check_seconds")
      const added = valueOf(after, "effect_sqlite_sync_check_seconds_sum") - valueOf(before, "effect_sqlite_sync_check_seconds_sum")
      expect(valueOf(after, "effect_sqlite_sync_check_seconds_count") - valueOf(before, "effect_sqlite_sync_check_seconds_count")).toBe(1)
      expect(Number.isFinite(added)).toBe(true)
      expect(added).toBeGreaterThanOrEqual(0.025)
      expect(added).toBeLessThan(5)
    }))
})

describe("CommitNotify.awaitWake", () => {
  const head = { generation: 1, maxFrameNo: 7 }

  it.live("answers a wake that came before it, one during it, and None when the time runs out", () =>
    Effect.gen(function*() {
      const notifier = CommitNotify.make()
      const early = notifier.add("db", 1, 5)
      notifier.notify("db", head)
      expect(yield* CommitNotify.awaitWake(early, 10_000)).toEqual(Option.some(head))

      const during = notifier.add("db", 1, 7)
      const waiting = yield* Effect.fork(CommitNotify.awaitWake(during, 10_000))
      yield* Effect.sleep("20 millis")
      notifier.notify("db", undefined)
      expect(yield* Fiber.join(waiting)).toEqual(Option.some(undefined))
      expect(during.onWake).toBeUndefined()

      const idle = notifier.add("db", 1, 7)
      const started = Date.now()
      expect(yield* CommitNotify.awaitWake(idle, 50)).toEqual(Option.none())
      expect(Date.now() - started).toBeGreaterThanOrEqual(40)
      // a later wake changes nothing for a wait that ended
      notifier.notify("db", head)
      expect(idle.onWake).toBeUndefined()
      for (const w of [early, during, idle]) notifier.remove(w)
      expect(notifier.size()).toBe(0)
    }))

  it.live("interrupting it ends it at once and leaves nothing to call", () =>
    Effect.gen(function*() {
      const notifier = CommitNotify.make()
      const waiter = notifier.add("db", 1, 7)
      const waiting = yield* Effect.fork(CommitNotify.awaitWake(waiter, 60_000))
      yield* Effect.sleep("20 millis")
      expect(waiter.onWake).toBeDefined()
      const started = Date.now()
      yield* Fiber.interrupt(waiting)
      expect(Date.now() - started).toBeLessThan(1000)
      expect(waiter.onWake).toBeUndefined()
      // a wake after it ended is kept for the next wait and calls nothing
      const moved = { generation: 1, maxFrameNo: 8 }
      notifier.notify("db", moved)
      expect(waiter.reported).toEqual({ head: moved })
      notifier.remove(waiter)
    }))
})
