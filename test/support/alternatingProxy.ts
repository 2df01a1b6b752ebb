/**
 * A tiny load balancer for tests: each request goes to the next backend in turn (per request, not per
 * connection: no sticky sessions), and a backend that refuses a connection is left out from then on,
 * as a load balancer's health check would. It runs as its own process (the libSQL client blocks the
 * test's thread while it syncs), prints `Listening on http://HOST:PORT`, and appends one JSON line per
 * request to a log file: `{ method, path, backend, status }`.
 *
 *   node --import tsx test/support/alternatingProxy.ts LOG_FILE BACKEND_URL...
 *
 * `startProxy` starts it from a test.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Path from "node:path"

export interface ProxyLine {
  readonly method: string
  readonly path: string
  /** Index of the backend in the command line. */
  readonly backend: number
  readonly status: number
}

export interface ProxyProcess {
  readonly url: string
  readonly child: ChildProcess.ChildProcess
  readonly lines: () => Array<ProxyLine>
  readonly stop: () => Promise<void>
}

const serve = (logFile: string, backends: ReadonlyArray<string>) => {
  const down = new Set<number>()
  let next = 0
  const agent = new Http.Agent({ keepAlive: true })
  const pick = (): number | undefined => {
    for (let i = 0; i < backends.length; i++) {
      const candidate = (next + i) % backends.length
      if (!down.has(candidate)) {
        next = candidate + 1
        return candidate
      }
    }
    return undefined
  }
  const log = (line: ProxyLine) => Fs.appendFileSync(logFile, JSON.stringify(line) + "\n")
  const server = Http.createServer((request, response) => {
    const backend = pick()
    const path = request.url ?? "/"
    if (backend === undefined) {
      response.writeHead(502, { "content-type": "application/json" }).end(JSON.stringify({ error: "no_backend" }))
      log({ method: request.method ?? "", path, backend: -1, status: 502 })
      return
    }
    const target = new URL(path, backends[backend])
    const upstream = Http.request(target, { method: request.method, headers: request.headers, agent }, (answer) => {
      // Logged before the answer is passed on, so a client that has its answer finds the line.
      log({ method: request.method ?? "", path, backend, status: answer.statusCode ?? 0 })
      response.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(response)
    })
    upstream.on("error", (error: Error & { code?: string }) => {
      // The backend is gone: leave it out from now on. This request fails; its client retries.
      if (error.code === "ECONNREFUSED" || error.code === "ECONNRESET" || error.code === "EPIPE") down.add(backend)
      if (!response.headersSent) {
        response.writeHead(502, { "content-type": "application/json" }).end(JSON.stringify({ error: "bad_gateway" }))
      } else {
        response.destroy()
      }
      log({ method: request.method ?? "", path, backend, status: 502 })
    })
    request.pipe(upstream)
  })
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    if (typeof address === "object" && address !== null) process.stdout.write(`Listening on http://127.0.0.1:${address.port}\n`)
  })
}

/** Starts the proxy process in front of `backends`. */
export const startProxy = (backends: ReadonlyArray<string>, logFile: string): Promise<ProxyProcess> =>
  new Promise((resolve, reject) => {
    Fs.writeFileSync(logFile, "")
    const child = ChildProcess.spawn(process.execPath, ["--import", "tsx", import.meta.filename, logFile, ...backends], {
      stdio: ["ignore", "pipe", "inherit"]
    })
    const exited = new Promise<void>((done) => child.once("exit", () => done()))
    let out = ""
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString()
      const match = /Listening on (http:\/\/\S+)/.exec(out)
      if (match !== null) {
        resolve({
          url: match[1],
          child,
          lines: () =>
            Fs.readFileSync(logFile, "utf8").split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l) as ProxyLine),
          stop: async () => {
            if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
            await exited
          }
        })
      }
    })
    void exited.then(() => reject(new Error(`proxy exited before listening: ${out}`)))
  })

if (process.argv[1] !== undefined && Path.resolve(process.argv[1]) === import.meta.filename) {
  const [logFile, ...backends] = process.argv.slice(2)
  serve(logFile, backends)
}
