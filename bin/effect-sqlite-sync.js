#!/usr/bin/env node
// Runs the CLI from the bundle that `npm install` builds (dist/bin.mjs) when it is at least as new as every
// source file, and otherwise straight from the TypeScript sources through tsx, so an edited checkout never
// runs stale code.
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const bundle = path.join(root, "dist", "bin.mjs")

const newestSource = (dir) => {
  let newest = 0
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestSource(full) : fs.statSync(full).mtimeMs)
  }
  return newest
}

const bundleIsFresh = () => {
  try {
    return fs.statSync(bundle).mtimeMs >= newestSource(path.join(root, "src"))
  } catch {
    return false
  }
}

if (bundleIsFresh()) {
  await import(pathToFileURL(bundle).href)
} else {
  const { register } = await import("tsx/esm/api")
  register()
  await import("../src/bin.ts")
}
