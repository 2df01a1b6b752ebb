/**
 * The `effect-sqlite-sync` command line. `serve` runs the sync server on the embedded SQLite store;
 * further subcommands (pull, push, sync, ...) are added to `command` with `Command.withSubcommands`.
 *
 * @since 0.1.0
 */
import * as Args from "@effect/cli/Args"
import type * as CliApp from "@effect/cli/CliApp"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as HelpDoc from "@effect/cli/HelpDoc"
import type * as Runtime from "@effect/platform/Runtime"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as CliCommands from "./internal/cli/cli.js"
import * as Listen from "./internal/cli/listen.js"
import * as ServerStore from "./ServerStore.js"
import * as SyncProtocol from "./SyncProtocol.js"
import * as SyncServer from "./SyncServer.js"

/** Prints `error: message` on stderr and fails with the exit status 1, without a stack trace. */
const reported = (message: string) =>
  Effect.zipRight(Console.error(`error: ${message}`), Effect.fail(new CliCommands.ReportedFailure({ error: message })))

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
    // Written as `console.error` writes a single string, without its per-call formatting and listener
    // bookkeeping: the server logs a line per request.
    Logger.map(format === "json" ? Logger.jsonLogger : Logger.logfmtLogger, (line) => {
      process.stderr.write(`${line}\n`)
    })
  )

const DURATION_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** `90s`, `30m`, `1h`, `7d` or `0`, in milliseconds; undefined when it is none of those. */
const parseDurationMs = (text: string): number | undefined => {
  if (text === "0") return 0
  const match = /^([0-9]{1,9})([smhd])$/.exec(text)
  return match === null ? undefined : Number(match[1]) * DURATION_UNITS[match[2]]
}

/**
 * `effect-sqlite-sync serve`: serves every database under `--data` (or in PostgreSQL with `--store`)
 * until SIGINT or SIGTERM.
 *
 * @since 0.1.0
 * @category commands
 */
