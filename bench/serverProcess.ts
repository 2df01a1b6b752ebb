/**
 * The benches' server: the `effect-sqlite-sync serve` binary (embedded SQLite store) as a child process
 * on loopback.
 */
import * as ChildProcess from "node:child_process"
import * as NodePath from "node:path"

const BIN = NodePath.resolve(import.meta.dirname, "..", "bin", "effect-sqlite-sync.js")

/** Starts `serve --data data --port port` (0: any free port); resolves once it prints its URL. */
export const startServer = (data: string, port = 0) =>
  new Promise<{ url: string; child: ChildProcess.ChildProcess }>((resolve, reject) => {
    const child = ChildProcess.spawn(
      process.execPath,
      [BIN, "serve", "--host", "127.0.0.1", "--port", String(port), "--data", data],
      { stdio: ["ignore", "pipe", "ignore"] }
    )
    let out = ""
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString()
      const m = /Listening on (http:\/\/\S+)/.exec(out)
      if (m) resolve({ url: m[1], child })
    })
    child.once("exit", (code) => reject(new Error(`server exited ${code}`)))
  })
