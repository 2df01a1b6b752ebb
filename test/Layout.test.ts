/**
 * The shape of src/: no import cycles, each package entry loads only its part, and the engine's steps stay
 * short enough to read. Imports are read with the TypeScript parser; type-only imports and exports are left
 * out, since they are erased and load nothing at run time.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import ts from "typescript"

const ROOT = NodePath.resolve(import.meta.dirname, "..")
const SRC = NodePath.join(ROOT, "src")

const sourceFiles = (dir: string): Array<string> =>
  Fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = NodePath.join(dir, entry.name)
    return entry.isDirectory() ? sourceFiles(full) : entry.name.endsWith(".ts") ? [full] : []
  })

/** The module specifiers a file loads at run time. */
const runtimeImports = (file: string): Array<string> => {
  const source = ts.createSourceFile(file, Fs.readFileSync(file, "utf8"), ts.ScriptTarget.Latest, false)
  const found: Array<string> = []
  for (const statement of source.statements) {
    if (ts.isImportDeclaration(statement)) {
      const clause = statement.importClause
      if (clause?.isTypeOnly) continue
      const bindings = clause?.namedBindings
      const onlyTypes = clause !== undefined && clause.name === undefined && bindings !== undefined &&
        ts.isNamedImports(bindings) && bindings.elements.length > 0 && bindings.elements.every((e) => e.isTypeOnly)
      if (onlyTypes) continue
      found.push((statement.moduleSpecifier as ts.StringLiteral).text)
    } else if (ts.isExportDeclaration(statement) && statement.moduleSpecifier !== undefined) {
      if (statement.isTypeOnly) continue
      const clause = statement.exportClause
      if (clause !== undefined && ts.isNamedExports(clause) && clause.elements.length > 0 && clause.elements.every((e) => e.isTypeOnly)) {
        continue
      }
      found.push((statement.moduleSpecifier as ts.StringLiteral).text)
    }
  }
  return found
}

interface Graph {
  /** File → the src files it loads. */
  readonly edges: ReadonlyMap<string, ReadonlyArray<string>>
  /** File → the packages it loads. */
  readonly packages: ReadonlyMap<string, ReadonlyArray<string>>
}

const graph = (): Graph => {
  const edges = new Map<string, Array<string>>()
  const packages = new Map<string, Array<string>>()
  for (const file of sourceFiles(SRC)) {
    const specifiers = runtimeImports(file)
    edges.set(
      file,
      specifiers.filter((s) => s.startsWith(".")).map((s) => NodePath.resolve(NodePath.dirname(file), s).replace(/\.js$/, ".ts"))
    )
    packages.set(file, specifiers.filter((s) => !s.startsWith(".")))
  }
  return { edges, packages }
}

/** Every cycle's files, as strongly connected components of more than one file (or a file importing itself). */
const cycles = (edges: ReadonlyMap<string, ReadonlyArray<string>>): Array<Array<string>> => {
  let counter = 0
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: Array<string> = []
  const onStack = new Set<string>()
  const found: Array<Array<string>> = []
  const visit = (v: string) => {
    index.set(v, counter)
    low.set(v, counter)
    counter++
    stack.push(v)
    onStack.add(v)
    for (const w of edges.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v)!, low.get(w)!))
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!))
      }
    }
    if (low.get(v) === index.get(v)) {
      const component: Array<string> = []
      let w: string
      do {
        w = stack.pop()!
        onStack.delete(w)
        component.push(w)
      } while (w !== v)
      if (component.length > 1 || (edges.get(v) ?? []).includes(v)) found.push(component)
    }
  }
  for (const v of edges.keys()) if (!index.has(v)) visit(v)
  return found
}

/** The src files and packages that loading `entry` loads. */
const reach = (g: Graph, entry: string) => {
  const files = new Set<string>()
  const todo = [entry]
  while (todo.length > 0) {
    const file = todo.pop()!
    if (files.has(file)) continue
    files.add(file)
    const next = g.edges.get(file)
    expect(next, `${file} is imported but does not exist`).toBeDefined()
    todo.push(...next!)
  }
  const packages = new Set([...files].flatMap((f) => g.packages.get(f) ?? []))
  return { files: [...files].map((f) => NodePath.relative(ROOT, f)), packages: [...packages] }
}

describe("src layout", () => {
  const g = graph()

  it("the parser sees imports, including re-exports, and leaves type-only ones out", () => {
    const index = runtimeImports(NodePath.join(SRC, "index.ts"))
    expect(index).toContain("./SyncDatabase.js")
    // ChangeReplay imports ChangeCapture and ConflictPolicy for types only.
    const changeReplay = runtimeImports(NodePath.join(SRC, "ChangeReplay.ts"))
    expect(changeReplay).toContain("./internal/replay/replay.js")
    expect(changeReplay).not.toContain("./ChangeCapture.js")
    expect(changeReplay).not.toContain("./ConflictPolicy.js")
  })

  it("has no import cycles", () => {
    expect(cycles(g.edges).map((c) => c.map((f) => NodePath.relative(ROOT, f)).sort())).toEqual([])
  })

  it("finds a cycle when there is one", () => {
    const a = NodePath.join(SRC, "a.ts")
    const b = NodePath.join(SRC, "b.ts")
    const c = NodePath.join(SRC, "c.ts")
    expect(cycles(new Map([[a, [b]], [b, [c]], [c, [a]]]))).toHaveLength(1)
    expect(cycles(new Map([[a, [b]], [b, [c]], [c, []]]))).toHaveLength(0)
  })

  it("the client entry loads neither the server, nor the HTTP server stack, nor the command line", () => {
    const { files, packages } = reach(g, NodePath.join(SRC, "index.ts"))
    expect(files).toContain("src/SyncDatabase.ts")
    expect(files.filter((f) => f.startsWith("src/internal/server/") || f.startsWith("src/internal/cli/"))).toEqual([])
    expect(files).not.toContain("src/ServerStore.ts")
    expect(files).not.toContain("src/SyncServer.ts")
    expect(files).not.toContain("src/Cli.ts")
    expect(packages.filter((p) => p.startsWith("@effect/cli") || p.startsWith("@effect/platform-node"))).toEqual([])
  })

  it("the server and testing entries do not load the command line", () => {
    for (const entry of ["server.ts", "testing.ts"]) {
      const { files, packages } = reach(g, NodePath.join(SRC, entry))
      expect(files).toContain("src/ServerStore.ts")
      expect(files.filter((f) => f.startsWith("src/internal/cli/") || f === "src/Cli.ts")).toEqual([])
      expect(packages.filter((p) => p.startsWith("@effect/cli"))).toEqual([])
    }
  })

  it("no function of the engine is longer than 80 lines", () => {
    const lengths: Array<readonly [string, number]> = []
    const dir = NodePath.join(SRC, "internal", "engine")
    for (const file of sourceFiles(dir)) {
      const source = ts.createSourceFile(file, Fs.readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true)
      const visit = (node: ts.Node) => {
        if (ts.isFunctionLike(node) && "body" in node && node.body !== undefined) {
          const first = source.getLineAndCharacterOfPosition(node.getStart(source)).line
          const last = source.getLineAndCharacterOfPosition(node.getEnd()).line
          lengths.push([`${NodePath.relative(ROOT, file)}:${first + 1}`, last - first + 1])
        }
        ts.forEachChild(node, visit)
      }
      visit(source)
    }
    expect(lengths.length).toBeGreaterThan(20)
    expect(lengths.filter(([, n]) => n >= 80)).toEqual([])
  })
})