export const serve = Command.make(
  "serve",
  {
    host: Options.text("host").pipe(Options.withDefault("127.0.0.1"), Options.withDescription("address to listen on")),
    port: Options.integer("port").pipe(
      Options.withFallbackConfig(Config.integer("PORT")),
      Options.withDefault(8080),
      Options.withDescription("port to listen on, 0 picks a free one (env PORT)")
    ),
    data: Options.text("data").pipe(
      Options.withDefault("./data"),
      Options.withDescription("directory holding the databases (the embedded SQLite store)")
    ),
    store: Options.text("store").pipe(
      Options.optional,
      Options.withDescription(
        "keep the databases in PostgreSQL instead of --data: postgres://USER:PASSWORD@HOST:PORT/DATABASE " +
          "(several serve processes may share one)"
      )
    ),
    authToken: Options.redacted("auth-token").pipe(
      Options.withFallbackConfig(Config.redacted("EFFECT_SQLITE_SYNC_AUTH_TOKEN")),
      Options.optional,
      Options.withDescription(
        "require 'Authorization: Bearer <token>' on every request (env EFFECT_SQLITE_SYNC_AUTH_TOKEN, which keeps it out of ps)"
      )
    ),
    generationFrames: Options.integer("generation-frames").pipe(
      Options.optional,
      Options.withDescription(
        "start a new generation once one holds more than this many frames (replaces --generation-growth)"
      )
    ),
    generationGrowth: Options.text("generation-growth").pipe(
      Options.optional,
      Options.withDescription(
        "start a new generation once its frames hold more than F times its base's size (default 1), or 'never'"
      )
    ),
    generationMinFrames: Options.integer("generation-min-frames").pipe(
      Options.optional,
      Options.withDescription("the growth rule leaves a generation of at most this many frames alone (default 1000)")
    ),
    keepGenerations: Options.integer("keep-generations").pipe(
      Options.optional,
      Options.withDescription(
        "keep an old generation while it is one of the K before the current one (default 2, with --keep-generations-for 1h)"
      )
    ),
    keepGenerationsFor: Options.text("keep-generations-for").pipe(
      Options.optional,
      Options.withDescription("keep an old generation while it was superseded less than this long ago: 90s, 30m, 1h, 7d")
    ),
    maxPullFrames: Options.integer("max-pull-frames").pipe(
      Options.optional,
      Options.withDescription("the most frames one pull answer carries (default 1024, at most 16384)")
    ),
    integrityCheck: Options.choice("integrity-check", ["changed_tables", "quick_check", "integrity_check", "off"]).pipe(
      Options.withDefault(ServerStore.DEFAULT_INTEGRITY_CHECK),
      Options.withDescription(
        "the check a pushed transaction must pass before it is acknowledged (changed_tables: quick_check, " +
          "then integrity_check of the tables it changed)"
      )
    ),
    maxDatabases: Options.integer("max-databases").pipe(
      Options.optional,
      Options.withDescription("the most databases the data directory may hold; a request for another is refused (404)")
    ),
    maxOpenDatabases: Options.integer("max-open-databases").pipe(
      Options.withDefault(256),
      Options.withDescription("databases kept open at once (two files each); the least recently used idle ones are closed")
    ),
    maxPullWait: Options.integer("max-pull-wait").pipe(
      Options.withDefault(SyncProtocol.DEFAULT_MAX_WAIT_SECONDS),
      Options.withDescription(
        "the longest a pull at the head waits for the next commit when the client asks to (Prefer: wait=N), " +
          "in seconds, at most 240; 0 turns waiting pulls off"
      )
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
      const growth = Option.map(options.generationGrowth, (text) => text === "never" ? "never" as const : Number(text))
      if (Option.isSome(growth) && growth.value !== "never" && !(Number.isFinite(growth.value) && growth.value > 0)) {
        return yield* invalid("--generation-growth must be a number above 0, or 'never'")
      }
      if (Option.isSome(options.generationMinFrames) && options.generationMinFrames.value < 0) {
        return yield* invalid("--generation-min-frames must be at least 0")
      }
      const keepFor = Option.map(options.keepGenerationsFor, parseDurationMs)
      if (Option.isSome(keepFor) && keepFor.value === undefined) {
        return yield* invalid("--keep-generations-for must be a duration such as 90s, 30m, 1h or 7d")
      }
      if (
        Option.isSome(options.maxPullFrames) && !(options.maxPullFrames.value >= 1 && options.maxPullFrames.value <= 16_384)
      ) {
        return yield* invalid("--max-pull-frames must be from 1 to 16384")
      }
      if (Option.isSome(options.maxDatabases) && options.maxDatabases.value < 0) {
        return yield* invalid("--max-databases must be at least 0")
      }
      if (options.maxOpenDatabases < 1) {
        return yield* invalid("--max-open-databases must be at least 1")
      }
      if (!(options.maxPullWait >= 0 && options.maxPullWait <= SyncProtocol.MAX_WAIT_SECONDS_LIMIT)) {
        return yield* invalid(`--max-pull-wait must be from 0 to ${SyncProtocol.MAX_WAIT_SECONDS_LIMIT} seconds`)
      }
      if (Option.isSome(options.authToken) && Redacted.value(options.authToken.value).length === 0) {
        return yield* invalid("--auth-token must not be empty")
      }
      if (Option.isSome(options.store) && !/^postgres(ql)?:\/\/./.test(options.store.value)) {
        return yield* invalid("--store must be a postgres:// URL, like postgres://USER:PASSWORD@HOST:5432/DATABASE")
      }
      const storeOptions = {
        generationFrames: Option.getOrUndefined(options.generationFrames),
        generationGrowth: Option.getOrUndefined(growth),
        generationMinFrames: Option.getOrUndefined(options.generationMinFrames),
        keepGenerations: Option.getOrUndefined(options.keepGenerations),
        keepGenerationsMs: Option.getOrUndefined(keepFor),
        maxPullFrames: Option.getOrUndefined(options.maxPullFrames),
        integrityCheck: options.integrityCheck,
        maxDatabases: Option.getOrUndefined(options.maxDatabases),
        maxOpenDatabases: options.maxOpenDatabases
      }
      const store = Option.isSome(options.store)
        ? ServerStore.layerPostgres({ ...storeOptions, url: options.store.value })
        : ServerStore.layer({ ...storeOptions, directory: options.data })
      const server = SyncServer.layerNode({
        host: options.host,
        port: options.port,
        authToken: Option.getOrUndefined(options.authToken),
        maxWaitSeconds: options.maxPullWait
      }).pipe(
        Layer.provide(store)
      )
      // Before the store creates the data directory: a busy port leaves nothing behind.
      const cannotListen = (error: unknown) =>
        reported(Listen.describeListenError(options.host, options.port, error))
      if (options.port !== 0) yield* Effect.catchAll(Listen.probe(options.host, options.port), cannotListen)
      yield* Effect.gen(function*() {
        const url = yield* SyncServer.baseUrl
        yield* Console.log(`Listening on ${url}`)
        return yield* Effect.never
      }).pipe(
        Effect.provide(server),
        Effect.catchTags({
          ServeError: (error) => cannotListen(error.cause),
          StoreError: (error) => reported(error.message)
        })
      )
    }).pipe(Effect.provide(layerLogger(options.logFormat)))
).pipe(Command.withDescription("Serve the WAL-frame sync protocol over HTTP (databases at /db/NAME)"))

