/**
 * Entry point of the `effect-sqlite-sync` binary. `NodeRuntime.runMain` interrupts the program on
 * SIGINT/SIGTERM, so layers close (server stops listening, store closes its files) before exit.
 * Exit status (`Cli.teardown`): 0 success, 1 failure, 2 bad usage; every error is printed once, by the
 * command or by @effect/cli, never as a stack-trace-like report on top.
 *
 * @since 0.1.0
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import * as Cli from "./Cli.js"

Cli.run(process.argv).pipe(
  Effect.provide(NodeContext.layer),
  // No pretty logger: it would print every log line a second time, on stdout, which carries only what a
  // script may read (`serve` logs to stderr through `Cli.layerLogger`).
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true, teardown: Cli.teardown })
)
