/**
 * The PostgreSQL backend: every database of the server in one schema of one PostgreSQL database, shared
 * by any number of server processes (see `SharedStorage` in serverCore.ts).
 *
 * Tables (schema `effect_sqlite_sync` by default, created and migrated by version on start):
 *
 * - `databases`: one row per sync database. Its row lock is the database's push lock across processes
 *   (`SELECT ... FOR UPDATE` at the start of every push transaction). It also holds the baton session
 *   (baton, last use, a version that changes whenever its pending frames do) and the last closed baton.
 * - `generations`: number, last committed frame, dropped flag and base (BYTEA, NULL once dropped).
 * - `frames`: committed frames; `pending_frames`: the open baton session's frames, by position.
 * - `acked_pending`: frame numbers answered Ok while still pending (see `recordAck` in serverCore.ts).
 * - `migrations`: the schema versions applied.
 *
 * A push is one PostgreSQL transaction: the row lock, the conflict decision, the frames, the new head,
 * the session and any roll commit together or not at all, and the push is answered only after COMMIT
 * returned, so an acknowledged push survives the loss of the process that answered it.
 *
 * The commit check needs the committed head as a database image. Each process keeps the last image it
 * saw per database, keyed by (database identity, generation, last frame): under the row lock the key is
 * compared with the committed head, and a stale image is brought forward with the frames other processes
 * committed since (or rebuilt), so the check always runs on the committed state. The image the check
 * accepted becomes the process's head only once its transaction has committed.
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as crypto from "node:crypto"
import { StoreError } from "./storeError.js"
import * as WalFrame from "../../WalFrame.js"
import type { Backend, DatabaseBackend, GenerationRecord, StoredSession, StoredState } from "./serverCore.js"
import type { SchemaEntry } from "./changedTables.js"
import type { IntegrityCheck } from "./sqliteImage.js"
import * as commitNotify from "./commitNotifyPostgres.js"
import * as serverMetrics from "./serverMetrics.js"
import { checkImage, planOnImage } from "./sqliteImage.js"

export const DEFAULT_SCHEMA = "effect_sqlite_sync"

/** Frames another process committed since this one's head image, beyond which it is rebuilt instead. */
const CATCH_UP_LIMIT = 4096

/** Rows of one INSERT: 5 parameters each, far below PostgreSQL's 65 535. */
const INSERT_BATCH = 1024

const storage = (message: string) => (cause: unknown) => new StoreError({ reason: "Storage", message, cause })

const gone = (generation: number) =>
  new StoreError({ reason: "GenerationGone", message: `generation ${generation} is no longer kept` })

const MIGRATIONS: ReadonlyArray<(schema: string) => ReadonlyArray<string>> = [
  (s) => [
    `CREATE TABLE ${s}.databases (
      name TEXT PRIMARY KEY,
      id TEXT NOT NULL,
      session_baton TEXT,
      session_touched_at BIGINT,
      session_version BIGINT NOT NULL DEFAULT 0,
      closed_baton TEXT,
      created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )`,
    `CREATE TABLE ${s}.generations (
      database TEXT NOT NULL REFERENCES ${s}.databases (name),
      generation INTEGER NOT NULL,
      last_frame INTEGER NOT NULL,
      dropped BOOLEAN NOT NULL DEFAULT false,
      base BYTEA,
      PRIMARY KEY (database, generation)
    )`,
    `CREATE TABLE ${s}.frames (
      database TEXT NOT NULL,
      generation INTEGER NOT NULL,
      frame_no INTEGER NOT NULL,
      pgno INTEGER NOT NULL,
      commit_size INTEGER NOT NULL,
      page BYTEA NOT NULL,
      PRIMARY KEY (database, generation, frame_no)
    )`,
    `CREATE TABLE ${s}.pending_frames (
      database TEXT NOT NULL,
      position INTEGER NOT NULL,
      pgno INTEGER NOT NULL,
      commit_size INTEGER NOT NULL,
      page BYTEA NOT NULL,
      PRIMARY KEY (database, position)
    )`,
    `CREATE TABLE ${s}.acked_pending (
      database TEXT NOT NULL,
      generation INTEGER NOT NULL,
      frame_no INTEGER NOT NULL,
      PRIMARY KEY (database, generation, frame_no)
    )`
  ]
]