// ---------------------------------------------------------------------------------------------------------
// local-database subcommands: bodies in internal/cli/cli.ts
// ---------------------------------------------------------------------------------------------------------

const localOptions = (url: "required" | "optional") => ({
  db: Options.text("db").pipe(
    Options.withFallbackConfig(Config.string("EFFECT_SQLITE_SYNC_DB")),
    Options.withDescription("the local database: files PATH-draft, PATH-synced, PATH-info (env EFFECT_SQLITE_SYNC_DB)")
  ),
  url: url === "required"
    ? Options.text("url").pipe(
      Options.withFallbackConfig(Config.string("EFFECT_SQLITE_SYNC_URL")),
      Options.map(Option.some),
      Options.withDescription("the database URL on a sync server, e.g. http://127.0.0.1:8080/db/notes (env EFFECT_SQLITE_SYNC_URL)")
    )
    : Options.text("url").pipe(
      Options.withFallbackConfig(Config.string("EFFECT_SQLITE_SYNC_URL")),
      Options.optional,
      Options.withDescription("the database URL on a sync server; needed only to create the local database (env EFFECT_SQLITE_SYNC_URL)")
    ),
  authToken: Options.redacted("auth-token").pipe(
    Options.withFallbackConfig(Config.redacted("EFFECT_SQLITE_SYNC_AUTH_TOKEN")),
    Options.optional,
    Options.withDescription("sent as 'Authorization: Bearer <token>' (env EFFECT_SQLITE_SYNC_AUTH_TOKEN)")
  ),
  json: Options.boolean("json").pipe(Options.withDescription("print exactly one JSON document on stdout")),
  progress: Options.choice("progress", ["auto", "always", "never"]).pipe(
    Options.withDefault("auto" as const),
    Options.withDescription("progress bar on stderr: auto = on a terminal, for a bootstrap or a pull of 2 MB or more")
  ),
  retries: Options.integer("retries").pipe(
    Options.withDefault(4),
    Options.withDescription("retries of a request that failed in transit or with 5xx (exponential from 100 ms)")
  ),
  allowUrlChange: Options.boolean("allow-url-change").pipe(
    Options.withDescription(
      "accept a --url other than the one the local database was made from (the same server database at a new address; it is recorded)"
    )
  ),
  startOver: Options.boolean("start-over").pipe(
    Options.withDescription(
      "when PATH-info is lost but the copies exist, discard the local files and make the database anew from the remote (unpushed changes are lost)"
    )
  )
})

const sqlArg = Args.text({ name: "sql" }).pipe(
  Args.withDescription("one statement, or several separated by ';' (then without params), as one local transaction")
)
const paramsArg = Args.text({ name: "params" }).pipe(
  Args.repeated,
  Args.withDescription(
    "bound to ?: NULL, integers (bigint beyond 2^53), reals, X'hex' blobs, 'quoted' text; anything else is text"
  )
)

/**
 * `effect-sqlite-sync pull --db PATH --url URL`: brings the remote's changes into the local database.
 *
 * @since 0.1.0
 * @category commands
 */
export const pull = Command.make("pull", localOptions("required"), CliCommands.pull).pipe(
  Command.withDescription("Bring the remote's changes into the local database (created from the remote if new)")
)

/**
 * `effect-sqlite-sync push --db PATH --url URL`: sends local changes to the remote.
 *
 * @since 0.1.0
 * @category commands
 */
export const push = Command.make("push", localOptions("required"), CliCommands.push).pipe(
  Command.withDescription("Send local changes to the remote")
)

/**
 * `effect-sqlite-sync sync --db PATH --url URL`: push, then pull.
 *
 * @since 0.1.0
 * @category commands
 */
export const sync = Command.make("sync", localOptions("required"), CliCommands.sync).pipe(
  Command.withDescription("Push local changes, then pull the remote's")
)

/**
 * `effect-sqlite-sync status --db PATH [--url URL]`: local sync state, and the remote's head with `--url`.
 *
 * @since 0.1.0
 * @category commands
 */
export const status = Command.make("status", localOptions("optional"), CliCommands.status).pipe(
  Command.withDescription("Show pending local changes, the synced position and (with --url) the remote's head")
)

/**
 * `effect-sqlite-sync exec --db PATH SQL [params...]`: one statement as one local transaction.
 *
 * @since 0.1.0
 * @category commands
 */
