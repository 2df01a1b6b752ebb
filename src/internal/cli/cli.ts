/**
 * Bodies of the local-database subcommands of the command line (`pull`, `push`, `sync`, `status`,
 * `exec`, `query`, `conflicts`). Each opens the SyncDatabase at `--db` for the duration of the command,
 * prints a human summary or exactly one JSON document on stdout, and fails with `ReportedFailure` (exit
 * status 1, already printed) or a `ValidationError` (exit status 2, printed) — see `Cli.teardown`.
 *
 * @internal
 */
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Console from "effect/Console"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import type * as ConflictPolicy from "../../ConflictPolicy.js"
import * as LocalCopies from "../../LocalCopies.js"
import * as SyncDatabase from "../../SyncDatabase.js"
import * as SyncError from "../../SyncError.js"
import * as SyncRemote from "../../SyncRemote.js"
import * as WalFrame from "../../WalFrame.js"
import { formatBytes, parseParams, stringify, table } from "./cliParams.js"
import * as CliProgress from "./cliProgress.js"

/** Options shared by every local-database subcommand. */
export interface LocalOptions {
  readonly db: string
  readonly url: Option.Option<string>
  readonly authToken: Option.Option<Redacted.Redacted>
  readonly json: boolean
  readonly progress: CliProgress.Mode
  readonly retries: number
  readonly allowUrlChange: boolean
  readonly startOver: boolean
}

