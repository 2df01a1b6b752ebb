/**
 * Bundles a child-process script once into plain JavaScript (packages stay external), so that each spawn
 * costs a Node start rather than a TypeScript compile through tsx: on a loaded two-core machine that
 * compile is most of a child's run time.
 */
import * as Effect from "effect/Effect"
import * as esbuild from "esbuild"
import * as Fs from "node:fs"
import * as Path from "node:path"

/**
 * The bundle of `entry` (a path under test/), removed when the scope closes. With `inlinePackages`, the
 * packages are bundled too (all but better-sqlite3, a native addon), which halves a child's start-up
 * CPU again: Node then loads one file instead of resolving hundreds of Effect modules.
 */
export const bundleScript = (entry: string, options: { readonly inlinePackages?: boolean } = {}) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      // Inside the package, so that the bundle's imports resolve from node_modules.
      const outfile = Path.resolve(
        import.meta.dirname,
        "..",
        "..",
        "node_modules",
        ".cache",
        `ess-${Path.basename(entry, ".ts")}-${process.pid}-${Math.random().toString(36).slice(2)}.mjs`
      )
      await esbuild.build({
        entryPoints: [entry],
        bundle: true,
        platform: "node",
        format: "esm",
        outfile,
        ...(options.inlinePackages === true
          ? {
            external: ["better-sqlite3"],
            // Bundled CommonJS packages call require, which an ES module lacks.
            banner: {
              js: `import { createRequire as __createRequire } from "node:module"; const require = __createRequire(import.meta.url);`
            }
          }
          : { packages: "external" as const }),
        logLevel: "silent"
      })
      return outfile
    }),
    (file) => Effect.sync(() => Fs.rmSync(file, { force: true }))
  )
