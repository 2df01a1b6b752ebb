/**
 * `serve` checks that it can listen before it creates anything: a port in use must not leave a new data
 * directory behind, and must read as one line, not as a ServeError with a stack.
 */
import * as Effect from "effect/Effect"
import * as Net from "node:net"

/** One line naming why listening on host:port failed. */
export const describeListenError = (host: string, port: number, error: unknown): string => {
  const code = typeof error === "object" && error !== null && "code" in error ? String(error.code) : undefined
  switch (code) {
    case "EADDRINUSE":
      return `port ${port} is in use (on ${host}); stop the other server or pick another --port`
    case "EACCES":
      return `no permission to listen on port ${port}; ports below 1024 need privileges`
    case "EADDRNOTAVAIL":
      return `cannot listen on ${host}: not an address of this machine`
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `cannot listen on ${host}: host not found`
  }
  const message = error instanceof Error ? error.message : String(error)
  return `cannot listen on ${host}:${port}: ${message}`
}

/** Listens on host:port and closes at once: fails with the socket's error when the server could not listen. */
export const probe = (host: string, port: number): Effect.Effect<void, unknown> =>
  Effect.async<void, unknown>((resume) => {
    const server = Net.createServer()
    server.once("error", (error) => resume(Effect.fail(error)))
    server.listen({ host, port, exclusive: true }, () => server.close(() => resume(Effect.void)))
  })
