/**
 * Runs `node bin/effect-sqlite-sync.js serve ...` as a child process and reads the URL it prints.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Effect from "effect/Effect"

export const BIN = Path.resolve(import.meta.dirname, "..", "..", "bin", "effect-sqlite-sync.js")

export interface ServerProcess {
  readonly child: ChildProcess.ChildProcess
  readonly url: string
  readonly stderr: () => string
  /** Everything the server printed on stdout so far. */
  readonly stdout: () => string
  /** Resolves with the exit code and signal once the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/**
 * Starts the server. With `stderrFile`, its log goes to that file (readable by other processes while
 * this thread is blocked, say inside a synchronous libSQL call) instead of a pipe.
 */
export const spawnServer = (
  args: ReadonlyArray<string>,
  options: {
    readonly stderrFile?: string
    /** Run as this user and group (the test process must be root to switch). */
    readonly uid?: number
    readonly gid?: number
    /** Added to this process's environment. */
    readonly env?: Record<string, string>
    /** Options for node itself, before the script (say `--cpu-prof`). */
    readonly nodeArgs?: ReadonlyArray<string>
  } = {}
): Promise<ServerProcess> =>
  new Promise((resolve, reject) => {
    const defaults = [
      ...(args.includes("--host") ? [] : ["--host", "127.0.0.1"]),
      ...(args.includes("--port") || options.env?.PORT !== undefined ? [] : ["--port", "0"])
    ]
    const logFd = options.stderrFile === undefined ? undefined : Fs.openSync(options.stderrFile, "a")
    const child = ChildProcess.spawn(process.execPath, [...(options.nodeArgs ?? []), BIN, "serve", ...defaults, ...args], {
      stdio: ["ignore", "pipe", logFd ?? "pipe"],
      ...(options.uid === undefined ? {} : { uid: options.uid, gid: options.gid ?? options.uid }),
      ...(options.env === undefined ? {} : { env: { ...process.env, ...options.env } })
    })
    if (logFd !== undefined) Fs.closeSync(logFd)
    let stdout = ""
    let piped = ""
    let listening = false
    const stderr = () => options.stderrFile === undefined ? piped : Fs.readFileSync(options.stderrFile, "utf8")
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
      child.once("exit", (code, signal) => done({ code, signal }))
    )
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`server did not print its URL in time; stderr: ${stderr()}`))
    }, 120_000)
    child.stderr?.on("data", (chunk: Buffer) => {
      piped += chunk.toString()
    })
    child.stdout!.on("data", (chunk: Buffer) => {
      stdout += chunk.toString()
      const match = /Listening on (http:\/\/\S+)/.exec(stdout)
      if (match !== null) {
        clearTimeout(timer)
        listening = true
        resolve({ child, url: match[1], stderr, stdout: () => stdout, exited })
      }
    })
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      // Once listening, an exit is the test's business; the log file may already be deleted by then, and
      // reading it here would be an unhandled rejection that fails the whole run.
      if (!listening) reject(new Error(`server exited (${code ?? signal}) before listening; stderr: ${stderr()}`))
    })
  })

/** A scoped server process, SIGKILLed on scope close if still running. */
export const serverProcess = (args: ReadonlyArray<string>, options: Parameters<typeof spawnServer>[1] = {}) =>
  Effect.acquireRelease(
    Effect.promise(() => spawnServer(args, options)),
    (server) =>
      Effect.promise(async () => {
        if (server.child.exitCode === null && server.child.signalCode === null) {
          server.child.kill("SIGKILL")
          await server.exited
        }
      })
  )

/** Runs the binary to completion (for argument errors). */
export const runBin = (
  args: ReadonlyArray<string>,
  env: Record<string, string> = {}
): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    ChildProcess.execFile(process.execPath, [BIN, ...args], { timeout: 120_000, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr })
    })
  })

/** A loopback port that was free a moment ago (nothing listens on it). */
export const freePort = (): Promise<number> =>
  new Promise((resolve) => {
    const probe = Net.createServer()
    probe.listen(0, "127.0.0.1", () => {
      const port = (probe.address() as Net.AddressInfo).port
      probe.close(() => resolve(port))
    })
  })
