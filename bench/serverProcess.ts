/**
 * The benches' server: the `effect-sqlite-sync serve` binary (embedded SQLite store) as a child process
 * on loopback.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import type { HttpClient } from "@effect/platform/HttpClient"
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import Database from "libsql"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Url from "node:url"

// `BENCH_SERVER_ROOT=DIR`: the server of another checkout (its dist built), beside this tree's clients
const BIN = NodePath.resolve(process.env.BENCH_SERVER_ROOT ?? NodePath.resolve(import.meta.dirname, ".."), "bin", "effect-sqlite-sync.js")

/** `BENCH_SERVER_NODE_ARGS`: node options for every bench server (say `--cpu-prof --cpu-prof-dir=DIR`). */
const envNodeArgs = (process.env.BENCH_SERVER_NODE_ARGS ?? "").split(" ").filter((a) => a !== "")

/**
 * Starts `serve --data data --port port` (0: any free port); resolves once it prints its URL. `nodeArgs` go
 * to its node (a CPU profile; by default those of `BENCH_SERVER_NODE_ARGS`).
 */
export const startServer = (data: string, port = 0, nodeArgs: ReadonlyArray<string> = envNodeArgs) =>
  new Promise<{ url: string; child: ChildProcess.ChildProcess }>((resolve, reject) => {
    const child = ChildProcess.spawn(
      process.execPath,
      [...nodeArgs, BIN, "serve", "--host", "127.0.0.1", "--port", String(port), "--data", data],
      // `BENCH_SERVER_LOG=FILE`: its request log (stderr) appended to FILE
      { stdio: ["ignore", "pipe", process.env.BENCH_SERVER_LOG === undefined ? "ignore" : Fs.openSync(process.env.BENCH_SERVER_LOG, "a")] }
    )
    let out = ""
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString()
      const m = /Listening on (http:\/\/\S+)/.exec(out)
      if (m) resolve({ url: m[1], child })
    })
    child.once("exit", (code) => reject(new Error(`server exited ${code}`)))
  })

/** The value after `--name` on the command line, or `fallback`. */
export const flag = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export const median = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)]!

/** utime + stime of a process (every thread), in ms (clock ticks of 10 ms). */
export const cpuOf = (pid: number) => {
  const fields = Fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12])) * 10
}

/**
 * A libSQL client replica of a small database (the live bench's table) synced with `syncUrl`, after ten
 * one-row transactions each synced, so what follows sees the server's steady state (check worker, caches).
 * `insert.run(n, body)` then `lib.sync()` is one push request of a one-row transaction.
 */
export const oneRowReplica = (path: string, syncUrl: string) => {
  const lib = new Database(path, { syncUrl, offline: true } as Database.Options)
  lib.exec("CREATE TABLE items (n INTEGER NOT NULL, body TEXT)")
  lib.sync()
  const insert = lib.prepare("INSERT INTO items VALUES (?, ?)")
  for (let n = 0; n < 10; n++) {
    insert.run(n, `row ${n}`)
    lib.sync()
  }
  return { lib, insert }
}

/** What a bench file run alone gets: a server of its own, an HTTP client, a scratch directory, a scope. */
export interface Alone {
  readonly serverUrl: string
  readonly http: Context.Context<HttpClient>
  readonly work: string
  readonly scope: Scope.Scope
}

/**
 * Runs `body` with a server of its own, an HTTP client, a scratch directory and a scope; everything is
 * stopped and removed afterwards, whatever `body` does.
 */
export const withServer = async <A>(name: string, body: (alone: Alone) => Promise<A>): Promise<A> => {
  const work = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), `ess-${name}-`))
  const server = await startServer(NodePath.join(work, "server"))
  const scope = Effect.runSync(Scope.make())
  try {
    const http = await Effect.runPromise(Scope.extend(Layer.build(NodeHttpClient.layerUndici), scope))
    return await body({ serverUrl: server.url, http, work, scope })
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    server.child.kill("SIGTERM")
    Fs.rmSync(work, { recursive: true, force: true })
  }
}

/** Ends the process when `main` settles: status 0, or 1 with the error printed. */
export const exitWith = (main: Promise<unknown>) =>
  main.then(() => process.exit(0), (error) => {
    console.error(error)
    process.exit(1)
  })

/**
 * Runs `body` when the module at `moduleUrl` is the script node was started with (a bench file run alone),
 * with a server of its own (`withServer`), and exits.
 */
export const runAlone = (moduleUrl: string, name: string, body: (alone: Alone) => Promise<void>) => {
  if (process.argv[1] === undefined || moduleUrl !== Url.pathToFileURL(process.argv[1]).href) return
  exitWith(withServer(name, body))
}
