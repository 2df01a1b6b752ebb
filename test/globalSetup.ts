// Tests spawn the CLI many times: build its bundle once so each start is cheap and runs the current sources.
// One PostgreSQL cluster serves the whole run; suites reach it through `inject("postgresUrl")` and make
// their own database in it (test/support/postgres.ts).
import type { TestProject } from "vitest/node"
import { build } from "../scripts/build-bin.mjs"
import { startPostgres } from "./support/postgres.js"

declare module "vitest" {
  export interface ProvidedContext {
    postgresUrl: string
  }
}

export default async function setup(project: TestProject) {
  await build()
  const postgres = await startPostgres()
  project.provide("postgresUrl", postgres.url)
  return async () => {
    await postgres.stop()
  }
}
