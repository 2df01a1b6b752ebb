// Suites spawn the CLI (bin/effect-sqlite-sync.js runs dist/bin.js) and pack the package: compile dist/ once
// so both run the current sources. The build is incremental, so an unchanged tree costs one type-check.
import * as ChildProcess from "node:child_process"
import * as NodePath from "node:path"

const ROOT = NodePath.resolve(import.meta.dirname, "..")

export default function setup() {
  const tsc = NodePath.join(ROOT, "node_modules", "typescript", "bin", "tsc")
  const result = ChildProcess.spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], {
    cwd: ROOT,
    encoding: "utf8"
  })
  if (result.status !== 0) {
    throw new Error(`npm run build failed:\n${result.stdout}${result.stderr}`)
  }
}