export const exec = Command.make(
  "exec",
  { ...localOptions("optional"), sql: sqlArg, params: paramsArg },
  (options) => CliCommands.exec(options, options.sql, options.params)
).pipe(Command.withDescription("Run one statement on the local database; its changes are pushed by the next push"))

/**
 * `effect-sqlite-sync query --db PATH SQL [params...]`: rows of one statement.
 *
 * @since 0.1.0
 * @category commands
 */
export const query = Command.make(
  "query",
  { ...localOptions("optional"), sql: sqlArg, params: paramsArg },
  (options) => CliCommands.query(options, options.sql, options.params)
).pipe(Command.withDescription("Print the rows of one statement on the local database (a JSON array with --json)"))

/**
 * `effect-sqlite-sync watch --db PATH --url URL SQL [params...]`: the rows of one read-only statement, printed
 * at once and again each time they change, with the database syncing live, until interrupted.
 *
 * @since 0.1.0
 * @category commands
 */
export const watch = Command.make(
  "watch",
  {
    ...localOptions("required"),
    json: Options.boolean("json").pipe(Options.withDescription("print one JSON line (an array of rows) per change")),
    sql: Args.text({ name: "sql" }).pipe(Args.withDescription("one read-only statement (SELECT, WITH ... SELECT, a view)")),
    params: paramsArg
  },
  (options) => CliCommands.watch(options, options.sql, options.params)
).pipe(
  Command.withDescription(
    "Sync live and print the rows of one statement now and each time they change (local writes, other replicas' pushes) until interrupted"
  )
)

/**
 * `effect-sqlite-sync conflicts --db PATH`: the local conflict log, the last 1000 conflicts this replica's
 * acknowledged pushes settled.
 *
 * @since 0.1.0
 * @category commands
 */
export const conflicts = Command.make("conflicts", localOptions("optional"), CliCommands.conflicts).pipe(
  Command.withDescription("List the conflicts this replica's pushes settled (the last 1000), with both sides of each row")
)

/**
 * `effect-sqlite-sync rebootstrap --db PATH --url URL`: starts over from the remote's current state,
 * keeping the local changes not pushed yet (the way on after the remote was replaced or restored).
 *
 * @since 0.1.0
 * @category commands
 */
export const rebootstrap = Command.make("rebootstrap", localOptions("required"), CliCommands.rebootstrap).pipe(
  Command.withDescription(
    "Take the remote's current state as the new base, keeping local changes not pushed yet (after the server database was replaced or restored from a backup)"
  )
)

/**
 * The root command with every subcommand.
 *
 * @since 0.1.0
 * @category commands
 */
export const command = Command.make("effect-sqlite-sync").pipe(
  Command.withDescription("Local-first SQLite with two-way WAL-frame sync, and its server"),
  Command.withSubcommands([serve, pull, push, sync, status, exec, query, watch, conflicts, rebootstrap])
)

/**
 * Exit status of the binary: 0 on success (and on SIGINT/SIGTERM), 2 on bad usage (a ValidationError,
 * printed by @effect/cli or by the command), 1 on any other failure (a sync failure the command has
 * printed already; anything else is printed here).
 *
 * @since 0.1.0
 * @category running
 */
export const teardown: Runtime.Teardown = (exit, onExit) => {
  if (Exit.isSuccess(exit) || Cause.isInterruptedOnly(exit.cause)) return onExit(0)
  const failures = [...Cause.failures(exit.cause)]
  if (failures.some(ValidationError.isValidationError)) return onExit(2)
  if (!failures.some((e) => e instanceof CliCommands.ReportedFailure)) {
    process.stderr.write(`${Cause.pretty(exit.cause)}\n`)
  }
  onExit(1)
}

/**
 * Runs the command line on `process.argv`-style arguments.
 *
 * @since 0.1.0
 * @category running
 */
export const run = (
  args: ReadonlyArray<string>
): Effect.Effect<void, CliCommands.ReportedFailure | ValidationError.ValidationError, CliApp.CliApp.Environment> =>
  Console.consoleWith((console) =>
    Effect.withConsole(
      runCommand(args),
      CliCommands.plainConsole(console, {
        stdout: colours(process.stdout.isTTY === true),
        stderr: colours(process.stderr.isTTY === true)
      })
    )
  )

const runCommand = Command.run(command, { name: "effect-sqlite-sync", version: "0.1.0" })

/** ANSI colours only on a terminal, and never with NO_COLOR set (https://no-color.org). */
const colours = (tty: boolean) => tty && (process.env.NO_COLOR ?? "") === ""
