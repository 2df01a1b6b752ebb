/**
 * Issue 6, fault injection: every fault point of bootstrap + pull, pull, push and sync is failed once.
 *
 * For each scenario a clean run counts the operations (file operations through `SyncFiles`, remote calls
 * through the `SyncRemote` wrapper); then, for k = 1..N, a fresh setup runs the operation with the k-th
 * one failed: remote calls with each of dropRequest, dropAnswer, cutBody; file operations "before" or
 * "after" alternately (FAULTS=all: both). Afterwards the local database must answer
 * queries and pass integrity_check with every local row still there; retrying (in the same process, then
 * after reopening the files) must converge: the remote and the client hold exactly the expected rows,
 * nothing lost, nothing twice.
 *
 * The scenarios run over the in-process store (every point) and bootstrap and push over real HTTP (remote
 * calls, renames and writes). In "pull watched" a reactive query watches the victim throughout (a pull then
 * shows the pulled rows from Synced and makes its copy with writes held): its last rows must end equal to
 * the converged table. FAULT_DEBUG=1 prints each case.
 */
import { expect, layer } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as FaultInjection from "../src/FaultInjection.js"
import * as SyncFiles from "../src/SyncFiles.js"
import type * as SyncRemote from "../src/SyncRemote.js"
import { Harness, freshName, layerHttp, layerStore, openClient, remoteQuery } from "./support/engine.js"

