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
 * Round trips, since each one holds a pooled connection and the database's lock: BEGIN; `lock_database`,
 * a function that takes the row lock and then reads, in the same call, everything the push decides on
 * (a VOLATILE function's statements each see what committed before them, so its reads see the last
 * holder's commit, which one statement that locks and reads in its own snapshot would not); one statement
 * that stores a commit (frames as arrays through `unnest`, head, acks); one that stores the session
 * (with any acks recorded meanwhile); COMMIT.
 *
 * The commit check needs the committed head as a database image. Each process keeps the last image it
 * saw per database, keyed by (database identity, generation, last frame). `lock_database` is told the
 * key and returns the frames other processes committed since (up to `CATCH_UP_IN_LOCK`), so a stale
 * image is brought forward without another round trip (or read forward, or rebuilt from the base, when
 * further behind): the check always runs on the committed state. Frames at or below a committed head
 * never change, so an image at a key is right for as long as the key is current. The image the check
 * accepted becomes the process's head only once its transaction has committed. The check itself runs
 * on the store's worker thread (checkWorker.ts), so one push's check does not stall the process.
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
import type { Checker } from "./checkWorker.js"
import type { IntegrityCheck } from "./sqliteImage.js"
import * as commitNotify from "./commitNotifyPostgres.js"
import * as serverMetrics from "./serverMetrics.js"
import { checkImage, planOnImage } from "./sqliteImage.js"

export const DEFAULT_SCHEMA = "effect_sqlite_sync"

/** Frames another process committed since this one's head image, beyond which it is rebuilt instead. */
const CATCH_UP_LIMIT = 4096

/** Frames `lock_database` returns to bring a stale head image forward (16 MiB of pages at most). */
const CATCH_UP_IN_LOCK = 4096

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
  ],
  (s) => [
    // The push transaction's first statement: see the module comment. Pages travel as hex in JSON, as
    // they would as bytea in PostgreSQL's text protocol.
    `CREATE FUNCTION ${s}.lock_database(
      p_name TEXT, p_id TEXT, p_generation INTEGER, p_after INTEGER, p_limit INTEGER, p_version BIGINT
    ) RETURNS json LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
      result json;
    BEGIN
      PERFORM 1 FROM ${s}.databases WHERE name = p_name FOR UPDATE;
      SELECT json_build_object(
        'id', d.id,
        'session_baton', d.session_baton,
        'session_touched_at', d.session_touched_at,
        'session_version', d.session_version::text,
        'closed_baton', d.closed_baton,
        'generations', (
          SELECT json_agg(json_build_array(g.generation, g.last_frame, g.dropped) ORDER BY g.generation)
          FROM ${s}.generations g WHERE g.database = p_name),
        'acked', (
          SELECT json_agg(a.frame_no) FROM ${s}.acked_pending a
          WHERE a.database = p_name AND a.generation = c.generation),
        'head_pages', (
          SELECT f.commit_size FROM ${s}.frames f
          WHERE f.database = p_name AND f.generation = c.generation AND f.frame_no = c.last_frame),
        'base_bytes', c.base_bytes,
        'catch_up', CASE WHEN d.id = p_id AND c.generation = p_generation AND c.last_frame > p_after
            AND c.last_frame - p_after <= p_limit THEN (
          SELECT json_agg(json_build_array(f.pgno, f.commit_size, encode(f.page, 'hex')) ORDER BY f.frame_no)
          FROM ${s}.frames f
          WHERE f.database = p_name AND f.generation = c.generation AND f.frame_no > p_after AND f.frame_no <= c.last_frame)
        END,
        'pending', CASE WHEN d.session_baton IS NOT NULL AND NOT (d.id = p_id AND d.session_version = p_version) THEN (
          SELECT json_agg(json_build_array(p.pgno, p.commit_size, encode(p.page, 'hex')) ORDER BY p.position)
          FROM ${s}.pending_frames p WHERE p.database = p_name)
        END)
      INTO result
      FROM ${s}.databases d,
        LATERAL (
          SELECT g.generation, g.last_frame, octet_length(g.base) AS base_bytes FROM ${s}.generations g
          WHERE g.database = p_name ORDER BY g.generation DESC LIMIT 1) c
      WHERE d.name = p_name;
      RETURN result;
    END
    $fn$`
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

/** Frames as the three arrays `unnest` takes back into rows (page numbers, commit sizes, pages). */
const frameArrays = (frames: ReadonlyArray<WalFrame.Frame>) => [
  frames.map((frame) => frame.pgno),
  frames.map((frame) => frame.commitSize),
  frames.map((frame) => Buffer.from(frame.page.buffer, frame.page.byteOffset, frame.page.byteLength))
]

/** Frames as `lock_database` returns them: `[pgno, commit size, page as hex]`. */
type JsonFrame = readonly [number, number, string]

const fromJson = (frames: ReadonlyArray<JsonFrame> | null): ReadonlyArray<WalFrame.Frame> =>
  (frames ?? []).map(([pgno, commitSize, hex]) => {
    const page = Buffer.from(hex, "hex")
    return { pgno, commitSize, page: new Uint8Array(page.buffer, page.byteOffset, page.byteLength) }
  })

/** What `lock_database` answers. */
interface LockedState {
  readonly id: string
  readonly session_baton: string | null
  readonly session_touched_at: number | string | null
  readonly session_version: string
  readonly closed_baton: string | null
  readonly generations: ReadonlyArray<readonly [number, number, boolean]>
  readonly acked: ReadonlyArray<number> | null
  readonly head_pages: number | null
  readonly base_bytes: number | null
  /** Frames after the head image this process named, when they were few enough. */
  readonly catch_up: ReadonlyArray<JsonFrame> | null
  /** The session's pending frames, unless this process named their version. */
  readonly pending: ReadonlyArray<JsonFrame> | null
}

interface HeadImage {
  readonly id: string
  readonly generation: number
  readonly lastFrame: number
  readonly image: Uint8Array
  /** The image's sqlite_schema, when known (the `changed_tables` check reads it). */
  readonly schema: ReadonlyArray<SchemaEntry> | undefined
}

interface PendingCache {
  readonly id: string
  readonly baton: string
  readonly version: string
  readonly frames: ReadonlyArray<WalFrame.Frame>
}

export const make = (options: {
  readonly sql: PgClient.PgClient
  readonly schema: string
  readonly integrityCheck: IntegrityCheck
  /** Where checks run; without one they run on the calling thread. */
  readonly checker?: Checker | undefined
}): Backend => {
  const { checker, integrityCheck, schema, sql } = options
  const table = (name: string) => sql(`${schema}.${name}`)
  const databases = table("databases")
  const generationsTable = table("generations")
  const framesTable = table("frames")
  const pendingTable = table("pending_frames")
  const ackedTable = table("acked_pending")
  const channel = commitNotify.channelOf(schema)

  // One statement per step of a push (see the module comment). Data-modifying WITH clauses all run,
  // each on the snapshot the statement started with; none of them touches the rows of another.
  const LOCK = `SELECT ${schema}.lock_database($1, $2, $3, $4, $5, $6) AS state`
  const COMMIT = `WITH stored AS (
      INSERT INTO ${schema}.frames (database, generation, frame_no, pgno, commit_size, page)
      SELECT $1, $2, $3 + f.i - 1, f.pgno, f.commit_size, f.page
      FROM unnest($4::int[], $5::int[], $6::bytea[]) WITH ORDINALITY AS f(pgno, commit_size, page, i)
    ), head AS (
      UPDATE ${schema}.generations SET last_frame = $7 WHERE database = $1 AND generation = $2
    )
    DELETE FROM ${schema}.acked_pending WHERE database = $1 AND generation = $2 AND frame_no < $7`
  // $6: whether the pending frames go (never together with new ones: their positions would collide in
  // one statement); $7..$10: frames appended at positions $7..; $11, $12: acks recorded (generation, frame).
  const SAVE_SESSION = `WITH dropped AS (
      DELETE FROM ${schema}.pending_frames WHERE database = $1 AND $6::boolean
    ), appended AS (
      INSERT INTO ${schema}.pending_frames (database, position, pgno, commit_size, page)
      SELECT $1, $7 + f.i - 1, f.pgno, f.commit_size, f.page
      FROM unnest($8::int[], $9::int[], $10::bytea[]) WITH ORDINALITY AS f(pgno, commit_size, page, i)
    ), acks AS (
      INSERT INTO ${schema}.acked_pending (database, generation, frame_no)
      SELECT $1, a.generation, a.frame_no FROM unnest($11::int[], $12::int[]) AS a(generation, frame_no)
      ON CONFLICT DO NOTHING
    )
    UPDATE ${schema}.databases SET session_baton = $2, session_touched_at = $3, session_version = $4, closed_baton = $5
    WHERE name = $1`

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

      // The committed head as an image: read and replaced only by the push holding the database's lock.
      let head: HeadImage | undefined
      let tentativeHead: HeadImage | undefined
      let pendingCache: PendingCache | undefined
      let tentativePending: PendingCache | undefined
      // Frames answered Ok while pending during this transaction, stored with its session.
      let acksToStore: Array<readonly [generation: number, frameNo: number]> = []
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

      /**
       * Applies committed frames `from..to` of a generation to `image`, read a batch at a time. `applyFrames`
       * stops at a batch's last commit frame, so the frames of a transaction a batch boundary cuts are
       * carried into the next batch, where its commit frame is.
       */
      const applyCommitted = (image: Uint8Array, generation: number, from: number, to: number) =>
        Effect.gen(function*() {
          let result = image
          let carried: ReadonlyArray<WalFrame.Frame> = []
          for (let start = from; start <= to; start += INSERT_BATCH) {
            const end = Math.min(to + 1, start + INSERT_BATCH)
            const frames = yield* readFrames(generation, start, end)
            if (frames.length !== end - start) {
              return yield* Effect.dieMessage(`frames ${start}..${end - 1} of ${name}/${generation} are missing`)
            }
            const batch = carried.length === 0 ? frames : carried.concat(frames)
            const committed = WalFrame.committedLength(batch)
            result = WalFrame.applyFrames(result, batch)
            carried = batch.slice(committed)
          }
          if (carried.length > 0) {
            return yield* Effect.dieMessage(`frame ${to} of ${name}/${generation} is not a commit frame`)
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

      /** The verdict of SQLite on `image`: on the worker when there is one. */
      const check = (image: Uint8Array, plan: ReadonlyArray<string>) =>
        serverMetrics.timeCheck(
          checker !== undefined
            ? checker.checkImage(image, plan).pipe(Effect.mapError(storage(`checking a commit to ${name} failed`)))
            : Effect.sync(() => checkImage(image, plan, { owned: true }))
        )

      /**
       * Brings the head image forward with the frames `lock_database` returned: they are committed, so the
       * image is right whatever this transaction does.
       */
      const catchUp = (state: LockedState) => {
        const frames = fromJson(state.catch_up)
        const known = head
        if (frames.length === 0 || known === undefined) return
        const image = WalFrame.applyFrames(known.image, frames)
        const schema = known.schema === undefined || integrityCheck !== "changed_tables"
          ? undefined
          : planOnImage(integrityCheck, known.image, known.schema, frames).schema
        head = { ...known, lastFrame: known.lastFrame + frames.length, image, schema }
      }

      /** Stores the session a push left and the acks it recorded, in one statement. */
      const saveSession = (before: StoredSession, after: StoredSession, version: string) =>
        Effect.gen(function*() {
          const old = before.session
          const now = after.session
          const acks = acksToStore
          acksToStore = []
          let nextVersion = version
          let from = 0
          let appended: ReadonlyArray<WalFrame.Frame> = []
          let dropPending = false
          if (now === undefined) {
            if (old !== undefined) {
              dropPending = true
              nextVersion = String(BigInt(version) + 1n)
            }
          } else {
            const appends = old !== undefined && old.baton === now.baton && now.pending.length >= old.pending.length &&
              old.pending.every((frame, i) => frame === now.pending[i])
            if (!appends || now.pending.length !== old!.pending.length) {
              from = appends ? old!.pending.length : 0
              appended = now.pending.slice(from)
              dropPending = !appends && old !== undefined
              nextVersion = String(BigInt(version) + 1n)
            }
          }
          if (dropPending && appended.length > 0) {
            // The old frames' positions are taken again: their DELETE must have happened first, which a
            // WITH clause beside the INSERT would not guarantee.
            yield* sql`DELETE FROM ${pendingTable} WHERE database = ${name}`
            dropPending = false
          }
          yield* sql.unsafe(SAVE_SESSION, [
            name,
            now?.baton ?? null,
            now?.touchedAt ?? null,
            nextVersion,
            after.closedBaton ?? null,
            dropPending,
            from,
            ...frameArrays(appended),
            acks.map(([generation]) => generation),
            acks.map(([, frameNo]) => frameNo)
          ])
          tentativePending = now === undefined ? undefined : { id: lockedId, baton: now.baton, version: nextVersion, frames: now.pending }
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
              // Nothing of this transaction is written yet: the image is the committed head, worth keeping
              // whatever becomes of this commit (a refused or conflicting push would read it again).
              head = { id: lockedId, generation, lastFrame: firstFrameNo - 1, image, schema }
              const next = planOnImage(integrityCheck, image, schema, frames)
              const candidate = WalFrame.applyFrames(image, frames)
              const problem = yield* check(candidate, next.plan)
              if (problem !== undefined) return Either.left(problem)
              tentativeHead = { id: lockedId, generation, lastFrame: last, image: candidate, schema: next.schema }
            }
            yield* sql.unsafe(COMMIT, [name, generation, firstFrameNo, ...frameArrays(frames), last])
            yield* commitNotify.notifyCommit(sql, channel, name, generation, last)
            return Either.right(undefined)
          }).pipe(
            Effect.catchTag("SqlError", (e) => Effect.fail(storage(`storing frames ${firstFrameNo}.. of ${name}/${generation} failed`)(e)))
          ),
        materialize: (generation) =>
          Effect.flatMap(lastFrameOf(generation), (last) => Effect.map(imageAt(generation, last), (at) => at.image)).pipe(
            Effect.catchTag("SqlError", (e) => Effect.fail(storage(`materialising ${name}/${generation} failed`)(e)))
          ),
        // Stored with the session, before the transaction commits and so before the answer leaves.
        recordAck: (generation, frameNo) =>
          Effect.sync(() => {
            acksToStore.push([generation, frameNo])
          }),
        roll: (generation, base) =>
          sql`
            WITH started AS (
              INSERT INTO ${generationsTable} ${
            sql.insert({ database: name, generation, last_frame: 0, base: Buffer.from(base.buffer, base.byteOffset, base.byteLength) })
          }
            )
            DELETE FROM ${ackedTable} WHERE database = ${name} AND generation < ${generation}`.pipe(
            Effect.tap(() =>
              Effect.sync(() => {
                if (integrityCheck !== "off") tentativeHead = { id: lockedId, generation, lastFrame: 0, image: base, schema: undefined }
              })
            ),
            Effect.zipRight(commitNotify.notifyCommit(sql, channel, name, generation, 0)),
            Effect.asVoid,
            Effect.mapError(storage(`starting generation ${generation} of ${name} failed`))
          ),
        // One statement, so atomic inside a push transaction or outside one.
        dropThrough: (generation) =>
          sql`
            WITH dropped AS (
              UPDATE ${generationsTable} SET dropped = true, base = NULL WHERE database = ${name} AND generation <= ${generation}
            )
            DELETE FROM ${framesTable} WHERE database = ${name} AND generation <= ${generation}`.pipe(
            Effect.asVoid,
            Effect.mapError(storage(`dropping generations through ${generation} of ${name} failed`))
          ),
        close: Effect.void,
        shared: {
          generations: readGenerations.pipe(Effect.mapError(storage(`reading the generations of ${name} failed`))),
          exclusive: (body, save) =>
            sql.withTransaction(Effect.gen(function*() {
              tentativeHead = undefined
              tentativePending = undefined
              acksToStore = []
              const cached = integrityCheck === "off" ? undefined : head
              const known = pendingCache
              const [row] = yield* sql.unsafe<{ state: LockedState | null }>(LOCK, [
                name,
                cached?.id ?? known?.id ?? "",
                cached?.generation ?? 0,
                cached?.lastFrame ?? 0,
                CATCH_UP_IN_LOCK,
                known !== undefined && (cached === undefined || known.id === cached.id) ? known.version : "-1"
              ])
              const state = row?.state
              if (state == null) return yield* Effect.dieMessage(`database ${name} has no row`)
              lockedId = state.id
              catchUp(state)
              const records = state.generations.map(([generation, lastFrame, dropped]): GenerationRecord => ({
                generation,
                lastFrame,
                dropped
              }))
              const version = state.session_version
              const pending = state.session_baton === null
                ? undefined
                : state.pending !== null
                ? fromJson(state.pending)
                : known !== undefined && known.id === state.id && known.baton === state.session_baton && known.version === version
                ? known.frames
                : yield* Effect.dieMessage(`the pending frames of ${name} were not returned`)
              const before: StoredSession = {
                session: state.session_baton === null || pending === undefined ? undefined : {
                  baton: state.session_baton,
                  touchedAt: Number(state.session_touched_at),
                  pending
                },
                closedBaton: state.closed_baton ?? undefined
              }
              const stored: StoredState = {
                ...before,
                generations: records,
                ackedPending: state.acked ?? [],
                headPages: state.head_pages ?? (state.base_bytes ?? 0) / WalFrame.PAGE_SIZE,
                basePages: state.base_bytes === null ? undefined : state.base_bytes / WalFrame.PAGE_SIZE
              }
              const exit = yield* Effect.exit(body(stored))
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
                  acksToStore = []
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