// SGR sequences (colours, bold) as @effect/cli's help and error rendering writes them.
const ANSI = /\u001b\[[0-9;]*m/g

const strip = (value: unknown) => (typeof value === "string" ? value.replace(ANSI, "") : value)

/** `console` with the colour codes removed from what goes to a stream that is not to keep them. */
export const plainConsole = (
  console: Console.Console,
  keep: { readonly stdout: boolean; readonly stderr: boolean }
): Console.Console => {
  if (keep.stdout && keep.stderr) return console
  const out = keep.stdout ? (args: ReadonlyArray<unknown>) => args : (args: ReadonlyArray<unknown>) => args.map(strip)
  const err = keep.stderr ? (args: ReadonlyArray<unknown>) => args : (args: ReadonlyArray<unknown>) => args.map(strip)
  return {
    ...console,
    log: (...args) => console.log(...out(args)),
    info: (...args) => console.info(...out(args)),
    error: (...args) => console.error(...err(args)),
    warn: (...args) => console.warn(...err(args)),
    unsafe: {
      ...console.unsafe,
      log: (...args) => console.unsafe.log(...out(args)),
      info: (...args) => console.unsafe.info(...out(args)),
      error: (...args) => console.unsafe.error(...err(args)),
      warn: (...args) => console.unsafe.warn(...err(args))
    }
  }
}

/** A failure already printed (stderr, or stdout as JSON with `--json`); exit status 1. */
export class ReportedFailure extends Data.TaggedError("ReportedFailure")<{ readonly error: unknown }> {}

/** Prints `message` on stderr and fails with a ValidationError (exit status 2). */
export const usage = (message: string): Effect.Effect<never, ValidationError.ValidationError> =>
  Effect.zipRight(Console.error(message), Effect.fail(ValidationError.invalidValue(HelpDoc.p(message))))

const emit = (options: LocalOptions, json: unknown, human: () => string) =>
  Console.log(options.json ? stringify(json) : human())

const errorDocument = (error: SyncError.SyncError) => {
  const { _tag, message } = error
  return {
    _tag,
    reason: error.reason,
    message,
    ...("status" in error && error.status !== undefined ? { status: error.status } : {}),
    ...("sql" in error && error.sql !== undefined ? { sql: error.sql } : {})
  }
}

/**
 * Runs a command body: SyncErrors are printed (as `{"error": ...}` on stdout with `--json`, else on
 * stderr) and become `ReportedFailure`; usage errors pass through.
 */
export const runCommand = <A>(
  options: LocalOptions,
  body: (progress: CliProgress.Progress) => Effect.Effect<A, SyncError.SyncError | ValidationError.ValidationError, Scope.Scope>
): Effect.Effect<void, ReportedFailure | ValidationError.ValidationError> => {
  const progress = CliProgress.make(options.progress)
  return body(progress).pipe(
    Effect.scoped,
    Effect.ensuring(progress.end),
    Effect.asVoid,
    Effect.catchAll((error): Effect.Effect<never, ReportedFailure | ValidationError.ValidationError> => {
      if (ValidationError.isValidationError(error)) return Effect.fail(error)
      const print = options.json
        ? Console.log(stringify({ error: errorDocument(error) }))
        : Console.error(`error: ${error._tag} (${error.reason}): ${error.message}`)
      return Effect.zipRight(print, Effect.fail(new ReportedFailure({ error })))
    })
  )
}

/** Answers every call with RemoteError: the command was run without `--url` on an existing database. */
const offlineRemote: SyncRemote.Service = (() => {
  const refuse = Effect.fail(
    new SyncError.RemoteError({ reason: "Refused", message: "no --url given: this command cannot reach the remote" })
  )
  return { info: refuse, export: () => refuse, snapshot: refuse, pull: () => refuse, push: () => refuse }
})()

export interface Opened {
  readonly db: SyncDatabase.Service
  /** The remote, unobserved (for probes), when `--url` was given. */
  readonly remote: Option.Option<SyncRemote.Service>
  readonly progress: CliProgress.Progress
}

/**
 * Opens (or, with `--url`, bootstraps) the database at `--db` for the current scope, its remote
 * observed by `progress`.
 */
export const open = (
  options: LocalOptions,
  progress: CliProgress.Progress,
  needsRemote: boolean,
  live = false
): Effect.Effect<Opened, SyncError.SyncError | ValidationError.ValidationError, Scope.Scope> =>
  Effect.gen(function*() {
    if (options.db.trim() === "") return yield* usage("--db must not be empty")
    const exists = Fs.existsSync(LocalCopies.files(options.db).info)
    const directory = NodePath.dirname(NodePath.resolve(options.db))
    if (!exists && !Fs.existsSync(directory)) {
      return yield* usage(`--db ${options.db}: directory ${directory} does not exist`)
    }
    if (Option.isNone(options.url)) {
      if (needsRemote) return yield* usage("--url is required for this command")
      if (!exists) {
        return yield* usage(`--db ${options.db} does not exist yet; give --url to create it from the remote`)
      }
    }
    if (Option.isSome(options.url) && !/^https?:\/\/[^/]+/.test(options.url.value)) {
      return yield* usage(`--url must be an http:// or https:// database URL, like http://127.0.0.1:8080/db/notes`)
    }
    if (!Number.isInteger(options.retries) || options.retries < 0) {
      return yield* usage("--retries must be a whole number of at least 0")
    }
    const remote = yield* Option.match(options.url, {
      onNone: () => Effect.succeed(Option.none<SyncRemote.Service>()),
      onSome: (url) =>
        Effect.gen(function*() {
          // Built in the command's scope: the client's connections close when the command ends.
          const http = yield* Layer.build(NodeHttpClient.layerUndici)
          const remote = yield* SyncRemote.makeHttp({
            url,
            authToken: Option.getOrUndefined(options.authToken),
            retrySchedule: Schedule.intersect(Schedule.exponential(Duration.millis(100), 2), Schedule.recurs(options.retries))
          }).pipe(Effect.provide(http))
          return Option.some(remote)
        })
    })
    const observed = CliProgress.observe(Option.getOrElse(remote, () => offlineRemote), progress)
    const context = yield* Layer.build(
      SyncDatabase.layerRemote({
        path: options.db,
        clientName: "cli",
        allowUrlChange: options.allowUrlChange,
        startOver: options.startOver,
        live
      }).pipe(
        Layer.provide(Layer.succeed(SyncRemote.SyncRemote, observed))
      )
    )
    return { db: Context.get(context, SyncDatabase.SyncDatabase), remote, progress }
  })

/** Starts the pull bar with the expected size when the remote's head can be learnt (only if it may show). */
const beginTransfer = (opened: Opened, options: LocalOptions, label: string) =>
  Effect.gen(function*() {
    if (options.progress === "never" || (options.progress === "auto" && process.stderr.isTTY !== true)) return
    if (Option.isNone(opened.remote)) return
    const stats = yield* opened.db.stats
    const head = yield* Effect.option(CliProgress.remoteHead(opened.remote.value, stats.generation))
    const total = Option.isSome(head) && head.value.generation === stats.generation
      ? Math.max(0, head.value.maxFrameNo - stats.syncedFrame) * WalFrame.FRAME_SIZE
      : undefined
    yield* opened.progress.begin(label, total)
  })

const when = (date: Option.Option<Date>) => Option.match(date, { onNone: () => "never", onSome: (d) => d.toISOString() })

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`

const statsDocument = (stats: SyncDatabase.Stats) => ({
  clientId: stats.clientId,
  pendingChanges: stats.pendingChanges,
  generation: stats.generation,
  syncedFrame: stats.syncedFrame,
  lastPushAt: Option.getOrNull(Option.map(stats.lastPushAt, (d) => d.toISOString())),
  lastPullAt: Option.getOrNull(Option.map(stats.lastPullAt, (d) => d.toISOString())),
  draftWalBytes: stats.draftWalBytes,
  syncedWalBytes: stats.syncedWalBytes
})

// ---------------------------------------------------------------------------------------------------------
// commands
// ---------------------------------------------------------------------------------------------------------

export const pull = (options: LocalOptions) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const opened = yield* open(options, progress, true)
      yield* beginTransfer(opened, options, "pull")
      const changed = yield* opened.db.pull
      yield* progress.end
      const stats = yield* opened.db.stats
      yield* emit(
        options,
        { command: "pull", changed, bytesReceived: stats.bytesReceived, ...statsDocument(stats) },
        () =>
          `${changed ? "pulled: local copy updated" : "pull: already up to date"} (generation ${stats.generation}, frame ${stats.syncedFrame}, ${
            formatBytes(stats.bytesReceived)
          } received)`
      )
    }))

export const push = (options: LocalOptions) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const opened = yield* open(options, progress, true)
      const before = yield* opened.db.stats
      const pushed = yield* opened.db.push
      const stats = yield* opened.db.stats
      const pushedChanges = pushed ? Math.max(0, before.pendingChanges - stats.pendingChanges) : 0
      yield* emit(
        options,
        { command: "push", pushed, pushedChanges, bytesSent: stats.bytesSent, ...statsDocument(stats) },
        () =>
          pushed
            ? `pushed ${plural(pushedChanges, "local change")} (generation ${stats.generation}, frame ${stats.syncedFrame}, ${
              formatBytes(stats.bytesSent)
            } sent)`
            : "push: nothing to push"
      )
    }))

export const sync = (options: LocalOptions) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const opened = yield* open(options, progress, true)
      const before = yield* opened.db.stats
      yield* beginTransfer(opened, options, "sync")
      const changed = yield* opened.db.sync
      yield* progress.end
      const stats = yield* opened.db.stats
      const pushedChanges = Math.max(0, before.pendingChanges - stats.pendingChanges)
      yield* emit(
        options,
        {
          command: "sync",
          changed,
          pushedChanges,
          bytesSent: stats.bytesSent,
          bytesReceived: stats.bytesReceived,
          ...statsDocument(stats)
        },
        () =>
          `synced: pushed ${plural(pushedChanges, "local change")}, ${
            changed ? "local copy updated" : "local copy unchanged"
          } (generation ${stats.generation}, frame ${stats.syncedFrame})`
      )
    }))

export const rebootstrap = (options: LocalOptions) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const opened = yield* open(options, progress, true)
      const before = yield* opened.db.stats
      yield* opened.db.rebootstrap
      const stats = yield* opened.db.stats
      yield* emit(
        options,
        { command: "rebootstrap", fromGeneration: before.generation, ...statsDocument(stats) },
        () =>
          `rebootstrapped from the remote's generation ${stats.generation} (frame ${stats.syncedFrame}); ${
            plural(stats.pendingChanges, "local change")
          } kept, to be pushed`
      )
    }))

export const status = (options: LocalOptions) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const opened = yield* open(options, progress, false)
      const stats = yield* opened.db.stats
      const remote = yield* Option.match(opened.remote, {
        onNone: () => Effect.succeed({ checked: false as const }),
        onSome: (remote) =>
          CliProgress.remoteHead(remote, stats.generation).pipe(
            Effect.map((head) => ({
              checked: true as const,
              reachable: true as const,
              generation: head.generation,
              maxFrameNo: head.maxFrameNo,
              framesToPull: head.generation === stats.generation ? Math.max(0, head.maxFrameNo - stats.syncedFrame) : null
            })),
            Effect.catchAll((error) =>
              Effect.succeed({ checked: true as const, reachable: false as const, error: errorDocument(error) })
            )
          )
      })
      const remoteLine = !remote.checked
        ? "not checked (no --url)"
        : !remote.reachable
        ? `unreachable: ${remote.error.message}`
        : `generation ${remote.generation}, frame ${remote.maxFrameNo}${
          remote.framesToPull === null
            ? " (a newer generation: pull to follow it)"
            : remote.framesToPull === 0
            ? " (up to date)"
            : ` (${plural(remote.framesToPull, "frame")} to pull)`
        }`
      yield* emit(
        options,
        { command: "status", db: options.db, ...statsDocument(stats), remote },
        () =>
          [
            `database    ${options.db} (client ${stats.clientId})`,
            `synced      generation ${stats.generation}, frame ${stats.syncedFrame}`,
            `pending     ${plural(stats.pendingChanges, "local change")} not pushed`,
            `last push   ${when(stats.lastPushAt)}`,
            `last pull   ${when(stats.lastPullAt)}`,
            `wal sizes   draft ${formatBytes(stats.draftWalBytes)}, synced ${formatBytes(stats.syncedWalBytes)}`,
            `remote      ${remoteLine}`
          ].join("\n")
      )
    }))

const params = (inputs: ReadonlyArray<string>) =>
  Either.match(parseParams(inputs), { onLeft: usage, onRight: Effect.succeed })

export const exec = (options: LocalOptions, sql: string, inputs: ReadonlyArray<string>) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const bound = yield* params(inputs)
      const opened = yield* open(options, progress, false)
      const result = yield* opened.db.execute(sql, bound)
      yield* emit(
        options,
        { command: "exec", changes: result.changes, lastInsertRowid: result.lastInsertRowid },
        () => `ok: ${plural(result.changes, "row")} changed, last insert rowid ${result.lastInsertRowid}`
      )
    }))

/** `SyncDatabase.query` refuses a write naming the `execute` method; on the command line that is `exec`. */
const toExecCommand = (error: SyncError.SqlStatementError): SyncError.SqlStatementError =>
  error.reason === "Statement" && error.message.startsWith("query runs reads only") && error.message.endsWith("use execute")
    ? new SyncError.SqlStatementError({
      reason: error.reason,
      message: `${error.message.slice(0, -"use execute".length)}run writes with \`effect-sqlite-sync exec\``,
      ...(error.sql === undefined ? {} : { sql: error.sql })
    })
    : error

