/**
 * Entry point of the `effect-sqlite-sync` binary. `NodeRuntime.runMain` interrupts the program on
 * SIGINT/SIGTERM, so layers close (server stops listening, store closes its files) before exit.
 *
 * @since 0.1.0
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as ValidationError from "@effect/cli/ValidationError"
import * as Effect from "effect/Effect"
import * as Cli from "./Cli.js"

Cli.run(process.argv).pipe(
  // A usage error has been printed already; exit 1 without a stack-trace-like report on top.
  Effect.catchIf(ValidationError.isValidationError, () =>
    Effect.sync(() => {
      process.exitCode = 1
    })),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain
)