/** The schema version this code writes. */
export const SCHEMA_VERSION = MIGRATIONS.length

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/

/**
 * Creates the schema and applies the migrations it lacks, under a transaction-scoped advisory lock so
 * that processes starting together migrate once. A schema newer than this code is refused.
 */
export const migrate = (sql: PgClient.PgClient, schema: string): Effect.Effect<void, StoreError> =>
  Effect.gen(function*() {
    if (!IDENTIFIER.test(schema)) {
      return yield* Effect.fail(
        new StoreError({ reason: "BadRequest", message: `schema ${JSON.stringify(schema)} must match ${IDENTIFIER.source}` })
      )
    }
    yield* sql.withTransaction(Effect.gen(function*() {
      yield* sql`SELECT pg_advisory_xact_lock(hashtext(${`effect-sqlite-sync:${schema}`}))`
      yield* sql.unsafe(`CREATE SCHEMA IF NOT EXISTS ${schema}`)
      yield* sql.unsafe(
        `CREATE TABLE IF NOT EXISTS ${schema}.migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`
      )
      const [row] = yield* sql.unsafe<{ version: number | null }>(`SELECT max(version) AS version FROM ${schema}.migrations`)
      const applied = row?.version ?? 0
      if (applied > SCHEMA_VERSION) {
        return yield* Effect.fail(
          new StoreError({
            reason: "Storage",
            message: `schema ${schema} is at version ${applied}, newer than this server's ${SCHEMA_VERSION}: upgrade the server`
          })
        )
      }
      for (let version = applied + 1; version <= SCHEMA_VERSION; version++) {
        for (const statement of MIGRATIONS[version - 1](schema)) yield* sql.unsafe(statement)
        yield* sql.unsafe(`INSERT INTO ${schema}.migrations (version) VALUES ($1)`, [version])
      }
    }))
  }).pipe(Effect.catchTag("SqlError", (e: SqlError) => Effect.fail(storage(`migrating schema ${schema} failed`)(e))))

interface FrameRow {
  readonly pgno: number
  readonly commit_size: number
  readonly page: Uint8Array
}

const toFrame = (row: FrameRow): WalFrame.Frame => ({ pgno: row.pgno, commitSize: row.commit_size, page: row.page })

const frameRows = (frames: ReadonlyArray<WalFrame.Frame>, key: (i: number) => Record<string, unknown>) =>
  frames.map((frame, i) => ({
    ...key(i),
    pgno: frame.pgno,
    commit_size: frame.commitSize,
    page: Buffer.from(frame.page.buffer, frame.page.byteOffset, frame.page.byteLength)
  }))

interface HeadImage {
  readonly id: string
  readonly generation: number
  readonly lastFrame: number
  readonly image: Uint8Array
  /** The image's sqlite_schema, when known (the `changed_tables` check reads it). */
  readonly schema: ReadonlyArray<SchemaEntry> | undefined
}

interface PendingCache {
  readonly baton: string
  readonly version: string
  readonly frames: ReadonlyArray<WalFrame.Frame>
}

