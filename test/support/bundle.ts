/**
 * Bundles a child-process script once into plain JavaScript (packages stay external), so that each spawn
 * costs a Node start rather than a TypeScript compile through tsx: on a loaded two-core machine that
 * compile is most of a child's run time.
 */
import * as Effect from "effect/Effect"
import * as esbuild from "esbuild"
import * as Fs from "node:fs"
import * as Path from "node:path"

/** The bundle of `entry` (a path under test/), removed when the scope closes. */
export const bundleScript = (entry: string) =>
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
        packages: "external",
        outfile,
        logLevel: "silent"
      })
      return outfile
    }),
    (file) => Effect.sync(() => Fs.rmSync(file, { force: true }))
  )
