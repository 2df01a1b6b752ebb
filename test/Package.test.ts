/**
 * The package as a user gets it: `npm pack`, the tarball installed into a new project, then a plain Node
 * program, a TypeScript consumer (`moduleResolution: nodenext`) and the command line, all through the
 * package's `exports` and `bin` (dist/, never src/).
 *
 * Installing stays offline and cheap: the new project starts with hard links to the repository's own
 * installed dependencies (better-sqlite3 already compiled), and npm adds only the tarball.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"

const ROOT = NodePath.resolve(import.meta.dirname, "..")
const NPM_CLI = NodePath.join(NodePath.dirname(process.execPath), "..", "lib", "node_modules", "npm", "bin", "npm-cli.js")
const TSC = NodePath.join(ROOT, "node_modules", "typescript", "bin", "tsc")

interface Ran {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const run = (command: string, args: ReadonlyArray<string>, cwd: string, env: Record<string, string> = {}) =>
  new Promise<Ran>((resolve) => {
    ChildProcess.execFile(
      command,
      args,
      // npm runs offline: everything it needs is in the project already or in its cache.
      { cwd, timeout: 120_000, env: { ...process.env, npm_config_offline: "true", npm_config_update_notifier: "false", ...env } },
      (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr })
    )
  })

const npm = (args: ReadonlyArray<string>, cwd: string) =>
  Fs.existsSync(NPM_CLI) ? run(process.execPath, [NPM_CLI, ...args], cwd) : run("npm", args, cwd)

/**
 * The installed packages the tarball needs (its dependencies and required peers, transitively), as top-level
 * names. A package nested in another's node_modules comes along with that one's tree, but what it needs
 * from the top level is counted too.
 */
const closure = (names: ReadonlyArray<string>): Array<string> => {
  const seen = new Set<string>()
  const visited = new Set<string>()
  // Node's lookup: the nearest node_modules from the requiring package up to the repository's.
  const resolve = (name: string, from: string): string | undefined => {
    for (let dir = from; dir.startsWith(ROOT); dir = NodePath.dirname(dir)) {
      const candidate = NodePath.join(dir, "node_modules", name)
      if (Fs.existsSync(candidate)) return candidate
      if (dir === ROOT) break
    }
    return undefined
  }
  const visit = (name: string, from: string) => {
    const dir = resolve(name, from)
    if (dir === undefined || visited.has(dir)) return // an optional dependency for another platform
    visited.add(dir)
    if (dir === NodePath.join(ROOT, "node_modules", name)) seen.add(name)
    const json = JSON.parse(Fs.readFileSync(NodePath.join(dir, "package.json"), "utf8"))
    const optionalPeers = json.peerDependenciesMeta ?? {}
    for (const dep of Object.keys(json.dependencies ?? {})) visit(dep, dir)
    for (const dep of Object.keys(json.optionalDependencies ?? {})) visit(dep, dir)
    for (const dep of Object.keys(json.peerDependencies ?? {})) if (optionalPeers[dep]?.optional !== true) visit(dep, dir)
  }
  for (const name of names) visit(name, ROOT)
  return [...seen]
}

/** Hard links of a directory tree (falls back to copies across file systems). */
const linkTree = (from: string, to: string) => {
  Fs.mkdirSync(to, { recursive: true })
  for (const entry of Fs.readdirSync(from, { withFileTypes: true })) {
    const source = NodePath.join(from, entry.name)
    const target = NodePath.join(to, entry.name)
    if (entry.isDirectory()) linkTree(source, target)
    else if (entry.isSymbolicLink()) Fs.symlinkSync(Fs.readlinkSync(source), target)
    else {
      try {
        Fs.linkSync(source, target)
      } catch {
        Fs.copyFileSync(source, target)
      }
    }
  }
}

