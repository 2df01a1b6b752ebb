import * as NodePath from "node:path"
import { defineConfig } from "vitest/config"

const src = NodePath.join(import.meta.dirname, "src")

export default defineConfig({
  // The examples import the package by name: run them on the sources, as tsconfig.json's "paths" does.
  resolve: {
    alias: [
      { find: /^effect-sqlite-sync$/, replacement: NodePath.join(src, "index.ts") },
      { find: /^effect-sqlite-sync\/(server|testing)$/, replacement: NodePath.join(src, "$1.ts") }
    ]
  },
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Several suites start real servers and write real files; two cores are all CI has.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } }
  }
})
