/**
 * The server's share of a push: the CPU time the server process (every thread: the check worker too)
 * spends on the libSQL client's push of N inserts, updates of one column and deletes, including what it
 * does just after answering (the store's checkpoint), beside the wall time of that push. CPU time hardly
 * moves with the machine's load, where wall times on a busy machine do; the libSQL client keeps this
 * project's client out of the figure. Then the server's CPU per one-row transaction (`--one-row` N of them, 0:
 * none): the libSQL client inserts a row and syncs (one push request: with writes pending, its sync does not pull), N times, on a small
 * database (the live bench's writes); the CPU of all N divided by N, and the median wall time of a sync.
 *
 *   npx tsx bench/pushServer.ts [--rows 20000,100000] [--one-row 200] [--before DIR] [--rounds 2] [--cpu-prof DIR]
 *
 * `--before DIR` runs the same against the server of another checkout (DIR, with its node_modules), the two
 * alternately, `--rounds` times each. The server is the compiled one (`bin/effect-sqlite-sync.js`, as `npm
 * start` runs it): build `dist` in each tree first. `--cpu-prof DIR` writes a CPU profile of this tree's server (every
 * thread) into DIR.
 */
import Database from "libsql"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import { cpuOf, flag, median, oneRowReplica, sleep } from "./serverProcess.js"


/** One run against the server of the tree at `root`: a line per size and kind. */
const runTree = async (
  root: string,
  sizes: ReadonlyArray<number>,
  oneRow: number,
  nodeArgs?: ReadonlyArray<string>
) => {
  // the compiled server (`npm start`'s): build dist in each tree first
  const { startServer } = await import(NodePath.join(root, "bench", "serverProcess.ts"))
  const { bulkInsert, CREATE } = await import(NodePath.join(root, "bench", "rows.ts"))
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-bench-push-server-"))
  const server = await startServer(NodePath.join(work, "server"), 0, ...(nodeArgs === undefined ? [] : [nodeArgs]))
  const lines: Array<{ what: string; cpu: number; wall: number }> = []
  try {
    for (const n of sizes) {
      const lib = new Database(NodePath.join(work, `libsql-${n}.db`), {
        syncUrl: `${server.url}/db/libsql-${n}`,
        offline: true
      } as Database.Options)
      lib.exec(CREATE)
      lib.sync()
      for (const [kind, statement] of [["inserts", bulkInsert(n)], ["updates of one column", "UPDATE items SET value = value + 1"], ["deletes", "DELETE FROM items"]] as const) {
        lib.exec(statement)
        await sleep(400)
        const cpu = cpuOf(server.child.pid!)
        const start = performance.now()
        lib.sync()
        const wall = performance.now() - start
        // the work the server does right after its answer (the store's checkpoint) counts too
        await sleep(600)
        lines.push({ what: `libSQL push of ${n} ${kind}`, cpu: cpuOf(server.child.pid!) - cpu, wall })
      }
      lib.close()
    }
    if (oneRow > 0) {
      // the live bench's table and writes: a small database, one row a transaction
      const { insert, lib } = oneRowReplica(NodePath.join(work, "libsql-one-row.db"), `${server.url}/db/libsql-one-row`)
      await sleep(400)
      const walls: Array<number> = []
      const cpu = cpuOf(server.child.pid!)
      for (let n = 10; n < 10 + oneRow; n++) {
        insert.run(n, `row ${n}`)
        const start = performance.now()
        lib.sync()
        walls.push(performance.now() - start)
      }
      await sleep(200)
      lines.push({
        what: `libSQL sync of a one-row insert (one push request), per sync of ${oneRow}`,
        cpu: (cpuOf(server.child.pid!) - cpu) / oneRow,
        wall: median(walls)
      })
      lib.close()
    }
  } finally {
    const exited = new Promise((resolve) => server.child.once("exit", resolve))
    server.child.kill("SIGTERM")
    await exited
    Fs.rmSync(work, { recursive: true, force: true })
  }
  return lines
}

const main = async () => {
  const sizes = flag("rows", "20000,100000").split(",").filter((n) => n !== "").map(Number)
  const oneRow = Number(flag("one-row", "200"))
  const before = process.argv.includes("--before") ? NodePath.resolve(flag("before", "")) : undefined
  const after = NodePath.resolve(import.meta.dirname, "..")
  const rounds = Number(flag("rounds", before === undefined ? "1" : "2"))
  const runs = new Map<string, Array<Awaited<ReturnType<typeof runTree>>>>([["after", []], ["before", []]])
  for (let round = 0; round < rounds; round++) {
    console.error(`round ${round + 1}/${rounds} (load ${Os.loadavg()[0]!.toFixed(1)})`)
    if (before !== undefined) runs.get("before")!.push(await runTree(before, sizes, oneRow))
    const profile = process.argv.includes("--cpu-prof") ? NodePath.resolve(flag("cpu-prof", "")) : undefined
    runs.get("after")!.push(
      await runTree(after, sizes, oneRow, profile === undefined ? undefined : ["--cpu-prof", `--cpu-prof-dir=${profile}`])
    )
  }
  const summary = (tree: string, what: string) => {
    const lines = runs.get(tree)!.map((rows) => rows.find((row) => row.what === what)!)
    if (lines.length === 0) return ""
    const digits = what.includes("one-row") ? 1 : 0
    return `cpu ${median(lines.map((l) => l.cpu)).toFixed(digits)} ms, wall ${median(lines.map((l) => l.wall)).toFixed(digits)} ms`
  }
  console.log(`server CPU time per push, medians of ${rounds} run(s)` + (before === undefined ? "" : ` (before: ${before})`))
  console.table(runs.get("after")![0]!.map(({ what }) => ({
    measurement: what,
    ...(before === undefined ? {} : { before: summary("before", what) }),
    [before === undefined ? "server" : "after"]: summary("after", what)
  })))
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
