/**
 * The `effect-sqlite-sync` command line. `serve` runs the sync server on the embedded SQLite store;
 * further subcommands (pull, push, sync, ...) are added to `command` with `Command.withSubcommands`.
 *
 * @since 0.1.0
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as ServerStore from "./ServerStore.js"
import * as SyncServer from "./SyncServer.js"

// Printed here because @effect/cli prints only the errors of its own parsing.
const invalid = (message: string) =>
  Effect.zipRight(Console.error(message), Effect.fail(ValidationError.invalidValue(HelpDoc.p(message))))

/**
 * Logs to stderr, so stdout carries only what a script may read (the `Listening on` line).
 *
 * @since 0.1.0
 * @category logging
 */
export const layerLogger = (format: "logfmt" | "json"): Layer.Layer<never> =>
  Logger.replace(
    Logger.defaultLogger,
    Logger.withConsoleError(format === "json" ? Logger.jsonLogger : Logger.logfmtLogger)
  )

/**
 * `effect-sqlite-sync serve`: serves every database under `--data` until SIGINT or SIGTERM.
 *
 * @since 0.1.0
 * @category commands
 */
export const serve = Command.make(
  "serve",
  {
    host: Options.text("host").pipe(Options.withDefault("127.0.0.1"), Options.withDescription("address to listen on")),
    port: Options.integer("port").pipe(
      Options.withDefault(8080),
      Options.withDescription("port to listen on (0 picks a free one)")
    ),
    data: Options.text("data").pipe(
      Options.withDefault("./data"),
      Options.withDescription("directory holding the databases")
    ),
    authToken: Options.redacted("auth-token").pipe(
      Options.optional,
      Options.withDescription("require 'Authorization: Bearer <token>' on every request")
    ),
    generationFrames: Options.integer("generation-frames").pipe(
      Options.optional,
      Options.withDescription("start a new generation once one holds more than this many frames (off by default)")
    ),
    keepGenerations: Options.integer("keep-generations").pipe(
      Options.optional,
      Options.withDescription("how many generations before the current one stay pullable (default: all)")
    ),
    integrityCheck: Options.choice("integrity-check", ["quick_check", "integrity_check", "off"]).pipe(
      Options.withDefault("quick_check" as const),
      Options.withDescription("the check a pushed transaction must pass before it is acknowledged")
    ),
    logFormat: Options.choice("log-format", ["logfmt", "json"]).pipe(
      Options.withDefault("logfmt" as const),
      Options.withDescription("format of the per-request log lines on stderr")
    )
  },
  (options) =>
    Effect.gen(function*() {
      if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
        return yield* invalid("--port must be an integer from 0 to 65535")
      }
      if (Option.isSome(options.generationFrames) && options.generationFrames.value < 1) {
        return yield* invalid("--generation-frames must be at least 1")
      }
      if (Option.isSome(options.keepGenerations) && options.keepGenerations.value < 0) {
        return yield* invalid("--keep-generations must be at least 0")
      }
      if (Option.isSome(options.authToken) && Redacted.value(options.authToken.value).length === 0) {
        return yield* invalid("--auth-token must not be empty")
      }
      const server = SyncServer.layerNode({
        host: options.host,
        port: options.port,
        authToken: Option.getOrUndefined(options.authToken)
      }).pipe(
        Layer.provide(
          ServerStore.layer({
            directory: options.data,
            generationFrames: Option.getOrUndefined(options.generationFrames),
            keepGenerations: Option.getOrUndefined(options.keepGenerations),
            integrityCheck: options.integrityCheck
          })
        )
      )
      yield* Effect.gen(function*() {
        const url = yield* SyncServer.baseUrl
        yield* Console.log(`Listening on ${url}`)
        return yield* Effect.never
      }).pipe(Effect.provide(server))
    }).pipe(Effect.provide(layerLogger(options.logFormat)))
).pipe(Command.withDescription("Serve the WAL-frame sync protocol over HTTP (databases at /db/NAME)"))

/**
 * The root command with every subcommand.
 *
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("effect-sqlite-sync").pipe(
  Command.withDescription("Local-first SQLite with two-way WAL-frame sync, and its server"),
  Command.withSubcommands([serve])
)

/**
 * Runs the command line on `process.argv`-style arguments.
 *
 * @since 0.1.0
 * @category running
 */
export const run = Command.run(command, { name: "effect-sqlite-sync", version: "0.1.0" })