export const make = (options: {
  readonly sql: PgClient.PgClient
  readonly schema: string
  readonly integrityCheck: IntegrityCheck
}): Backend => {
  const { integrityCheck, schema, sql } = options
  const table = (name: string) => sql(`${schema}.${name}`)
  const databases = table("databases")
  const generationsTable = table("generations")
  const framesTable = table("frames")
  const pendingTable = table("pending_frames")
  const ackedTable = table("acked_pending")
  const channel = commitNotify.channelOf(schema)

  const open = (name: string, emptyBase: Uint8Array): Effect.Effect<DatabaseBackend, StoreError> =>
    Effect.gen(function*() {
      // Two processes creating the same database: the second INSERT waits for the first and does nothing.
      yield* sql.withTransaction(Effect.gen(function*() {
        const created = yield* sql`
          INSERT INTO ${databases} (name, id) VALUES (${name}, ${crypto.randomUUID()})
          ON CONFLICT (name) DO NOTHING RETURNING name`
        if (created.length > 0) {
          yield* sql`INSERT INTO ${generationsTable} ${
            sql.insert({ database: name, generation: 1, last_frame: 0, base: Buffer.from(emptyBase) })
          }`
        }
      }))
      const readGenerations = sql<{ generation: number; last_frame: number; dropped: boolean }>`
        SELECT generation, last_frame, dropped FROM ${generationsTable} WHERE database = ${name} ORDER BY generation`.pipe(
        Effect.map((rows) =>
          rows.map((row): GenerationRecord => ({ generation: row.generation, lastFrame: row.last_frame, dropped: row.dropped }))
        )
      )
      const [identity] = yield* sql<{ id: string }>`SELECT id FROM ${databases} WHERE name = ${name}`
      const generations = yield* readGenerations
      const current = generations[generations.length - 1]?.generation ?? 1
      const ackedPending = (yield* sql<{ frame_no: number }>`
        SELECT frame_no FROM ${ackedTable} WHERE database = ${name} AND generation = ${current}`).map((r) => r.frame_no)

      let head: HeadImage | undefined
      let tentativeHead: HeadImage | undefined
      let pendingCache: PendingCache | undefined
      let tentativePending: PendingCache | undefined
      let lockedId = ""

      const readFrames = (generation: number, start: number, end: number) =>
        sql<FrameRow>`
          SELECT pgno, commit_size, page FROM ${framesTable}
          WHERE database = ${name} AND generation = ${generation} AND frame_no >= ${start} AND frame_no < ${end}
          ORDER BY frame_no`.pipe(Effect.map((rows) => rows.map(toFrame)))

      const readBase = (generation: number) =>
        sql<{ base: Uint8Array | null }>`
          SELECT base FROM ${generationsTable} WHERE database = ${name} AND generation = ${generation}`.pipe(
          Effect.mapError(storage(`reading the base of ${name}/${generation} failed`)),
          Effect.flatMap(([row]) =>
            row?.base == null ? Effect.fail(gone(generation)) : Effect.succeed(new Uint8Array(row.base))
          )
        )

      /** Applies committed frames `from..to` of a generation to `image`, a batch at a time. */
      const applyCommitted = (image: Uint8Array, generation: number, from: number, to: number) =>
        Effect.gen(function*() {
          let result = image
          for (let start = from; start <= to; start += INSERT_BATCH) {
            const end = Math.min(to + 1, start + INSERT_BATCH)
            const frames = yield* readFrames(generation, start, end)
            if (frames.length !== end - start) {
              return yield* Effect.dieMessage(`frames ${start}..${end - 1} of ${name}/${generation} are missing`)
            }
            result = WalFrame.applyFrames(result, frames)
          }
          return result
        })

      /** Base + committed frames through `lastFrame`, from this process's head image when it can. */
      const imageAt = (
        generation: number,
        lastFrame: number
      ): Effect.Effect<{ image: Uint8Array; schema: HeadImage["schema"] }, SqlError | StoreError> =>
        Effect.gen(function*() {
          // Inside a push transaction the head this transaction just committed is the newest known image.
          const known = tentativeHead !== undefined && tentativeHead.id === lockedId ? tentativeHead : head
          if (known !== undefined && known.id === lockedId && known.generation === generation) {
            if (known.lastFrame === lastFrame) return { image: known.image, schema: known.schema }
            if (known.lastFrame < lastFrame && lastFrame - known.lastFrame <= CATCH_UP_LIMIT) {
              const image = yield* applyCommitted(known.image, generation, known.lastFrame + 1, lastFrame)
              return { image, schema: undefined }
            }
          }
          const base = yield* readBase(generation)
          return { image: yield* applyCommitted(base, generation, 1, lastFrame), schema: undefined }
        })

      const lastFrameOf = (generation: number) =>
        Effect.map(
          sql<{ last_frame: number }>`
            SELECT last_frame FROM ${generationsTable} WHERE database = ${name} AND generation = ${generation}`,
          ([row]) => row?.last_frame ?? 0
        )

      const loadPending = (baton: string, version: string) =>
        pendingCache !== undefined && pendingCache.baton === baton && pendingCache.version === version
          ? Effect.succeed(pendingCache.frames)
          : Effect.map(
            sql<FrameRow>`SELECT pgno, commit_size, page FROM ${pendingTable} WHERE database = ${name} ORDER BY position`,
            (rows) => rows.map(toFrame)
          )

      const insertRows = (target: typeof framesTable, rows: ReadonlyArray<Record<string, unknown>>) =>
        Effect.forEach(
          Array.from({ length: Math.ceil(rows.length / INSERT_BATCH) }, (_, i) => rows.slice(i * INSERT_BATCH, (i + 1) * INSERT_BATCH)),
          (batch) => sql`INSERT INTO ${target} ${sql.insert(batch as Array<Record<string, unknown>>)}`,
          { discard: true }
        )

      /** Stores the session a push left, writing only the frames it appended when it can. */
      const saveSession = (before: StoredSession, after: StoredSession, version: string) =>
        Effect.gen(function*() {
          const old = before.session
          const now = after.session
          let nextVersion = version
          if (now === undefined) {
            if (old !== undefined) {
              yield* sql`DELETE FROM ${pendingTable} WHERE database = ${name}`
              nextVersion = String(BigInt(version) + 1n)
            }
            yield* sql`
              UPDATE ${databases} SET session_baton = NULL, session_touched_at = NULL,
                session_version = ${nextVersion}, closed_baton = ${after.closedBaton ?? null}
              WHERE name = ${name}`
            tentativePending = undefined
            return
          }
          const appends = old !== undefined && old.baton === now.baton && now.pending.length >= old.pending.length &&
            old.pending.every((frame, i) => frame === now.pending[i])
          if (!appends || now.pending.length !== old!.pending.length) {
            const from = appends ? old!.pending.length : 0
            if (!appends && old !== undefined) yield* sql`DELETE FROM ${pendingTable} WHERE database = ${name}`
            yield* insertRows(
              pendingTable,
              frameRows(now.pending.slice(from), (i) => ({ database: name, position: from + i }))
            )
            nextVersion = String(BigInt(version) + 1n)
          }
          yield* sql`
            UPDATE ${databases} SET session_baton = ${now.baton}, session_touched_at = ${now.touchedAt},
              session_version = ${nextVersion}, closed_baton = ${after.closedBaton ?? null}
            WHERE name = ${name}`
          tentativePending = { baton: now.baton, version: nextVersion, frames: now.pending }
        })

      const backend: DatabaseBackend = {
        id: identity?.id,
        readOnly: false,
        generations,
        ackedPending,
        readBase,
        readFrames: (generation, start, end) =>
          readFrames(generation, start, end).pipe(
            Effect.mapError(storage(`reading frames ${start}..${end - 1} of ${name}/${generation} failed`))
          ),
        commit: (generation, firstFrameNo, frames) =>
          Effect.gen(function*() {
            const last = firstFrameNo + frames.length - 1
            if (integrityCheck !== "off") {
              const { image, schema } = yield* imageAt(generation, firstFrameNo - 1)
              const next = planOnImage(integrityCheck, image, schema, frames)
              const candidate = WalFrame.applyFrames(image, frames)
              const problem = yield* serverMetrics.timeCheck(
                Effect.sync(() => checkImage(candidate, next.plan, { owned: true }))
              )
              if (problem !== undefined) return Either.left(problem)
              tentativeHead = { id: lockedId, generation, lastFrame: last, image: candidate, schema: next.schema }
            }
            yield* insertRows(
              framesTable,
              frameRows(frames, (i) => ({ database: name, generation, frame_no: firstFrameNo + i }))
            )
            yield* sql`UPDATE ${generationsTable} SET last_frame = ${last} WHERE database = ${name} AND generation = ${generation}`
            yield* sql`DELETE FROM ${ackedTable} WHERE database = ${name} AND generation = ${generation} AND frame_no < ${last}`
            yield* commitNotify.notifyCommit(sql, channel, name, generation, last)
            return Either.right(undefined)
          }).pipe(Effect.mapError(storage(`storing frames ${firstFrameNo}.. of ${name}/${generation} failed`))),
        materialize: (generation) =>
          Effect.flatMap(lastFrameOf(generation), (last) => Effect.map(imageAt(generation, last), (at) => at.image)).pipe(
            Effect.catchTag("SqlError", (e) => Effect.fail(storage(`materialising ${name}/${generation} failed`)(e)))
          ),
        recordAck: (generation, frameNo) =>
          sql`INSERT INTO ${ackedTable} ${sql.insert({ database: name, generation, frame_no: frameNo })} ON CONFLICT DO NOTHING`.pipe(
            Effect.asVoid,
            Effect.mapError(storage(`recording frame ${frameNo} of ${name}/${generation} failed`))
          ),
        roll: (generation, base) =>
          Effect.gen(function*() {
            yield* sql`INSERT INTO ${generationsTable} ${
              sql.insert({ database: name, generation, last_frame: 0, base: Buffer.from(base.buffer, base.byteOffset, base.byteLength) })
            }`
            yield* sql`DELETE FROM ${ackedTable} WHERE database = ${name} AND generation < ${generation}`
            yield* commitNotify.notifyCommit(sql, channel, name, generation, 0)
            if (integrityCheck !== "off") tentativeHead = { id: lockedId, generation, lastFrame: 0, image: base, schema: undefined }
          }).pipe(Effect.mapError(storage(`starting generation ${generation} of ${name} failed`))),
        dropThrough: (generation) =>
          sql.withTransaction(Effect.gen(function*() {
            yield* sql`UPDATE ${generationsTable} SET dropped = true, base = NULL WHERE database = ${name} AND generation <= ${generation}`
            yield* sql`DELETE FROM ${framesTable} WHERE database = ${name} AND generation <= ${generation}`
          })).pipe(Effect.mapError(storage(`dropping generations through ${generation} of ${name} failed`))),
        close: Effect.void,
        shared: {
          generations: readGenerations.pipe(Effect.mapError(storage(`reading the generations of ${name} failed`))),
          exclusive: (body, save) =>
            sql.withTransaction(Effect.gen(function*() {
              const [row] = yield* sql<{
                id: string
                session_baton: string | null
                session_touched_at: string | null
                session_version: string
                closed_baton: string | null
              }>`
                SELECT id, session_baton, session_touched_at, session_version, closed_baton
                FROM ${databases} WHERE name = ${name} FOR UPDATE`
              if (row === undefined) return yield* Effect.dieMessage(`database ${name} has no row`)
              lockedId = row.id
              tentativeHead = undefined
              tentativePending = undefined
              const records = yield* readGenerations
              const current = records[records.length - 1].generation
              const acked = yield* sql<{ frame_no: number }>`
                SELECT frame_no FROM ${ackedTable} WHERE database = ${name} AND generation = ${current}`
              const version = String(row.session_version)
              const before: StoredSession = {
                session: row.session_baton === null ? undefined : {
                  baton: row.session_baton,
                  touchedAt: Number(row.session_touched_at),
                  pending: yield* loadPending(row.session_baton, version)
                },
                closedBaton: row.closed_baton ?? undefined
              }
              const state: StoredState = { ...before, generations: records, ackedPending: acked.map((r) => r.frame_no) }
              const exit = yield* Effect.exit(body(state))
              // A storage failure or a defect rolls the transaction back; any other answer is committed.
              if (Exit.isFailure(exit)) {
                const refusal = exit.cause._tag === "Fail" && exit.cause.error.reason !== "Storage"
                if (!refusal) return yield* Effect.failCause(exit.cause)
              }
              yield* saveSession(before, save(), version)
              return exit
            })).pipe(
              Effect.catchTag("SqlError", (e) => Effect.fail(storage(`the push transaction of ${name} failed`)(e))),
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  if (Exit.isSuccess(exit)) {
                    if (tentativeHead !== undefined) head = tentativeHead
                    pendingCache = tentativePending
                  } else {
                    pendingCache = undefined
                  }
                  tentativeHead = undefined
                  tentativePending = undefined
                })
              ),
              Effect.flatten
            )
        }
      }
      return backend
    }).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storage(`opening database ${name} failed`)(e))))

  const stats = sql<{ databases: number; batons: number }>`
    SELECT count(*)::int AS databases, count(session_baton)::int AS batons FROM ${databases}`.pipe(
    Effect.map(([row]) => ({ databases: row?.databases ?? 0, openBatons: row?.batons ?? 0 })),
    Effect.mapError(storage("reading the store's counts failed"))
  )

  const list = sql<{ name: string }>`SELECT name FROM ${databases}`.pipe(
    Effect.map((rows) => rows.map((row) => row.name)),
    Effect.mapError(storage("listing the databases failed"))
  )

  return { readOnly: false, list, open, stats, watchCommits: commitNotify.watch(sql, schema) }
}