const APP_MJS = `
import { NodeHttpClient } from "@effect/platform-node"
import { Context, Effect, Layer, Logger, LogLevel } from "effect"
import { SyncDatabase } from "effect-sqlite-sync"
import { ServerStore, SyncServer } from "effect-sqlite-sync/server"
import * as Path from "node:path"

const replica = (url, path) =>
  Layer.build(SyncDatabase.layer({ path, url }).pipe(Layer.provide(NodeHttpClient.layerUndici))).pipe(
    Effect.map(Context.get(SyncDatabase.SyncDatabase))
  )

const program = Effect.gen(function*() {
  const url = yield* SyncServer.databaseUrl("notes")
  const alice = yield* replica(url, Path.resolve("alice.db"))
  const bob = yield* replica(url, Path.resolve("bob.db"))
  yield* alice.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
  yield* alice.execute("INSERT INTO notes VALUES (?, ?)", ["n1", "from alice"])
  yield* alice.sync
  yield* bob.sync
  console.log(JSON.stringify(yield* bob.query("SELECT id, body FROM notes")))
})

await program.pipe(
  Effect.scoped,
  Effect.provide(SyncServer.layerNode({ host: "127.0.0.1", port: 0 })),
  // The disk store: better-sqlite3 and the store's check worker, as a deployed server runs them.
  Effect.provide(ServerStore.layer({ directory: Path.resolve("server-data") })),
  Logger.withMinimumLogLevel(LogLevel.Warning),
  Effect.runPromise
)
`

const CONSUMER_TS = `
import { NodeHttpClient } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { SyncDatabase, SyncError } from "effect-sqlite-sync"
import { ServerStore, SyncServer } from "effect-sqlite-sync/server"

export const Server: Layer.Layer<never, unknown> = SyncServer.layerNode({ port: 8080 }).pipe(
  Layer.provide(ServerStore.layer({ directory: "./data" }))
)

export const Database = SyncDatabase.layer({ path: "./notes.db", url: "http://127.0.0.1:8080/db/notes" }).pipe(
  Layer.provide(NodeHttpClient.layerUndici)
)

export const program: Effect.Effect<number, SyncError.SyncError, SyncDatabase.SyncDatabase> = Effect.gen(function*() {
  const db = yield* SyncDatabase.SyncDatabase
  const result: SyncDatabase.ExecuteResult = yield* db.execute("INSERT INTO notes (body) VALUES (?)", ["hi"])
  yield* db.sync.pipe(
    Effect.catchTag("NetworkError", (error: SyncError.NetworkError) => Effect.logWarning(error.message))
  )
  return result.changes
})

// The types are real, not any: an unknown tag is an error.
// @ts-expect-error
export const wrong = program.pipe(Effect.catchTag("NoSuchError", () => Effect.void))

export const main: Effect.Effect<number, SyncError.SyncError> = program.pipe(Effect.provide(Database))
`

const CONSUMER_TSCONFIG = {
  compilerOptions: {
    target: "ES2022",
    module: "nodenext",
    moduleResolution: "nodenext",
    strict: true,
    exactOptionalPropertyTypes: true,
    skipLibCheck: true,
    noEmit: true,
    types: ["node"]
  },
  files: ["consumer.ts"]
}

// Records every module the program resolves (in the loader thread, hence a file).
const HOOKS_MJS = `
import * as fs from "node:fs"
let log
export function initialize(data) { log = data.log }
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context)
  fs.appendFileSync(log, resolved.url + "\\n")
  return resolved
}
`
const REGISTER_MJS = `
import { register } from "node:module"
register("./hooks.mjs", import.meta.url, { data: { log: process.env.MODULE_LOG } })
`

