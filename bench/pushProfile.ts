/**
 * Where a push's time goes: the engine's spans (Effect.fn names) summed per name, for a push of N inserts,
 * updates of one column and deletes, the steps' times since the push began, and the server's time answering
 * the push requests (its /metrics). A CPU profile of both processes, with compiled code:
 *
 *   npx tsc -p <a tsconfig emitting src and bench>; node --cpu-prof OUT/bench/pushProfile.js --server-prof DIR
 *
 *   npx tsx bench/pushProfile.ts [--rows 20000] [--server-prof DIR]
 *
 * For each kind it also prints the floor of this design's push: what it cannot do without (the replay onto
 * Synced, the server's time answering the push requests, and the fold of Synced when the push took its WAL
 * past the bound), beside a raw better-sqlite3 insert of the same rows (median of 3) and the libSQL client's
 * push of the same statement on the same server (with the server's time for it): the ratios the issue's
 * targets are stated in, reached by nothing but those steps.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import BetterSqlite3 from "better-sqlite3"
import Database from "libsql"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { startServer } from "./push.js"
import { bulkInsert, CREATE, INSERT, row } from "./rows.js"

const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback
}

const totals = new Map<string, { ms: number; n: number }>()
let recording = false
const marks: Array<[string, number]> = []
const tracer = Tracer.make({
  span: (name, parent, context, links, startTime, kind) => {
    const span: Tracer.Span = {
      _tag: "Span",
      name,
      spanId: Math.random().toString(36).slice(2),
      traceId: "t",
      parent,
      context,
      status: { _tag: "Started", startTime },
      attributes: new Map(),
      links,
      sampled: true,
      kind,
      end: (endTime) => {
        if (!recording) return
        const t = totals.get(name) ?? { ms: 0, n: 0 }
        t.ms += Number(endTime - startTime) / 1e6
        t.n++
        totals.set(name, t)
      },
      attribute: () => {},
      event: () => {},
      addLinks: () => {}
    }
    return span
  },
  context: (f) => f()
})

const metric = async (url: string, name: string) => {
  const text = await (await fetch(`${url}/metrics`)).text()
  const sum = new RegExp(`^${name}_sum(?:\\{[^}]*\\})? (\\S+)`, "m").exec(text)
  return sum ? Number(sum[1]) * 1000 : NaN
}

const main = async () => {
  const n = Number(flag("rows", "20000"))
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-push-prof-"))
  const prof = process.argv.includes("--server-prof") ? flag("server-prof", "/tmp/prof") : undefined
  const server = await startServer(NodePath.join(work, "server"), {
    nodeArgs: prof ? ["--cpu-prof", "--cpu-prof-dir", prof] : [],
    ...(process.env.SERVER_LOG ? { stderr: Fs.openSync(process.env.SERVER_LOG, "w") } : {})
  })
  const scope = Effect.runSync(Scope.make())
  const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) =>
    Effect.runPromise(Scope.extend(effect, scope).pipe(Effect.withTracer(tracer)))
  const db = await run(
    Layer.build(
      SyncDatabase.layer({
        path: NodePath.join(work, "c"),
        url: `${server.url}/db/p`,
        onStep: (step) => Effect.sync(() => {
          if (recording) marks.push([step, performance.now()])
        })
      }).pipe(
        Layer.provide(NodeHttpClient.layerUndici)
      )
    ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
  )
  // the raw reference: n rows inserted in one transaction, median of 3 fresh files
  const rawRuns: Array<number> = []
  for (let i = 0; i < 3; i++) {
    const raw = new BetterSqlite3(NodePath.join(work, `raw-${i}.db`))
    raw.pragma("journal_mode = WAL")
    raw.exec(CREATE)
    const insert = raw.prepare(INSERT)
    const start = performance.now()
    raw.transaction(() => {
      for (let r = 1; r <= n; r++) insert.run(...row(r))
    })()
    rawRuns.push(performance.now() - start)
    raw.close()
  }
  const rawMs = rawRuns.sort((a, b) => a - b)[1]!
  const lib = new Database(NodePath.join(work, "libsql.db"), { syncUrl: `${server.url}/db/libsql`, offline: true } as Database.Options)
  try {
    lib.exec(CREATE)
    lib.sync()
    await run(db.execute(CREATE))
    await run(db.push)
    for (const [kind, statement] of [["inserts", bulkInsert(n)], ["updates", "UPDATE items SET value = value + 1"], ["deletes", "DELETE FROM items"]] as const) {
      await run(db.execute(statement))
      totals.clear()
      marks.length = 0
      const pushBefore = await metric(server.url, "effect_sqlite_sync_push_seconds")
      recording = true
      const start = performance.now()
      const t0 = process.hrtime.bigint() / 1000n
      await run(db.push)
      const ms = performance.now() - start
      console.log(`window ${kind} ${t0} ${process.hrtime.bigint() / 1000n}`)
      recording = false
      const pushMs = (await metric(server.url, "effect_sqlite_sync_push_seconds")) - pushBefore
      console.log(`push of ${n} ${kind}: ${ms.toFixed(1)} ms (server: push requests ${pushMs.toFixed(1)} ms)`)
      const rows = [...totals].filter(([name]) => !name.startsWith("sql.")).sort((a, b) => b[1].ms - a[1].ms).slice(0, 14)
      console.log("  steps: " + marks.map(([step, at]) => `${step} +${(at - start).toFixed(0)}`).join(", "))
      for (const [name, t] of rows) console.log(`  ${name.padEnd(40)} ${t.ms.toFixed(1).padStart(8)} ms  x${t.n}`)
      // the libSQL client's push of the same statement, and the server's time for it
      lib.exec(statement)
      const libBefore = await metric(server.url, "effect_sqlite_sync_push_seconds")
      const libStart = performance.now()
      lib.sync()
      const libMs = performance.now() - libStart
      const libServerMs = (await metric(server.url, "effect_sqlite_sync_push_seconds")) - libBefore
      const span = (name: string) => totals.get(name)?.ms ?? 0
      const replayMs = span("Engine.replayDraftOntoSynced")
      const foldMs = span("Engine.foldSynced")
      const floor = replayMs + pushMs + foldMs
      console.log(
        `  floor: replay ${replayMs.toFixed(0)} + server ${pushMs.toFixed(0)} + fold of Synced ${foldMs.toFixed(0)} = ` +
          `${floor.toFixed(0)} ms: ${(floor / rawMs).toFixed(2)}x raw (${rawMs.toFixed(0)} ms), ` +
          `${(floor / libMs).toFixed(2)}x libSQL (${libMs.toFixed(0)} ms, server ${libServerMs.toFixed(0)} ms); ` +
          `this push ${(ms / rawMs).toFixed(2)}x raw, ${(ms / libMs).toFixed(2)}x libSQL`
      )
    }
  } finally {
    lib.close()
    await Effect.runPromise(Scope.close(scope, Exit.void))
    server.child.kill("SIGINT")
    await new Promise((r) => setTimeout(r, 500))
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e)
  process.exit(1)
})