export const query = (options: LocalOptions, sql: string, inputs: ReadonlyArray<string>) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const bound = yield* params(inputs)
      const opened = yield* open(options, progress, false)
      // Safe integers: 64-bit values are printed exactly, not rounded through a double.
      const rows = yield* opened.db.query<Record<string, unknown>>(sql, bound).pipe(
        Effect.provideService(SqlClient.SafeIntegers, true),
        Effect.mapError(toExecCommand)
      )
      yield* emit(options, rows, () => table(rows))
    }))

/**
 * `watch`: the database runs live for the command's life; the rows are printed at once and again each time
 * they change (a table, or one JSON line with `--json`), until interrupted. Whether the server is reachable
 * is told on stderr as it changes.
 */
export const watch = (options: LocalOptions, sql: string, inputs: ReadonlyArray<string>) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const bound = yield* params(inputs)
      const opened = yield* open(options, progress, true, true)
      yield* progress.end
      yield* opened.db.status.changes.pipe(
        Stream.map((s) => s.live),
        Stream.changes,
        Stream.runForEach((state) =>
          state === "offline"
            ? Console.error("watch: the server cannot be reached; trying again")
            : state === "connected"
            ? Console.error("watch: connected")
            : Effect.void
        ),
        Effect.forkScoped
      )
      yield* opened.db.reactive<Record<string, unknown>>(sql, bound).pipe(
        Stream.runForEach((rows) => emit(options, rows, () => `${table(rows)}\n`)),
        // Safe integers: 64-bit values are printed exactly, not rounded through a double.
        Effect.provideService(SqlClient.SafeIntegers, true),
        Effect.mapError(toExecCommand)
      )
    }))

/** One conflict log entry with its time as an ISO date, as `status` prints its times. */
const conflictDocument = ({ at, ...entry }: ConflictPolicy.Entry) => ({ at: new Date(at).toISOString(), ...entry })

/** One conflict log entry as a flat row for the table view (key and row images as JSON). */
const flatConflict = (entry: ConflictPolicy.Entry): Record<string, unknown> => ({
  time: new Date(entry.at).toISOString(),
  kind: entry.kind,
  table: entry.table,
  key: Object.fromEntries(entry.key),
  decision: entry.decision,
  tx: entry.txId,
  local_before: entry.localBefore,
  local_after: entry.localAfter,
  remote: entry.remote
})

export const conflicts = (options: LocalOptions) =>
  runCommand(options, (progress) =>
    Effect.gen(function*() {
      const opened = yield* open(options, progress, false)
      const entries = yield* opened.db.conflicts
      yield* emit(
        options,
        { command: "conflicts", conflicts: entries.map(conflictDocument) },
        () =>
          entries.length === 0
            ? "no conflicts recorded"
            : table(entries.map(flatConflict))
      )
    }))