// The four checks are independent child processes: run them side by side.
describe.concurrent("the packed package in a new project", () => {
  let dir = ""
  let project = ""

  beforeAll(async () => {
    dir = Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-package-"))
    project = NodePath.join(dir, "app")
    // The build is fresh (globalSetup compiled dist/), so pack skips the build scripts.
    const packed = await npm(["pack", "--ignore-scripts", "--json", "--pack-destination", dir], ROOT)
    expect(packed.code, packed.stderr).toBe(0)
    const [{ filename, files }] = JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>
    const paths = files.map((f) => f.path)
    expect(paths).toEqual(expect.arrayContaining(["LICENSE", "README.md", "docs/guide.md", "dist/index.js", "dist/index.d.ts", "dist/server.js", "dist/testing.js", "bin/effect-sqlite-sync.js"]))
    expect(paths.filter((p) => /^(src|test|bench|examples)\/|tsbuildinfo|\.tgz$/.test(p))).toEqual([])

    const pkg = JSON.parse(Fs.readFileSync(NodePath.join(ROOT, "package.json"), "utf8"))
    Fs.mkdirSync(project)
    Fs.writeFileSync(
      NodePath.join(project, "package.json"),
      JSON.stringify({ name: "app", private: true, type: "module", devDependencies: { "@types/node": "*" } })
    )
    for (const name of closure([...Object.keys(pkg.dependencies), ...Object.keys(pkg.peerDependencies), "@types/node"])) {
      linkTree(NodePath.join(ROOT, "node_modules", name), NodePath.join(project, "node_modules", name))
    }
    const installed = await npm(
      ["install", NodePath.join(dir, filename), "--offline", "--no-audit", "--no-fund", "--ignore-scripts"],
      project
    )
    expect(installed.code, installed.stdout + installed.stderr).toBe(0)
    Fs.writeFileSync(NodePath.join(project, "app.mjs"), APP_MJS)
    Fs.writeFileSync(NodePath.join(project, "consumer.ts"), CONSUMER_TS)
    Fs.writeFileSync(NodePath.join(project, "tsconfig.json"), JSON.stringify(CONSUMER_TSCONFIG))
    Fs.writeFileSync(NodePath.join(project, "hooks.mjs"), HOOKS_MJS)
    Fs.writeFileSync(NodePath.join(project, "register.mjs"), REGISTER_MJS)
    Fs.writeFileSync(NodePath.join(project, "client.mjs"), `import { SyncDatabase } from "effect-sqlite-sync"\nconsole.log(typeof SyncDatabase.layer)\n`)
    Fs.writeFileSync(NodePath.join(project, "server.mjs"), `import { SyncServer } from "effect-sqlite-sync/server"\nconsole.log(typeof SyncServer.layer)\n`)
  }, 120_000)

  afterAll(() => {
    if (dir !== "") Fs.rmSync(dir, { recursive: true, force: true })
  })

  it("a plain .mjs imports the client and the server, serves on loopback and syncs a row between two replicas", async () => {
    const result = await run(process.execPath, ["app.mjs"], project)
    expect(result.code, result.stderr).toBe(0)
    expect(JSON.parse(result.stdout)).toEqual([{ id: "n1", body: "from alice" }])
    // The disk store wrote its files where the app asked.
    expect(Fs.existsSync(NodePath.join(project, "server-data", "notes"))).toBe(true)
  }, 120_000)

  it("a TypeScript consumer with moduleResolution nodenext type-checks against the shipped .d.ts", async () => {
    const result = await run(process.execPath, [TSC, "-p", "tsconfig.json"], project)
    expect(result.code, result.stdout + result.stderr).toBe(0)
  }, 120_000)

  it("npx effect-sqlite-sync --help runs the installed command", async () => {
    const result = await npm(["exec", "--offline", "--", "effect-sqlite-sync", "--help"], project)
    expect(result.code, result.stderr).toBe(0)
    expect(result.stdout).toContain("effect-sqlite-sync")
    for (const command of ["serve", "query", "exec", "push", "pull"]) expect(result.stdout).toContain(command)
  }, 120_000)

  it("importing the client loads neither the server, the HTTP server stack nor @effect/cli", async () => {
    const loaded = async (program: string) => {
      const log = NodePath.join(dir, `${program}.log`)
      const result = await run(process.execPath, ["--import", "./register.mjs", program], project, { MODULE_LOG: log })
      expect(result.code, result.stderr).toBe(0)
      return Fs.readFileSync(log, "utf8").split("\n").filter((url) => url !== "")
    }
    const isServerSide = (url: string) =>
      /\/effect-sqlite-sync\/dist\/(server|testing|SyncServer|ServerStore|StoreRemote|FaultInjection|Cli|bin)\.js$/.test(url) ||
      /\/effect-sqlite-sync\/dist\/internal\/(server|cli)\//.test(url) ||
      url.includes("/node_modules/@effect/cli/") ||
      url.includes("/node_modules/@effect/platform-node/") ||
      /\/@effect\/platform\/dist\/esm\/(HttpServer|HttpRouter|HttpApp)/.test(url)
    const [client, server] = await Promise.all([loaded("client.mjs"), loaded("server.mjs")])
    expect(client.some((url) => url.endsWith("/effect-sqlite-sync/dist/SyncDatabase.js"))).toBe(true)
    expect(client.filter(isServerSide)).toEqual([])
    // The same check sees the server when it is imported.
    expect(server.filter(isServerSide)).toEqual(expect.arrayContaining([expect.stringMatching(/dist\/SyncServer\.js$/)]))
  }, 120_000)
})
