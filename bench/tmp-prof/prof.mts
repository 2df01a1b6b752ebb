import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as ChildProcess from "node:child_process"
import * as SyncDatabase from "/work/wt/live-client/src/SyncDatabase.js"
const BIN = "/work/wt/live-client/bin/effect-sqlite-sync.js"
const work = Fs.mkdtempSync("/tmp/lc/prof")
const child = ChildProcess.spawn(process.execPath, [BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--data", work + "/s"], { stdio: ["ignore", "pipe", "ignore"] })
const url: string = await new Promise((r) => { let o = ""; child.stdout!.on("data", (c) => { o += c; const m = /Listening on (\S+)/.exec(o); if (m) r(m[1]) }) })
const scope = Effect.runSync(Scope.make())
let marks: Array<[string, number]> = []
const onStep = (step: string) => Effect.sync(() => { marks.push([step, performance.now()]) })
const open = (p: string) => Layer.buildWithScope(SyncDatabase.layer({ path: p, url: url + "/db/x", onStep }).pipe(Layer.provide(NodeHttpClient.layerUndici)), scope).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)), Effect.runPromise)
const a = await open(work + "/a")
const b = await open(work + "/b")
await Effect.runPromise(a.execute("CREATE TABLE items (n INTEGER, body TEXT)"))
await Effect.runPromise(a.sync); await Effect.runPromise(b.sync)
const t = async (label: string, e: Effect.Effect<any, any>) => { const s = performance.now(); await Effect.runPromise(e); return performance.now() - s }
const rows: any[] = []
for (let i = 0; i < 20; i++) {
  const w = await t("exec", a.execute("INSERT INTO items VALUES (?, 'x')", [i]))
  const push = await t("push", a.push)
  const pullA = await t("pullA", a.pull)
  marks = [["start", performance.now()]]
  const pullB = await t("pullB", b.pull)
  marks.push(["end", performance.now()])
  if (i % 5 === 0) console.log(marks.map(([s, at], k) => k === 0 ? s : `${s} +${(at - marks[k - 1][1]).toFixed(0)}`).join(" "))
  rows.push({ w: w.toFixed(1), push: push.toFixed(1), pullA: pullA.toFixed(1), pullB: pullB.toFixed(1) })
}
console.table(rows)
child.kill()
process.exit(0)
