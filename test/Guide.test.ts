/**
 * docs/guide.md stays true: every TypeScript block in it is an example file included verbatim (checked
 * here; `tsc` type-checks the files), the guide's test example runs as part of this suite, and the
 * programs run: `npm run example`'s examples/basic.ts, the app of examples/guide/app.ts against a real
 * server, and the CLI workflow examples/workflow.sh.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as NodePath from "node:path"
import { serverProcess } from "./support/process.js"
// The guide's own test example registers its tests here.
import "../examples/guide/notes.test.js"

const ROOT = NodePath.resolve(import.meta.dirname, "..")
const GUIDE = NodePath.join(ROOT, "docs", "guide.md")
const README = NodePath.join(ROOT, "README.md")

/** Every fenced block of `lang` with the `<!-- include: path -->` line right before it (if any). */
const blocks = (markdown: string, lang: string) => {
  const found: Array<{ include: string | undefined; code: string; line: number }> = []
  const lines = markdown.split("\n")
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== "```" + lang) continue
    const start = i
    const code: Array<string> = []
    for (i++; i < lines.length && lines[i].trim() !== "```"; i++) code.push(lines[i])
    const previous = lines.slice(0, start).reverse().find((l) => l.trim() !== "")
    const include = previous === undefined ? undefined : /^<!-- include: (\S+) -->$/.exec(previous.trim())?.[1]
    found.push({ include, code: code.join("\n"), line: start + 1 })
  }
  return found
}

const run = (command: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.promise(() =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      ChildProcess.execFile(command, args, { cwd: ROOT, timeout: 300_000, env: { ...process.env, ...env } }, (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr }))
    })
  )

const tsx = NodePath.join(ROOT, "node_modules", "tsx", "dist", "cli.mjs")

describe("docs/guide.md", () => {
  it("every TypeScript block is an example file, verbatim", () => {
    const markdown = Fs.readFileSync(GUIDE, "utf8")
    const ts = blocks(markdown, "ts")
    expect(ts.length).toBeGreaterThanOrEqual(3)
    for (const block of ts) {
      expect(block.include, `guide.md:${block.line}: a ts block without <!-- include: examples/... -->`).toMatch(
        /^examples\/.+\.ts$/
      )
      const file = Fs.readFileSync(NodePath.join(ROOT, block.include!), "utf8")
      expect(block.code, `guide.md:${block.line} differs from ${block.include}`).toBe(file.replace(/\n$/, ""))
    }
    // The README's program is the guide's first one.
    const readme = blocks(Fs.readFileSync(README, "utf8"), "ts")
    expect(readme.map((b) => b.include)).toEqual(["examples/start/main.ts"])
    expect(readme[0].code).toBe(Fs.readFileSync(NodePath.join(ROOT, "examples/start/main.ts"), "utf8").replace(/\n$/, ""))
    // The shell workflow is shown whole too.
    for (const block of blocks(markdown, "sh").filter((b) => b.include !== undefined)) {
      const file = Fs.readFileSync(NodePath.join(ROOT, block.include!), "utf8")
      expect(block.code, `guide.md:${block.line} differs from ${block.include}`).toBe(file.replace(/\n$/, ""))
    }
  })

  it.live("npm run example: examples/basic.ts runs with no setup and both replicas converge", () =>
    Effect.gen(function*() {
      const result = yield* run(process.execPath, [tsx, "examples/basic.ts"])
      expect(result.code, result.stderr).toBe(0)
      const seen = result.stdout.split("\n").filter((l) => l.includes("sees:")).map((l) => l.replace(/^.*sees:\s*/, ""))
      expect(seen).toHaveLength(2)
      expect(seen[0]).toBe(seen[1])
      expect(JSON.parse(seen[0])).toEqual([
        { id: "n1", author: "alice", body: "buy oat milk" },
        { id: "n2", author: "bob", body: "call mom" }
      ])
      expect(result.stdout).toContain("alice: 0 pending changes")
    }), { timeout: 180_000 })

  it.scoped("examples/start/main.ts, the first program of the guide and README, syncs rows between two replicas", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-guide-"))),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const env = { NOTES_DB: NodePath.join(dir, "notes.db"), SYNC_URL: `${server.url}/db/notes` }
      const rows = (stdout: string) => stdout.split("hello from my app").length - 1
      const first = yield* run(process.execPath, [tsx, "examples/start/main.ts"], env)
      expect(first.code, first.stderr).toBe(0)
      expect(rows(first.stdout)).toBe(1)
      const second = yield* run(process.execPath, [tsx, "examples/start/main.ts"], env)
      expect(rows(second.stdout)).toBe(2)
      const other = yield* run(process.execPath, [tsx, "examples/start/main.ts"], { ...env, NOTES_DB: NodePath.join(dir, "other.db") })
      expect(other.code, other.stderr).toBe(0)
      expect(rows(other.stdout)).toBe(3)
    }), { timeout: 180_000 })

  it.scoped("examples/guide/app.ts syncs its note to a real server; offline it keeps the note pending", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-guide-"))),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const env = { NOTES_DB: NodePath.join(dir, "notes.db"), SYNC_URL: `${server.url}/db/notes` }
      const first = yield* run(process.execPath, [tsx, "examples/guide/app.ts"], env)
      expect(first.code, first.stderr).toBe(0)
      expect(first.stdout).toBe("1 notes, 0 not pushed yet\n")
      const second = yield* run(process.execPath, [tsx, "examples/guide/app.ts"], env)
      expect(second.stdout).toBe("2 notes, 0 not pushed yet\n")
      server.child.kill("SIGTERM")
      yield* Effect.promise(() => server.exited)
      const offline = yield* run(process.execPath, [tsx, "examples/guide/app.ts"], env)
      expect(offline.code, offline.stderr).toBe(0)
      expect(offline.stdout).toMatch(/^offline, will sync later: .*\n3 notes, 1 not pushed yet\n$/)
    }), { timeout: 180_000 })

  it.scoped("examples/guide/background.ts: autoSync pushes the note in the background, then the app exits", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(NodePath.join(Os.tmpdir(), "ess-guide-"))),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const env = { NOTES_DB: NodePath.join(dir, "notes.db"), SYNC_URL: `${server.url}/db/notes` }
      const result = yield* run(process.execPath, [tsx, "examples/guide/background.ts"], env)
      expect(result.code, result.stderr).toBe(0)
      expect(result.stdout).toMatch(/all local changes are on the server\n$/)
      // The server has it: the app of section 2, on another replica, sees the note after its sync.
      const other = yield* run(process.execPath, [tsx, "examples/guide/app.ts"], { ...env, NOTES_DB: NodePath.join(dir, "other.db") })
      expect(other.stdout).toBe("2 notes, 0 not pushed yet\n")
    }), { timeout: 180_000 })

  it.live("examples/workflow.sh: the CLI workflow runs to the end and both replicas agree", () =>
    Effect.gen(function*() {
      const result = yield* run("bash", ["examples/workflow.sh"])
      expect(result.code, result.stdout + result.stderr).toBe(0)
      expect(result.stdout).toContain("converged")
    }), { timeout: 420_000 })
})