// Hundreds of cases with dozens of fsyncs each: on tmpfs when there is one (same semantics, no disk wait).
const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(NodePath.join(Fs.existsSync("/dev/shm") ? "/dev/shm" : Os.tmpdir(), "ess-fault-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

const ALL = process.env.FAULTS === "all"

type Scenario = "bootstrap" | "pull" | "pull watched" | "push" | "push at head" | "sync" | "pull across rolls"

const faultsFor = (operation: string): ReadonlyArray<FaultInjection.Fault> =>
  operation.startsWith("remote.")
    ? ["dropRequest", "dropAnswer", "cutBody"]
    : operation === "open" || operation === "close" || operation === "fsync"
    ? ["before"]
    : ["before", "after"]

interface Row {
  readonly k: string
  readonly n: number
}

const T = "SELECT k, n FROM t ORDER BY k"
const LOG = "SELECT v FROM log ORDER BY v"

/**
 * One case: a writer client and the victim on a fresh remote database. The remote has rows w-0, w-1
 * (and w-2, w-3 pushed after the victim opened); the victim writes v-1, v-2 (not in pull-only runs from
 * nothing). `fault` undefined: a clean run that only counts.
 */
const runCase = (
  remoteOf: (name: string) => Effect.Effect<SyncRemote.Service>,
  scenario: Scenario,
  fault: { readonly at: number; readonly fault: FaultInjection.Fault } | undefined
) =>
  Effect.gen(function*() {
    const plan = FaultInjection.makePlan()
    const faultyFiles = FaultInjection.files(plan)
    const name = freshName(`fault-${scenario.replace(/ /g, "-")}`)
    const remote = yield* remoteOf(name)
    const victimRemote = FaultInjection.remote(plan, remote)
    const dir = yield* tempDir
    const path = NodePath.join(dir, "victim")
    const withFaults = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.suspend(() => {
        if (fault === undefined) plan.disarm()
        else plan.arm(fault.at, fault.fault)
        return Effect.provideService(effect, SyncFiles.SyncFiles, faultyFiles)
      }).pipe(Effect.ensuring(Effect.sync(() => {
        counted = [...plan.operations]
        plan.disarm()
      })))
    let counted: ReadonlyArray<string> = []
    // The reactive query's last rows ("pull watched").
    let watched: ReadonlyArray<Row> | undefined

    const writer = yield* openClient(remote, NodePath.join(dir, "writer"))
    yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
    yield* writer.execute("CREATE TABLE log (v TEXT)")
    for (const k of ["w-0", "w-1"]) {
      yield* writer.execute("INSERT INTO t VALUES (?, 1)", [k])
      yield* writer.execute("INSERT INTO log VALUES (?)", [k])
    }
    yield* writer.push

    const expectedT: Array<Row> = [{ k: "w-0", n: 1 }, { k: "w-1", n: 1 }]
    const expectedLog = ["w-0", "w-1"]
    const sortRows = () => {
      expectedT.sort((a, b) => a.k < b.k ? -1 : 1)
      expectedLog.sort()
    }

    // Each victim lives in its own scope so it can be closed and reopened.
    const openVictim = Effect.gen(function*() {
      const scope = yield* Scope.make()
      // Tiny WAL bounds: the operations fold both copies, so the fold's file steps are failed too. Not at
      // the head: a push there starts at the synced frame, which such a fold leaves in Synced's file.
      const bounds = scenario === "push at head" ? {} : { maxWalFrames: 1 }
      const db = yield* Scope.extend(openClient(victimRemote, path, bounds), scope).pipe(
        Effect.onError(() => Scope.close(scope, Exit.void))
      )
      if (scenario === "pull watched") {
        const first = yield* Deferred.make<void>()
        yield* db.reactive<Row>(T).pipe(
          Stream.runForEach((rows) => Effect.zipRight(Effect.sync(() => (watched = rows)), Deferred.succeed(first, undefined))),
          Effect.ignore,
          Effect.forkIn(scope)
        )
        yield* Deferred.await(first)
      }
      return { db, close: Scope.close(scope, Exit.void) }
    })

    let victim: Effect.Effect.Success<typeof openVictim> | undefined
    let outcome: Exit.Exit<unknown, unknown>
    if (scenario === "bootstrap") {
      outcome = yield* Effect.exit(withFaults(Effect.gen(function*() {
        victim = yield* openVictim
        yield* victim.db.pull
      })))
    } else {
      victim = yield* openVictim
      yield* victim.db.pull
      yield* victim.db.execute("INSERT INTO t VALUES ('v-1', 1)")
      yield* victim.db.execute("INSERT INTO log (rowid, v) VALUES (1001, 'v-1')")
      yield* victim.db.execute("UPDATE t SET n = n + 10 WHERE k = 'w-0'")
      yield* victim.db.execute("INSERT INTO t VALUES ('v-2', 2)")
      yield* victim.db.execute("INSERT INTO log (rowid, v) VALUES (1002, 'v-2')")
      expectedT.push({ k: "v-1", n: 1 }, { k: "v-2", n: 2 })
      expectedT[0] = { k: "w-0", n: 11 }
      expectedLog.push("v-1", "v-2")
      if (scenario === "push at head") {
        // The victim pushed once since it opened (its remote says it checks identities): its next push,
        // with the remote where it left it, goes at the head without a pull.
        yield* victim.db.push
        yield* victim.db.execute("INSERT INTO t VALUES ('v-3', 3)")
        yield* victim.db.execute("INSERT INTO log (rowid, v) VALUES (1003, 'v-3')")
        expectedT.push({ k: "v-3", n: 3 })
        expectedLog.push("v-3")
      } else {
        // The remote moves on meanwhile: the victim's push must pull and replay first.
        yield* writer.execute("INSERT INTO t VALUES ('w-2', 1)")
        yield* writer.execute("INSERT INTO log VALUES ('w-2')")
        yield* writer.execute("UPDATE t SET n = n + 100 WHERE k = 'w-1'")
        yield* writer.push
        expectedT.push({ k: "w-2", n: 1 })
        expectedT[1] = { k: "w-1", n: 101 }
        expectedLog.push("w-2")
      }
      sortRows()
      const db = victim.db
      outcome = yield* Effect.exit(withFaults(scenario === "pull" || scenario === "pull watched" || scenario === "pull across rolls" ? db.pull : scenario.startsWith("push") ? db.push : db.sync))
    }
    sortRows()
    const fired = plan.fired
    const where = `${scenario} ${fault === undefined ? "clean" : `${fault.fault} at ${fault.at} (${fired?.operation})`}`

    // 1. Right after the failure, in the same process: readable, consistent, local rows all there.
    if (victim !== undefined) {
      const db = victim.db
      expect(yield* db.query("PRAGMA integrity_check"), where).toEqual([{ integrity_check: "ok" }])
      const rows = scenario === "bootstrap" ? [] : yield* db.query<Row>(T)
      yield* db.query("SELECT count(*) FROM sqlite_master")
      if (scenario !== "bootstrap") {
        // Local writes are never lost: every v-row is visible; w-rows are those pulled so far.
        for (const row of expectedT.filter((r) => r.k.startsWith("v-"))) expect(rows, where).toContainEqual(row)
      }
      expect(new Set(rows.map((r) => r.k)).size, where).toBe(rows.length)
    }

    // The remote moves on again before the retry: a change of the victim applied twice (once by the
    // failed operation, once by the retry) would overwrite this update with its old after-image.
    // Every remote.push the operation made reached the remote, except one whose request was dropped.
    const pushes = counted.flatMap((operation, i) => operation === "remote.push" ? [i + 1] : [])
    // (At the head, the victim's update went with its push before the faults.)
    const applied = scenario === "push at head" ||
      pushes.some((at) => !(fault !== undefined && fault.at === at && fault.fault === "dropRequest"))
    if (scenario !== "bootstrap") {
      yield* writer.sync
      yield* writer.execute("UPDATE t SET n = n + 1000 WHERE k = 'w-0'")
      yield* writer.push
      // Last push wins: the victim's update (1 -> 11), if it was not applied yet, is pushed after this one.
      expectedT[expectedT.findIndex((r) => r.k === "w-0")] = { k: "w-0", n: applied ? 1011 : 11 }
    }

    // 2. Retry in the same process (or open again when opening failed).
    if (victim === undefined) {
      victim = yield* openVictim
    }
    yield* victim.db.sync
    yield* writer.sync
    expect(yield* remoteQuery(remote, T), where).toEqual(expectedT)
    expect((yield* remoteQuery<{ v: string }>(remote, LOG)).map((r) => r.v), where).toEqual(expectedLog)
    expect(yield* victim.db.query(T), where).toEqual(expectedT)
    expect((yield* victim.db.query<{ v: string }>(LOG)).map((r) => r.v), where).toEqual(expectedLog)
    expect(yield* writer.query(T), where).toEqual(expectedT)
    expect((yield* victim.db.stats).pendingChanges, where).toBe(0)
    if (scenario === "pull watched") {
      // The watcher was shown the pulled rows (from Synced, then Draft) and ends on the converged table.
      yield* Effect.sleep("10 millis").pipe(Effect.repeat({ until: () => JSON.stringify(watched) === JSON.stringify(expectedT), times: 500 }))
      expect(watched, where).toEqual(expectedT)
    }

    // 3. Reopen the files (recovery on open) and sync again: nothing changes.
    yield* victim.close
    const reopened = yield* openVictim
    expect(yield* reopened.db.query("PRAGMA integrity_check"), where).toEqual([{ integrity_check: "ok" }])
    yield* reopened.db.sync
    expect(yield* reopened.db.query(T), where).toEqual(expectedT)
    expect((yield* reopened.db.query<{ v: string }>(LOG)).map((r) => r.v), where).toEqual(expectedLog)
    expect(yield* remoteQuery(remote, T), where).toEqual(expectedT)
    expect((yield* remoteQuery<{ v: string }>(remote, LOG)).map((r) => r.v), where).toEqual(expectedLog)
    yield* reopened.close

    return { counted, fired, failed: Exit.isFailure(outcome), where, outcome }
  }).pipe(Effect.scoped)

/** Counts the points of `scenario`, then fails each with every fault that applies. */
const enumerate = (
  remoteOf: (name: string) => Effect.Effect<SyncRemote.Service>,
  scenario: Scenario,
  filter: (operation: string, fault: FaultInjection.Fault) => boolean = () => true
) =>
  Effect.gen(function*() {
    const clean = yield* runCase(remoteOf, scenario, undefined)
    expect(clean.failed, String(clean.outcome)).toBe(false)
    const points = clean.counted
    const started = Date.now()
    if (process.env.FAULT_DEBUG) console.log(scenario, points.join(","))
    let cases = 0
    let failedOps = 0
    for (let at = 1; at <= points.length; at++) {
      const kinds = faultsFor(points[at - 1]).filter((fault) => filter(points[at - 1], fault))
      // Remote calls (a few) always get every fault. By default a file operation fails once, "before" or
      // "after" alternating with k; FAULTS=all fails it both ways.
      const chosen = ALL || points[at - 1].startsWith("remote.") || kinds.length === 0 ? kinds : [kinds[at % kinds.length]]
      for (const fault of chosen) {
        const result = yield* runCase(remoteOf, scenario, { at, fault })
        expect(result.fired?.operation, result.where).toBe(points[at - 1])
        cases++
        if (result.failed) failedOps++
        if (process.env.FAULT_DEBUG) console.log(result.where, result.failed, Date.now() - started)
      }
    }
    const summary = { scenario, points: points.length, cases, failedOps, operations: summarize(points) }
    console.log(`fault points ${JSON.stringify(summary)}`)
    return summary
  })

const summarize = (points: ReadonlyArray<string>) => {
  const counts: Record<string, number> = {}
  for (const p of points) counts[p] = (counts[p] ?? 0) + 1
  return counts
}

const scenarios: ReadonlyArray<Scenario> = ["bootstrap", "pull", "pull watched", "push", "push at head", "sync", "pull across rolls"]

layer(layerStore, { excludeTestServices: true, timeout: 300_000 })("fault injection, in-process store", (it) => {
  for (const scenario of scenarios) {
    it.scoped(`${scenario}: every file operation and remote call failed once converges`, () =>
      Effect.gen(function*() {
        const harness = yield* Harness
        // "pull across rolls": the store starts a new generation every few frames, so the victim's pull
        // follows rolls (the old generation's frames written into Synced's file, flagged, its WAL removed).
        const summary = yield* enumerate((name) => harness.remote(name, { rolling: scenario === "pull across rolls" }), scenario)
        expect(summary.points).toBeGreaterThan(10)
        // At the head, the push is its one request (and `/info` once, asked by no pull since the open).
        if (scenario === "push at head") expect(summary.operations["remote.pull"]).toBeUndefined()
        else expect(summary.operations["remote.pull"]).toBeGreaterThan(0)
        expect(summary.cases).toBeGreaterThanOrEqual(summary.points)
      }), 600_000)
  }
})

layer(layerHttp, { excludeTestServices: true, timeout: 300_000 })("fault injection, real HTTP", (it) => {
  for (const scenario of ["bootstrap", "push", "push at head"] as const) {
    it.scoped(`${scenario}: every remote call, rename and write failed once converges`, () =>
      Effect.gen(function*() {
        const harness = yield* Harness
        const summary = yield* enumerate(
          (name) => harness.remote(name),
          scenario,
          (operation) => operation.startsWith("remote.") || operation === "rename" || operation === "write"
        )
        expect(summary.points).toBeGreaterThan(10)
      }), 600_000)
  }
})

layer(layerStore, { excludeTestServices: true, timeout: 120_000 })("fault injection, regressions", (it) => {
  it.scoped("a roll whose file steps fail after its flag is finished by the next pull (not built on the old base)", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remoteOf = (name: string) => harness.remote(name, { rolling: true })
      const clean = yield* runCase(remoteOf, "pull across rolls", undefined)
      const ops = clean.counted
      // The roll: the old generation's frames written into Synced's file, the roll flagged in metadata (a
      // metadata write: temp file written, fsynced, renamed, directory fsynced), then Synced's WAL and -shm
      // removed. Fail the first of those removals.
      const at = ops.findIndex((op, i) =>
        i >= 4 && op === "remove" && ops[i + 1] === "remove" &&
        ops[i - 4] === "rename" && ops[i - 3] === "open" && ops[i - 2] === "fsync" && ops[i - 1] === "close"
      ) + 1
      expect(at).toBeGreaterThan(0)
      const result = yield* runCase(remoteOf, "pull across rolls", { at, fault: "before" })
      expect(result.failed).toBe(true)
    }))

  it.scoped("a generation base cut short is refused at bootstrap, and opening again converges", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("cut-base"), { rolling: true })
      const dir = yield* tempDir
      const writer = yield* openClient(remote, NodePath.join(dir, "writer"))
      yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
      for (let i = 0; i < 6; i++) {
        yield* writer.execute("INSERT INTO t VALUES (?, randomblob(3000))", [`w-${i}`])
        yield* writer.push
      }
      const { generation } = yield* remote.info
      const base = yield* remote.export(generation)
      // The base holds the table: cutting it in half (whole pages, so no transport check sees it) loses rows.
      expect(generation).toBeGreaterThan(1)
      expect(base.byteLength).toBeGreaterThanOrEqual(4 * 4096)

      const plan = FaultInjection.makePlan()
      const path = NodePath.join(dir, "victim")
      // The bootstrap's first request: the head snapshot, asked for at once.
      plan.arm(1, "cutBody")
      const cut = FaultInjection.remote(plan, remote)
      const opened = yield* Effect.exit(Effect.scoped(openClient(cut, path)))
      // A new replica takes the head snapshot as its one file (the generation's base when there is none).
      expect(plan.fired?.operation).toBe(remote.snapshot === undefined ? "remote.export" : "remote.snapshot")
      const error = Exit.isFailure(opened) ? Option.getOrUndefined(Cause.failureOption(opened.cause)) : undefined
      expect(error).toMatchObject({ _tag: "BootstrapError", reason: "InvalidBase" })
      plan.disarm()
      const victim = yield* openClient(remote, path)
      yield* victim.pull
      expect(yield* victim.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
      expect(yield* victim.query("SELECT k FROM t ORDER BY k")).toEqual(yield* writer.query("SELECT k FROM t ORDER BY k"))
    }))
})
