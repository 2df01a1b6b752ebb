#!/usr/bin/env node
// The `effect-sqlite-sync` command: runs the compiled CLI in dist/ (built by `npm run build`, and by npm itself
// on install from git and before packing).
import { fileURLToPath } from "node:url"

const cli = new URL("../dist/bin.js", import.meta.url)
try {
  await import(cli.href)
} catch (error) {
  if (error?.code === "ERR_MODULE_NOT_FOUND" && String(error.message).includes(fileURLToPath(cli))) {
    console.error(`effect-sqlite-sync: ${fileURLToPath(cli)} is missing; run \`npm run build\` in the package first`)
    process.exit(1)
  }
  throw error
}
