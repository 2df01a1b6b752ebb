/**
 * Where a push's time goes: the engine's spans (Effect.fn names) summed per name, for a push of N inserts,
 * updates of one column and deletes, the steps' times since the push began, and the server's time answering
 * the push requests (its /metrics). A CPU profile of both processes, with compiled code:
 *
 *   npx tsc -p <a tsconfig emitting src and bench>; node --cpu-prof OUT/bench/pushProfile.js --server-prof DIR
 *
 *   npx tsx bench/pushProfile.ts [--rows 20000] [--server-prof DIR]
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { startServer } from "./push.js"
import { bulkInsert, CREATE } from "./rows.js"

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
  try {
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
    }
  } finally {
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
