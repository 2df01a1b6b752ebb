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
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import * as Url from "node:url"

const BIN = NodePath.resolve(import.meta.dirname, "..", "bin", "effect-sqlite-sync.js")

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
