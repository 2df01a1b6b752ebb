/**
 * The server's CPU per live write, with no replica of this project's in the figure: the requests a live
 * write costs the server in `bench/live.ts`, made by plain clients. Per write: A's waiting pull is open and
 * is aborted (logged as 499), the libSQL client pushes a one-row transaction (one push request), and B's
 * waiting pull is answered with the new frame and opened again. The server is the compiled one (build
 * `dist` first); its CPU (every thread, user + system) is read from /proc, which hardly moves with the
 * machine's load where wall times do.
 *
 *   npx tsx bench/serverLive.ts [--writes 150] [--before DIR] [--rounds 3]
 *
 * `--before DIR` runs the same against the server of another checkout (DIR, with its dist built and its
 * node_modules), the two alternately, `--rounds` times each.
 */
import * as Http from "node:http"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import { cpuOf, flag, median, oneRowReplica, sleep } from "./serverProcess.js"


/** A waiting pull of frames from `start`: the frames it got (0 for an answer without frames, or an error). */
const waitingPull = (url: string, agent: Http.Agent, generation: number, start: number) => {
  let request: Http.ClientRequest
  const answer = new Promise<number>((resolve) => {
    request = Http.get(`${url}/sync/${generation}/${start}/${start + 100}`, { agent, headers: { prefer: "wait=30" } }, (response) => {
      let bytes = 0
      response.on("data", (chunk: Buffer) => (bytes += chunk.byteLength))
      response.on("end", () => resolve(response.statusCode === 200 ? bytes / 4120 : 0))
      response.on("error", () => resolve(0))
    })
    request.on("error", () => resolve(0))
  })
  return { answer, abort: () => request.destroy() }
}

/** One run against the server of the tree at `root`: the server's CPU per write. */
const runTree = async (root: string, writes: number) => {
  // the compiled server (`npm start`'s): build dist in each tree first
  const { startServer } = await import(NodePath.join(root, "bench", "serverProcess.ts"))
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bench-server-live-"))
  const server = await startServer(NodePath.join(work, "server"), 0)
  const url = `${server.url}/db/live`
  try {
    const { insert, lib } = oneRowReplica(NodePath.join(work, "a.db"), url)
    const info = await (await fetch(`${url}/info`)).json() as { current_generation: number; max_frame_no: number }
    const generation = info.current_generation
    let next = info.max_frame_no + 1
    let stopped = false
    let answered = 0
    const agentA = new Http.Agent({ keepAlive: true, maxSockets: 1 })
    const agentB = new Http.Agent({ keepAlive: true, maxSockets: 1 })
    const b = (async () => {
      while (!stopped) {
        const got = await waitingPull(url, agentB, generation, next).answer
        if (got > 0) {
          next += got
          answered++
        }
      }
    })()
    await sleep(300)
    const cpu = cpuOf(server.child.pid!)
    for (let n = 10; n < 10 + writes; n++) {
      const a = waitingPull(url, agentA, generation, next)
      await sleep(15)
      a.abort()
      insert.run(n, `row ${n}`)
      lib.sync()
      await sleep(15)
    }
    await sleep(200)
    const used = cpuOf(server.child.pid!) - cpu
    stopped = true
    lib.close()
    agentA.destroy()
    agentB.destroy()
    void b
    if (answered < writes) throw new Error(`B's waiting pull was answered ${answered} times for ${writes} writes`)
    return used / writes
  } finally {
    const exited = new Promise((resolve) => server.child.once("exit", resolve))
    server.child.kill("SIGTERM")
    await exited
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

const main = async () => {
  const writes = Number(flag("writes", "150"))
  const before = process.argv.includes("--before") ? NodePath.resolve(flag("before", "")) : undefined
  const after = NodePath.resolve(import.meta.dirname, "..")
  const rounds = Number(flag("rounds", before === undefined ? "1" : "3"))
  const runs = new Map<string, Array<number>>([["after", []], ["before", []]])
  for (let round = 0; round < rounds; round++) {
    console.error(`round ${round + 1}/${rounds} (load ${Os.loadavg()[0]!.toFixed(1)})`)
    if (before !== undefined) runs.get("before")!.push(await runTree(before, writes))
    runs.get("after")!.push(await runTree(after, writes))
  }
  const line = (tree: string) => {
    const values = runs.get(tree)!
    return `${median(values).toFixed(2)} ms (runs: ${values.map((v) => v.toFixed(2)).join(", ")})`
  }
  console.log(`server CPU per live write (A's pull aborted, a one-row push, B's waiting pull answered), ${writes} writes, median of ${rounds}`)
  if (before !== undefined) console.log(`  before (${before}): ${line("before")}`)
  console.log(`  ${before === undefined ? "server" : "after"}: ${line("after")}`)
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
