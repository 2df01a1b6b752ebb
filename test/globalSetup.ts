// Suites spawn the CLI (bin/effect-sqlite-sync.js runs dist/bin.js) and pack the package: compile dist/ once
// so both run the current sources. The build is incremental, so an unchanged tree costs one type-check.
// One PostgreSQL cluster serves the whole run; suites reach it through `inject("postgresUrl")` and make
// their own database in it (test/support/postgres.ts).
import * as ChildProcess from "node:child_process"
import * as NodePath from "node:path"
import type { TestProject } from "vitest/node"
import { startPostgres } from "./support/postgres.js"

declare module "vitest" {
  export interface ProvidedContext {
    postgresUrl: string
  }
}

const ROOT = NodePath.resolve(import.meta.dirname, "..")

export default async function setup(project: TestProject) {
  const tsc = NodePath.join(ROOT, "node_modules", "typescript", "bin", "tsc")
  const result = ChildProcess.spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], {
    cwd: ROOT,
    encoding: "utf8"
  })
  if (result.status !== 0) {
    throw new Error(`npm run build failed:\n${result.stdout}${result.stderr}`)
  }
  const postgres = await startPostgres()
  project.provide("postgresUrl", postgres.url)
  return async () => {
    await postgres.stop()
  }
}
