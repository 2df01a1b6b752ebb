/**
 * The protocol core behind every `ServerStore` layer: argument validation, generations, idempotent
 * pushes, conflicts, gaps, baton sessions, rolls. Storage is reached only through `Backend`, so the
 * in-memory and the SQLite store behave identically by construction.
 *
 * Concurrency: pushes to one database run one at a time under its semaphore and uninterruptibly (a
 * client that hangs up cannot leave half a commit behind). Pulls, info and exports take no lock: they
 * read the committed head from memory, which moves only after the backend has made the frames
 * durable, and frames at or below a head never change.
 *
 * Shared storage (`DatabaseBackend.shared`, several server processes on one PostgreSQL): no process's
 * memory can be trusted between requests, so every push runs inside `shared.exclusive`, one storage
 * transaction holding the database's lock across processes, which first loads the stored state into
 * the handle (head, generations, baton session, acks) and stores the session the push leaves; reads
 * take the committed generations from storage instead of the handle.
 *
 * The malformed-database check runs once per request, on the state after its last commit frame: a
 * request holding several small transactions (the libSQL client batches 128 frames regardless of
 * transaction boundaries) costs one check, not one per transaction. The states between those
 * transactions are not checked on their own.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Deferred from "effect/Deferred"
import * as FiberId from "effect/FiberId"
import type * as Scope from "effect/Scope"
import * as crypto from "node:crypto"
import * as Duration from "effect/Duration"
import type {
  Body,
  DatabaseInfo,
  Options,
  PullResult,
  PushResult,
  Service,
  Snapshot,
  StoreStats
} from "../../ServerStore.js"
import { isDatabaseName, MAX_FRAMES_PER_REQUEST } from "../../SyncProtocol.js"
import * as WalFrame from "../../WalFrame.js"
import * as CommitNotify from "./commitNotify.js"
import * as FramePool from "./framePool.js"
import * as ServerBody from "./serverBody.js"
import * as SnapshotCache from "./snapshotCache.js"
import { StoreError } from "./storeError.js"
import { checkHeaderFrames, emptyWalBase } from "./sqliteImage.js"

/** What a backend knows about one generation when a database is opened. */
export interface GenerationRecord {
  readonly generation: number
  /** Committed frames of the generation (its last frame number). */
  readonly lastFrame: number
  /** Its base and frames are gone (keepGenerations); only `lastFrame` remains. */
  readonly dropped: boolean
  /** When it started (ms since the epoch), when the backend knows: the retention time counts from the next one's start. */
  readonly startedAt?: number | undefined
}

/** Storage of one database. Every method is called with the database's push lock held, except reads. */
export interface DatabaseBackend {
  /**
   * The database's identity, created with it and stored with it. Undefined only for a database
   * created before identities existed and opened read-only, where none can be stored.
   */
  readonly id: string | undefined
  /** Opened read-only: reads work, `commit`, `recordAck`, `roll` and `dropThrough` must not be called. */
  readonly readOnly: boolean
  /** Every generation ever created, oldest first; never empty (a new database has generation 1). */
  readonly generations: ReadonlyArray<GenerationRecord>
  /** The current generation's frame numbers answered Ok while still pending (see `recordAck`). */
  readonly ackedPending: ReadonlyArray<number>
  readonly readBase: (generation: number) => Effect.Effect<Uint8Array, StoreError>
  /** The base as a body read as it is consumed; without it, `readBase` is served from memory. */
  readonly openBase?: ((generation: number) => Effect.Effect<Body, StoreError, Scope.Scope>) | undefined
  /** The base's size in bytes without reading it; without it, `readBase` is read once. */
  readonly baseSize?: ((generation: number) => Effect.Effect<number, StoreError>) | undefined
  /**
   * The generation's base with frames `1..frameNo` applied (`frameNo` a commit frame or 0), as a body;
   * without it, the core applies `readFrames` to `readBase` in memory.
   */
  readonly openSnapshot?: ((generation: number, frameNo: number) => Effect.Effect<Body, StoreError, Scope.Scope>) | undefined
  /** Committed frames `start..end-1` of a generation; fewer only when the generation was dropped. */
  readonly readFrames: (
    generation: number,
    start: number,
    end: number
  ) => Effect.Effect<ReadonlyArray<WalFrame.Frame>, StoreError>
  /**
   * Checks the current generation's head with `frames` (whole transactions) applied and, when SQLite
   * finds nothing wrong, stores them durably as frames `firstFrameNo..` of `generation` and moves the
   * head. Left(message) when the result is malformed; then nothing is stored. Recorded acks below the
   * new head are forgotten with it.
   */
  readonly commit: (
    generation: number,
    firstFrameNo: number,
    frames: ReadonlyArray<WalFrame.Frame>
  ) => Effect.Effect<Either.Either<void, string>, StoreError>
  /**
   * Told that a transaction of `frames` frames is pending (its commit frame still to come), so the backend
   * can get ready for a large commit meanwhile (start its check worker). Never waited for.
   */
  readonly pendingCommit?: ((frames: number) => void) | undefined
  /**
   * The generation's base with all its committed frames applied: `WalFrame.applyFrames(base, frames)`,
   * which is what a replica's TRUNCATE checkpoint of the generation leaves.
   */
  readonly materialize: (generation: number) => Effect.Effect<Uint8Array, StoreError>
  /**
   * Durably notes that frame `frameNo` of `generation` was answered Ok while still pending, before the
   * answer leaves: the pusher now counts it as stored, and must not later be let to continue after it
   * on top of someone else's frames (see the rewind in `pushLocked`).
   */
  readonly recordAck: (generation: number, frameNo: number) => Effect.Effect<void, StoreError>
  /**
   * Starts the generation after the current one with the current one's base and all its frames applied
   * (what `materialize` gives), built in storage rather than in memory, at `startedAt` (ms); answers the
   * new base's size in bytes. Without it, the core uses `materialize` and `roll`.
   */
  readonly rollForward?: ((startedAt: number) => Effect.Effect<number, StoreError>) | undefined
  /** Starts `generation` with `base` and no frames, at `startedAt` (ms); it becomes the current generation. */
  readonly roll: (generation: number, base: Uint8Array, startedAt?: number) => Effect.Effect<void, StoreError>
  /** Forgets the bases and frames of every generation up to and including `generation`. */
  readonly dropThrough: (generation: number) => Effect.Effect<void, StoreError>
  readonly close: Effect.Effect<void>
  /** Present when other processes use the same storage. */
  readonly shared?: SharedStorage | undefined
}

/** The baton session and the last closed baton, as a shared backend stores them between pushes. */
export interface StoredSession {
  readonly session: { readonly baton: string; readonly pending: ReadonlyArray<WalFrame.Frame>; readonly touchedAt: number } | undefined
  readonly closedBaton: string | undefined
}

/** What a shared backend holds for one database when a push takes its lock. */
export interface StoredState extends StoredSession {
  readonly generations: ReadonlyArray<GenerationRecord>
  /** The current generation's frame numbers answered Ok while pending. */
  readonly ackedPending: ReadonlyArray<number>
  /** Pages of the current generation's committed head and of its base, when the backend read them with the rest. */
  readonly headPages?: number | undefined
  readonly basePages?: number | undefined
}

/** Storage several server processes use at once (see the module comment). */
export interface SharedStorage {
  /** The generations as committed now, for reads. */
  readonly generations: Effect.Effect<ReadonlyArray<GenerationRecord>, StoreError>
  /**
   * Runs `body` as one storage transaction holding the database's lock against every process: `body`
   * gets the stored state, and `save()` (the session as `body` left it) is stored before the transaction
   * commits. A refusal (any StoreError but Storage) commits too, since it can end a session; a Storage
   * failure or a defect rolls everything back.
   */
  readonly exclusive: <A>(
    body: (state: StoredState) => Effect.Effect<A, StoreError>,
    save: () => StoredSession
  ) => Effect.Effect<A, StoreError>
}

/** A place databases live in. `open` creates the database (generation 1 with `emptyBase`) on first use. */
export interface Backend {
  /** Nothing can be created or written: every database opens read-only. */
  readonly readOnly: boolean
  /** The databases that exist when the store starts. */
  readonly list: Effect.Effect<ReadonlyArray<string>, StoreError>
  readonly open: (name: string, emptyBase: Uint8Array) => Effect.Effect<DatabaseBackend, StoreError>
  /** Counts from storage, when other processes share it (the core counts its own handles otherwise). */
  readonly stats?: Effect.Effect<StoreStats, StoreError> | undefined
  /**
   * Present when other processes commit to the same storage: runs for the store's life and reports
   * their commits to `notifier` (the store reports its own). `head` reads a database's committed head,
   * for when reports may be missing.
   */
  readonly watchCommits?:
    | ((
      notifier: CommitNotify.CommitNotifier,
      head: (database: string) => Effect.Effect<DatabaseInfo, StoreError>
    ) => Effect.Effect<void, never, Scope.Scope>)
    | undefined
}

/** The store options the protocol core reads: the public `ServerStore.Options`, documented there. */
export type CoreOptions = Options

/** Frames a baton session may hold before its commit frame (256 MiB of pages, held in memory). */
export const DEFAULT_MAX_PENDING_FRAMES = 65_536

/** Frames all baton sessions of a server may hold together (1 GiB of pages). */
export const DEFAULT_MAX_PENDING_FRAMES_TOTAL = 262_144

export const DEFAULT_BATON_IDLE_MS = 10_000

/** Databases kept open at once (each holds two file descriptors and about 250 KB). */
export const DEFAULT_MAX_OPEN_DATABASES = 256

export const DEFAULT_GENERATION_GROWTH = 1

export const DEFAULT_GENERATION_MIN_FRAMES = 1000

export const DEFAULT_KEEP_GENERATIONS = 2

export const DEFAULT_KEEP_GENERATIONS_MS = 60 * 60 * 1000

export const DEFAULT_MAX_PULL_FRAMES = MAX_FRAMES_PER_REQUEST

/** 64 MiB of pages: one pull answer is built in memory. */
export const MAX_PULL_FRAMES_LIMIT = 16_384

/** When a generation is rolled, from the options. */
export type RollPolicy =
  | { readonly _tag: "Frames"; readonly frames: number }
  | { readonly _tag: "Growth"; readonly growth: number; readonly minFrames: number }
  | { readonly _tag: "Never" }

export const rollPolicy = (options: CoreOptions): RollPolicy =>
  options.generationFrames !== undefined
    ? { _tag: "Frames", frames: options.generationFrames }
    : options.generationGrowth === "never"
    ? { _tag: "Never" }
    : {
      _tag: "Growth",
      growth: options.generationGrowth ?? DEFAULT_GENERATION_GROWTH,
      minFrames: options.generationMinFrames ?? DEFAULT_GENERATION_MIN_FRAMES
    }

/**
 * Whether a generation of `lastFrame` frames over a base of `basePages` pages is due to roll. The growth
 * rule bounds the frame log by the database: once the frames hold more pages than the base times the
 * factor, a replica that bootstraps from the base pulls more than the database itself.
 */
export const rollDue = (policy: RollPolicy, lastFrame: number, basePages: number): boolean => {
  switch (policy._tag) {
    case "Never":
      return false
    case "Frames":
      return lastFrame > policy.frames
    case "Growth":
      return lastFrame > policy.minFrames && lastFrame > basePages * policy.growth
  }
}

/** How long old generations are kept, from the options: a rule left out protects nothing. */
export interface Retention {
  readonly count: number | undefined
  readonly ms: number | undefined
}

export const retention = (options: CoreOptions): Retention =>
  options.keepGenerations === undefined && options.keepGenerationsMs === undefined
    ? { count: DEFAULT_KEEP_GENERATIONS, ms: DEFAULT_KEEP_GENERATIONS_MS }
    : { count: options.keepGenerations, ms: options.keepGenerationsMs }

/**
 * The newest generation to drop (`oldest - 1` when none): generation g < current is kept while it is one
 * of the `count` before the current one, or while its successor started less than `ms` ago. Both
 * protections only grow with g, so what is dropped is always a prefix.
 */
export const dropThroughFor = (
  rule: Retention,
  current: number,
  oldest: number,
  startedAt: (generation: number) => number,
  now: number
): number => {
  let through = oldest - 1
  for (let g = oldest; g < current; g++) {
    const byCount = rule.count !== undefined && g >= current - rule.count
    const byTime = rule.ms !== undefined && now - startedAt(g + 1) < rule.ms
    if (byCount || byTime) break
    through = g
  }
  return through
}

/**
 * Where a push to an older generation continues in the current one, as the frame-number offset to
 * subtract, or undefined when it does not continue there. Generation g+1's base is g's base with all of
 * g's frames applied, so a pusher that holds all of g (its push starts after g's last frame) made its
 * frames on top of g+1's base: its frame `last(g) + k` is frame k of g+1, and so on across several
 * rolls. This is what keeps a libSQL client that wrote while its own push rolled the server from being
 * stranded: it never pulls while it holds local writes, so it keeps pushing to the generation it knows.
 */
export const continuation = (
  lastFrame: (generation: number) => number,
  generation: number,
  current: number,
  start: number
): number | undefined => {
  let offset = 0
  for (let g = generation; g < current; g++) {
    const last = lastFrame(g)
    if (start - offset <= last) return undefined
    offset += last
  }
  return offset
}

interface Session {
  readonly baton: string
  pending: ReadonlyArray<WalFrame.Frame>
  touchedAt: number
}

/** Generations as seen by one request. */
interface View {
  readonly name: string
  readonly current: number
  readonly oldest: number
  readonly lastFrames: ReadonlyMap<number, number>
}

interface Handle {
  readonly name: string
  /** Requests using the handle right now: it is closed only when none is, and no session is open. */
  users: number
  /** Closed for being idle: a request that got it just before must open the database again. */
  closed: boolean
  readonly backend: DatabaseBackend
  readonly lock: Effect.Semaphore
  current: number
  /** The oldest generation whose base and frames are still there. */
  oldest: number
  readonly lastFrames: Map<number, number>
  session: Session | undefined
  /** The baton of the last session a commit ended: a retry of that request is answered, not refused. */
  closedBaton: string | undefined
  /** Frame numbers (at or above the head) some pusher was told are stored while they were pending. */
  readonly acked: Set<number>
  /** Pages of the current generation's committed head (its last commit size), read on first need. */
  headPages: number | undefined
  /** Pages of the current generation's base, read on first need (the growth rule compares with it). */
  basePages: number | undefined
  /** When each generation started, as far as known (ms); generations before this process use its start. */
  readonly startedAt: Map<number, number>
  /** A push under the lock committed or rolled: waiting pulls are woken once its result is durable. */
  moved: boolean
}

const fail = (reason: StoreError["reason"], message: string) => Effect.fail(new StoreError({ reason, message }))

const isPositiveInt = (n: number) => Number.isSafeInteger(n) && n >= 1

const validateOptions = (options: CoreOptions) => {
  const check = (name: string, value: number | undefined, min: number) => {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= min)) {
      throw new Error(`ServerStore: ${name} must be an integer >= ${min}, got ${value}`)
    }
  }
  check("generationFrames", options.generationFrames, 1)
  check("generationMinFrames", options.generationMinFrames, 0)
  check("keepGenerations", options.keepGenerations, 0)
  check("keepGenerationsMs", options.keepGenerationsMs, 0)
  check("maxPullFrames", options.maxPullFrames, 1)
  if (options.maxPullFrames !== undefined && options.maxPullFrames > MAX_PULL_FRAMES_LIMIT) {
    throw new Error(`ServerStore: maxPullFrames must be at most ${MAX_PULL_FRAMES_LIMIT}, got ${options.maxPullFrames}`)
  }
  const growth = options.generationGrowth
  if (growth !== undefined && growth !== "never" && !(Number.isFinite(growth) && growth > 0)) {
    throw new Error(`ServerStore: generationGrowth must be a number > 0 or "never", got ${growth}`)
  }
  check("batonIdleMs", options.batonIdleMs, 1)
  check("maxPendingFrames", options.maxPendingFrames, 1)
  check("maxPendingFramesTotal", options.maxPendingFramesTotal, 1)
  check("maxOpenDatabases", options.maxOpenDatabases, 1)
  check("maxDatabases", options.maxDatabases, 0)
}

/**
 * SQLite's own bound on a commit size: a replica that checkpointed the previous commit and then reads
 * these frames refuses, as SQLITE_CORRUPT, a database larger than its file plus the WAL's pages plus
 * 64 KiB (walCheckpoint in wal.c). A real transaction grows the file only by pages it writes; a forged
 * commit size would otherwise make every replica (and the server's own check) allocate up to 16 TiB.
 */
export const checkCommitSizes = (frames: ReadonlyArray<WalFrame.Frame>, headPages: number): string | undefined => {
  const slack = 65_536 / WalFrame.PAGE_SIZE
  let pages = headPages
  let written = 0
  for (const frame of frames) {
    written++
    if (frame.commitSize === 0) continue
    if (frame.commitSize > pages + written + slack) {
      return `a commit of ${written} frames grows the database from ${pages} to ${frame.commitSize} pages`
    }
    pages = frame.commitSize
    written = 0
  }
  return undefined
}

const viewOf = (name: string, records: ReadonlyArray<GenerationRecord>): View => {
  const lastFrames = new Map<number, number>()
  let current = 0
  let oldest = 1
  for (const record of records) {
    lastFrames.set(record.generation, record.lastFrame)
    current = Math.max(current, record.generation)
    if (record.dropped) oldest = Math.max(oldest, record.generation + 1)
  }
  if (current === 0) throw new Error(`ServerStore: database ${name} has no generation`)
  return { name, current, oldest, lastFrames }
}

/** Puts the stored state of a shared backend into the handle, as the push that holds its lock sees it. */
const loadState = (h: Handle, state: StoredState) => {
  const view = viewOf(h.name, state.generations)
  if (view.current !== h.current || view.lastFrames.get(view.current) !== h.lastFrames.get(h.current)) {
    h.headPages = undefined
  }
  // Another process rolled: the base the growth rule compares with is the new generation's.
  if (view.current !== h.current) h.basePages = undefined
  if (state.headPages !== undefined) h.headPages = state.headPages
  if (state.basePages !== undefined) h.basePages = state.basePages
  h.current = view.current
  h.oldest = view.oldest
  h.lastFrames.clear()
  for (const [generation, last] of view.lastFrames) h.lastFrames.set(generation, last)
  h.session = state.session === undefined ? undefined : { ...state.session }
  h.closedBaton = state.closedBaton
  h.acked.clear()
  for (const n of state.ackedPending) h.acked.add(n)
}

const newBaton = () => crypto.randomBytes(16).toString("hex")

/** How often idle batons and idle databases are looked for: a fraction of the baton idle time. */
export const sweepInterval = (batonIdleMs: number): number => Math.min(1_000, Math.max(10, Math.floor(batonIdleMs / 4)))

/**
 * Which open databases to close so that at most `max` stay open: the least recently used first, and
 * only those no request is using and no baton session holds (their pending frames live in the handle).
 * `handles` is in least-recently-used-first order.
 */
export const evictable = <H extends { readonly users: number; readonly session: unknown }>(
  handles: Iterable<H>,
  max: number
): Array<H> => {
  const all = Array.from(handles)
  const out: Array<H> = []
  let excess = all.length - max
  for (const h of all) {
    if (excess <= 0) break
    if (h.users === 0 && h.session === undefined) {
      out.push(h)
      excess--
    }
  }
  return out
}

/**
 * Builds the service over a backend. Open databases are closed when the scope closes; a fiber of the
 * scope drops idle baton sessions and closes idle databases beyond `maxOpenDatabases`.
 */
export const make = (backend: Backend, options: CoreOptions = {}): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    yield* Effect.try(() => validateOptions(options)).pipe(Effect.orDie)
    const emptyBase = yield* Effect.try(() => emptyWalBase()).pipe(Effect.orDie)
    const batonIdleMs = options.batonIdleMs ?? DEFAULT_BATON_IDLE_MS
    const maxPendingFrames = options.maxPendingFrames ?? DEFAULT_MAX_PENDING_FRAMES
    const maxPullFrames = options.maxPullFrames ?? DEFAULT_MAX_PULL_FRAMES
    const policy = rollPolicy(options)
    const keep = retention(options)
    const maxPendingFramesTotal = options.maxPendingFramesTotal ?? DEFAULT_MAX_PENDING_FRAMES_TOTAL
    const maxOpen = options.maxOpenDatabases ?? DEFAULT_MAX_OPEN_DATABASES
    const opening = new Map<string, Deferred.Deferred<Handle, StoreError>>()
    // Least recently used first: a use moves a handle to the end.
    const opened = new Map<string, Handle>()
    // The databases that exist (or are being created), to cap how many this server creates.
    const known = new Set(yield* backend.list.pipe(Effect.orDie))
    // The last finished baton of a database closed for being idle: a retry of its last request is still answered.
    const closedBatons = new Map<string, string>()
    yield* Effect.addFinalizer(() => Effect.forEach(opened.values(), (h) => h.backend.close, { discard: true }))
    const notifier = CommitNotify.make()
    const snapshots = SnapshotCache.make()

    const openHandle = (name: string): Effect.Effect<Handle, StoreError> =>
      Effect.zip(backend.open(name, emptyBase), Clock.currentTimeMillis).pipe(
        Effect.map(([db, now]): Handle => {
          const { current, lastFrames, oldest } = viewOf(name, db.generations)
          // A start the backend does not know counts from now: retention by time never drops early.
          const startedAt = new Map<number, number>()
          for (const record of db.generations) startedAt.set(record.generation, record.startedAt ?? now)
          const closedBaton = closedBatons.get(name)
          closedBatons.delete(name)
          return {
            name,
            users: 0,
            closed: false,
            backend: db,
            lock: Effect.unsafeMakeSemaphore(1),
            current,
            oldest,
            lastFrames: new Map(lastFrames),
            session: undefined,
            closedBaton,
            acked: new Set(db.ackedPending),
            headPages: undefined,
            basePages: undefined,
            startedAt,
            moved: false
          }
        }),
        // A keepGenerations lowered between runs, or a crash between a roll and its drop, is settled here.
        Effect.tap((handle) => (handle.backend.readOnly ? Effect.void : dropOld(handle)))
      )

    // Refuses a database that would be created beyond what this store may create; claims its place otherwise.
    const admit = (name: string): StoreError | undefined => {
      if (known.has(name)) return undefined
      if (backend.readOnly) {
        return new StoreError({
          reason: "ReadOnly",
          message: `the store is read-only: database ${name} does not exist and cannot be created`
        })
      }
      if (options.maxDatabases !== undefined && known.size >= options.maxDatabases) {
        return new StoreError({
          reason: "DatabaseLimit",
          message: `database ${name} does not exist, and this server creates at most ${options.maxDatabases} databases`
        })
      }
      known.add(name)
      return undefined
    }

    const handle = (name: string): Effect.Effect<Handle, StoreError> => {
      if (!isDatabaseName(name)) {
        return fail("BadRequest", `invalid database name ${JSON.stringify(String(name)).slice(0, 80)}`)
      }
      return Effect.suspend(() => {
        const existing = opening.get(name)
        if (existing !== undefined) return Deferred.await(existing)
        const isNew = !known.has(name)
        const refused = admit(name)
        if (refused !== undefined) return Effect.fail(refused)
        const deferred = Deferred.unsafeMake<Handle, StoreError>(FiberId.none)
        opening.set(name, deferred)
        return openHandle(name).pipe(
          Effect.exit,
          Effect.flatMap((exit) => {
            // A failed open is not remembered: the next request tries again.
            if (exit._tag === "Failure") {
              opening.delete(name)
              if (isNew) known.delete(name)
            } else opened.set(name, exit.value)
            return Deferred.done(deferred, exit)
          }),
          Effect.zipRight(Deferred.await(deferred)),
          Effect.uninterruptible
        )
      })
    }

    // Closes the least recently used idle databases beyond the bound. Synchronous up to the closes, so
    // no request can take a handle between the choice and the close.
    const closeIdle = Effect.suspend(() => {
      const victims = evictable(opened.values(), maxOpen)
      for (const h of victims) {
        h.closed = true
        opened.delete(h.name)
        opening.delete(h.name)
        if (h.closedBaton !== undefined) closedBatons.set(h.name, h.closedBaton)
      }
      return Effect.forEach(victims, (h) => h.backend.close, { discard: true })
    })

    /** Runs `use` with the database's handle held open. */
    const withHandle = <A, R = never>(
      name: string,
      use: (h: Handle) => Effect.Effect<A, StoreError, R>
    ): Effect.Effect<A, StoreError, R> =>
      Effect.acquireUseRelease(
        Effect.suspend(() => {
          const take = (h: Handle): Effect.Effect<Handle, StoreError> => {
            h.users++
            opened.delete(name)
            opened.set(name, h)
            return Effect.succeed(h)
          }
          const acquire = (h: Handle): Effect.Effect<Handle, StoreError> =>
            // Closed between its open and this request's use of it: open it again.
            h.closed ? Effect.flatMap(handle(name), acquire) : take(h)
          // An open database's handle at once (what `handle` would answer, after waiting on its opening).
          const open = opened.get(name)
          return open !== undefined && !open.closed ? take(open) : Effect.flatMap(handle(name), acquire)
        }),
        use,
        (h) =>
          Effect.suspend(() => {
            h.users--
            return opened.size > maxOpen ? closeIdle : Effect.void
          })
      )

    // Frames held by every open baton session. Sessions are never closed for idleness with their
    // database, so every one of them is in `opened`.
    const pendingFramesTotal = () => {
      let total = 0
      for (const h of opened.values()) total += h.session?.pending.length ?? 0
      return total
    }

    // Drops the sessions idle past batonIdleMs, so an abandoned transaction's frames do not wait in
    // memory for the next push to its database. A database busy with a push is looked at next time.
    const expireSessions = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      for (const h of Array.from(opened.values())) {
        const session = h.session
        if (session === undefined || now - session.touchedAt <= batonIdleMs) continue
        yield* h.lock.withPermitsIfAvailable(1)(Effect.sync(() => {
          if (h.session === session && now - session.touchedAt > batonIdleMs) h.session = undefined
        }))
      }
    })

    // The sweep runs only while a baton session is open: idle databases beyond the bound are also
    // closed as requests release them, and a fiber waking every second for nothing costs CPU in an idle
    // server (and thousands of wake-ups under a test clock moved by hours).
    const sessionsOpen = yield* Effect.makeLatch(false)

    // Copies of a request's frames that `session` keeps past the request. A shared backend's session is
    // stored between pushes (and read back as new frames), so its copies are not reused.
    const framePool = FramePool.make()
    const keptCopies = (h: Handle, session: Session, frames: ReadonlyArray<WalFrame.Frame>) =>
      FramePool.copy(h.backend.shared === undefined ? framePool : undefined, session, frames)
    const anySession = () => {
      for (const h of opened.values()) if (h.session !== undefined) return true
      return false
    }
    yield* sessionsOpen.await.pipe(
      Effect.zipRight(Effect.sleep(sweepInterval(batonIdleMs))),
      Effect.zipRight(expireSessions),
      Effect.zipRight(closeIdle),
      // Checked and closed in one step: a session opened meanwhile opens the latch again.
      Effect.zipRight(Effect.sync(() => anySession() || sessionsOpen.unsafeClose())),
      Effect.forever,
      Effect.forkScoped,
      Effect.interruptible
    )

    const dropOld = (h: Handle): Effect.Effect<void, StoreError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const through = dropThroughFor(keep, h.current, h.oldest, (g) => h.startedAt.get(g) ?? now, now)
        if (through < h.oldest) return Effect.void
        return h.backend.dropThrough(through).pipe(Effect.tap(() => {
          h.oldest = through + 1
        }))
      })

    /** The generations a read goes by: the handle's own, or the committed ones of shared storage. */
    const viewFor = (h: Handle): Effect.Effect<View, StoreError> =>
      h.backend.shared === undefined
        ? Effect.succeed(h)
        : Effect.map(h.backend.shared.generations, (records) => viewOf(h.name, records))

    const checkGeneration = (h: View, generation: number): Effect.Effect<void, StoreError> => {
      if (!Number.isSafeInteger(generation)) return fail("BadRequest", `generation ${generation} is not an integer`)
      if (generation < 1 || generation > h.current) {
        return fail("GenerationNotFound", `database ${h.name} has no generation ${generation} (current is ${h.current})`)
      }
      if (generation < h.oldest) {
        return fail("GenerationGone", `generation ${generation} of database ${h.name} is no longer kept (oldest is ${h.oldest})`)
      }
      return Effect.void
    }

    const checkRange = (start: number, end: number): Effect.Effect<void, StoreError> => {
      if (!isPositiveInt(start)) return fail("BadRequest", `start ${start} must be an integer >= 1`)
      if (!Number.isSafeInteger(end) || end <= start) return fail("BadRequest", `end ${end} must be an integer > start ${start}`)
      return Effect.void
    }

    const info: Service["info"] = (database) =>
      withHandle(database, (h) =>
        Effect.map(viewFor(h), (v) => ({ generation: v.current, maxFrameNo: v.lastFrames.get(v.current)! })))

    // Asked on every request of the HTTP server: an open database answers without taking its handle.
    const databaseId: Service["databaseId"] = (database) =>
      Effect.suspend(() => {
        const h = opened.get(database)
        return h !== undefined && !h.closed
          ? Effect.succeed(h.backend.id)
          : withHandle(database, (h) => Effect.succeed(h.backend.id))
      })

    const exportGeneration: Service["exportGeneration"] = (database, generation) =>
      withHandle(database, (h) =>
        Effect.gen(function*() {
          yield* checkGeneration(yield* viewFor(h), generation)
          return yield* h.backend.readBase(generation)
        }))

    // The handle is held only while the body is opened: an open body reads its own file descriptor (or
    // bytes), whatever happens to the database afterwards.
    const openExport: Service["openExport"] = (database, generation) =>
      withHandle(database, (h) =>
        Effect.gen(function*() {
          // Shared storage: another process may have started or dropped generations since this one looked.
          yield* checkGeneration(yield* viewFor(h), generation)
          return yield* openBaseOf(h, generation)
        }))

    const openBaseOf = (h: Handle, generation: number): Effect.Effect<Body, StoreError, Scope.Scope> =>
      h.backend.openBase !== undefined
        ? h.backend.openBase(generation)
        : Effect.map(h.backend.readBase(generation), ServerBody.ofBytes)

    // At frame 0 the snapshot is the base itself.
    const openSnapshotAt = (h: Handle, generation: number, frameNo: number): Effect.Effect<Body, StoreError, Scope.Scope> =>
      frameNo === 0
        ? openBaseOf(h, generation)
        : h.backend.openSnapshot !== undefined
        ? h.backend.openSnapshot(generation, frameNo)
        : Effect.gen(function*() {
          const base = yield* h.backend.readBase(generation)
          const frames = yield* h.backend.readFrames(generation, 1, frameNo + 1)
          if (frames.length !== frameNo) return yield* fail("GenerationGone", `generation ${generation} is no longer kept`)
          return ServerBody.ofBytes(WalFrame.applyFrames(base, frames))
        })

    // A snapshot above frame 0 from memory when it was materialized before and is small (snapshotCache.ts);
    // read whole into memory the first time, so the next replica's answer neither builds nor reads it.
    const cachedSnapshotAt = (h: Handle, generation: number, frameNo: number): Effect.Effect<Body, StoreError, Scope.Scope> =>
      Effect.suspend(() => {
        // Without an identity a database made again under its name could not be told apart: not kept.
        if (frameNo === 0 || h.backend.id === undefined) return openSnapshotAt(h, generation, frameNo)
        const key = SnapshotCache.keyOf(h.name, h.backend.id, generation, frameNo)
        const cached = snapshots.get(key)
        if (cached !== undefined) return Effect.succeed(ServerBody.ofBytes(cached))
        return Effect.flatMap(openSnapshotAt(h, generation, frameNo), (body) =>
          snapshots.fits(body.size)
            ? Effect.map(ServerBody.readAll(body), (bytes) => {
              snapshots.set(key, bytes)
              return ServerBody.ofBytes(bytes)
            })
            : Effect.succeed(body))
      })

    const snapshot: Service["snapshot"] = (database) =>
      withHandle(database, (h) => snapshotOf(h))

    const snapshotOf = (h: Handle): Effect.Effect<Snapshot, StoreError, Scope.Scope> =>
      Effect.gen(function*() {
        // The head read here is a committed frame; frames at or below it never change. Only a roll that
        // drops the generation meanwhile can get in the way, and then the new current one is served.
        for (let attempt = 1;; attempt++) {
          // Shared storage: the head committed now, whichever process committed it.
          const v = yield* viewFor(h)
          const generation = v.current
          const frameNo = v.lastFrames.get(generation)!
          const body = yield* cachedSnapshotAt(h, generation, frameNo).pipe(
            Effect.catchIf((e) => e.reason === "GenerationGone" && attempt < 3, () => Effect.succeed(undefined))
          )
          if (body !== undefined) return { generation, frameNo, body } satisfies Snapshot
        }
      })

    const pull: Service["pull"] = (database, generation, start, end) =>
      Effect.flatMap(checkRange(start, end), () => withHandle(database, (h) => pullFrom(h, generation, start, end)))

    const pullFrom = (h: Handle, generation: number, start: number, end: number): Effect.Effect<PullResult, StoreError> =>
      Effect.gen(function*() {
        const database = h.name
        const v = yield* viewFor(h)
        yield* checkGeneration(v, generation)
        const last = v.lastFrames.get(generation)!
        if (start > last) {
          return {
            _tag: "CheckpointNeeded",
            generation: v.current,
            maxFrameNo: v.lastFrames.get(v.current)!
          } satisfies PullResult as PullResult
        }
        const to = Math.min(end - 1, last, start + maxPullFrames - 1)
        const frames = yield* h.backend.readFrames(generation, start, to + 1)
        if (frames.length !== to - start + 1) {
          // Dropped since the generations were read (keepGenerations): GenerationGone, not a defect.
          yield* checkGeneration(yield* viewFor(h), generation)
          return yield* Effect.dieMessage(
            `ServerStore: generation ${generation} of ${database} returned ${frames.length} frames for ${start}..${to}`
          )
        }
        return { _tag: "Frames", frames } satisfies PullResult as PullResult
      })

    const headPagesOf = (h: Handle, generation: number, head: number): Effect.Effect<number, StoreError> =>
      h.headPages !== undefined
        ? Effect.succeed(h.headPages)
        : (head === 0
          ? Effect.map(h.backend.readBase(generation), (base) => base.byteLength / WalFrame.PAGE_SIZE)
          : Effect.map(h.backend.readFrames(generation, head, head + 1), (frames) => frames[0].commitSize)).pipe(
            Effect.tap((pages) =>
              Effect.sync(() => {
                h.headPages = pages
              })
            )
          )

    const basePagesOf = (h: Handle): Effect.Effect<number, StoreError> =>
      h.basePages !== undefined
        ? Effect.succeed(h.basePages)
        : (h.backend.baseSize !== undefined
          ? h.backend.baseSize(h.current)
          : Effect.map(h.backend.readBase(h.current), (base) => base.byteLength)).pipe(
            Effect.map((bytes) => {
              h.basePages = bytes / WalFrame.PAGE_SIZE
              return h.basePages
            })
          )

    const maybeRoll = (h: Handle): Effect.Effect<void, StoreError> =>
      Effect.gen(function*() {
        const generation = h.current
        const last = h.lastFrames.get(generation)!
        // Not while a transaction is open, nor while a pusher that lost its session was told frames at or
        // past the head are stored: the rewind that protects it works inside one generation, and the
        // continuation rule (see `continuation`) relies on no such pusher existing at a roll.
        if (policy._tag === "Never" || h.session !== undefined || h.acked.size > 0 || last === 0) return
        if (!rollDue(policy, last, yield* basePagesOf(h))) return
        const now = yield* Clock.currentTimeMillis
        const baseBytes = h.backend.rollForward !== undefined
          ? yield* h.backend.rollForward(now)
          : yield* Effect.flatMap(
            h.backend.materialize(generation),
            (next) => Effect.as(h.backend.roll(generation + 1, next, now), next.byteLength)
          )
        h.lastFrames.set(generation + 1, 0)
        h.startedAt.set(generation + 1, now)
        h.current = generation + 1
        h.moved = true
        h.closedBaton = undefined
        h.acked.clear()
        h.headPages = baseBytes / WalFrame.PAGE_SIZE
        h.basePages = h.headPages
      })

    const recordAck = (h: Handle, generation: number, frameNo: number): Effect.Effect<void, StoreError> =>
      frameNo <= h.lastFrames.get(generation)! || h.acked.has(frameNo)
        ? Effect.void
        : Effect.tap(h.backend.recordAck(generation, frameNo), () => {
          h.acked.add(frameNo)
        })

    const pushLocked = (
      h: Handle,
      generation: number,
      start: number,
      end: number,
      frames: ReadonlyArray<WalFrame.Frame>,
      baton: string | undefined
    ): Effect.Effect<PushResult, StoreError> =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        if (h.session !== undefined && now - h.session.touchedAt > batonIdleMs) {
          // An abandoned transaction: its frames were never visible, so dropping them is invisible too.
          h.session = undefined
        }
        yield* checkGeneration(h, generation).pipe(
          Effect.catchIf((e) => e.reason === "GenerationGone", () => Effect.void)
        )
        if (generation < h.current) {
          const offset = continuation((g) => h.lastFrames.get(g)!, generation, h.current, start)
          if (offset === undefined) {
            return { _tag: "Conflict", generation, maxFrameNo: h.lastFrames.get(generation)! } as const
          }
          // Answered in the numbering of the generation asked for (the libSQL client adopts the answer's
          // generation, and keeps numbering its frames from there until it pulls).
          const result = yield* pushLocked(h, h.current, start - offset, end - offset, frames, baton)
          return { ...result, generation, maxFrameNo: result.maxFrameNo + offset }
        }
        let session = h.session
        let retryOfClosed = false
        if (baton !== undefined) {
          if (session !== undefined && session.baton === baton) {
            // the session's own next request
          } else if (session === undefined && baton === h.closedBaton) {
            retryOfClosed = true
          } else {
            return yield* fail("UnknownBaton", `baton ${baton.slice(0, 64)} is unknown or expired`)
          }
        } else if (session !== undefined) {
          // The request that opened this session, sent again because its answer was lost: whoever sends
          // frames identical to the session's pending ones is its owner, so it gets the baton back.
          const head = h.lastFrames.get(generation)!
          const known = head + session.pending.length
          if (end - 1 > head && end - 1 <= known) {
            const stored = start <= head ? [...(yield* h.backend.readFrames(generation, start, head + 1))] : []
            for (let n = Math.max(start, head + 1); n <= end - 1; n++) stored.push(session.pending[n - head - 1])
            if (stored.length === frames.length && stored.every((frame, i) => WalFrame.equals(frame, frames[i]))) {
              session.touchedAt = now
              yield* recordAck(h, generation, end - 1)
              return { _tag: "Ok", generation, maxFrameNo: end - 1, baton: session.baton } as const
            }
          }
          return yield* fail("Busy", `database ${h.name} is in the middle of another push's transaction`)
        }
        const touch = () => {
          if (session !== undefined) session.touchedAt = now
        }
        const answer = (maxFrameNo: number): Effect.Effect<PushResult, StoreError> =>
          session === undefined
            ? Effect.succeed({ _tag: "Ok", generation, maxFrameNo })
            : Effect.as(recordAck(h, generation, maxFrameNo), { _tag: "Ok", generation, maxFrameNo, baton: session.baton })

        const head = h.lastFrames.get(generation)!
        const pending = session?.pending ?? []
        const known = head + pending.length
        if (start > known + 1) {
          touch()
          if (session === undefined && baton === undefined && head >= 1 && h.acked.has(start - 1)) {
            // A pusher that lost its session comes back after the frame it was acknowledged. Answering
            // the head would make it resend from head + 1: the middle of its transaction, on top of
            // whatever others committed meanwhile. Asking for frame `head` first tells the cases apart:
            // if others committed, its frame `head` differs (conflict); if not, frame `head` is the
            // committed frame it built on, and it resends its whole transaction after it.
            return { _tag: "Ok", generation, maxFrameNo: head - 1 } as const
          }
          return yield* answer(known)
        }
        if (session === undefined && baton === undefined && start === head + 1 && h.acked.has(head)) {
          // A pusher was once told frame `head` was stored while it was pending, and its session was lost
          // since (idle, refused or a restart): others' commits now end exactly there. Its continuation
          // would land on their frames, and a newcomer's new transaction looks the same from here. Asking
          // for frame `head` again tells them apart: the newcomer has the committed one; the old pusher
          // has its pending frame (commit size 0, so never equal to a commit frame) and gets a conflict.
          return { _tag: "Ok", generation, maxFrameNo: head - 1 } as const
        }

        // Frames the server already has must come back byte for byte.
        const overlapEnd = Math.min(end - 1, known)
        if (start <= overlapEnd) {
          const committedEnd = Math.min(overlapEnd, head)
          const stored: Array<WalFrame.Frame> = []
          if (start <= committedEnd) {
            stored.push(...(yield* h.backend.readFrames(generation, start, committedEnd + 1)))
          }
          for (let n = Math.max(start, head + 1); n <= overlapEnd; n++) stored.push(pending[n - head - 1])
          for (let i = 0; i < stored.length; i++) {
            if (!WalFrame.equals(stored[i], frames[i])) {
              // The pusher's transaction no longer matches what it sent: it cannot be finished.
              if (session !== undefined) h.session = undefined
              return { _tag: "Conflict", generation, maxFrameNo: head } as const
            }
          }
        }
        if (end - 1 <= known) {
          touch()
          return yield* answer(end - 1)
        }
        if (retryOfClosed) {
          return yield* fail("UnknownBaton", `baton ${baton!.slice(0, 64)} belongs to a finished transaction`)
        }

        // Views into the request's body: copied only where they outlive the request (a session's pending frames).
        const fresh = frames.slice(known + 1 - start)
        const valid = WalFrame.validateTransactions(fresh, pending)
        if (Either.isLeft(valid)) return yield* fail("BadFrames", valid.left.message)
        const combined = pending.concat(fresh)
        const committed = WalFrame.committedLength(combined)
        if (combined.length - committed > maxPendingFrames) {
          return yield* fail("TooLarge", `a transaction of more than ${maxPendingFrames} frames is not accepted`)
        }
        const othersPending = pendingFramesTotal() - pending.length
        if (combined.length > committed && othersPending + combined.length - committed > maxPendingFramesTotal) {
          // The session stays as it was: the pusher may retry once other transactions end or idle out.
          return yield* fail(
            "PendingLimit",
            `unfinished transactions on this server already hold ${othersPending} frames (at most ${maxPendingFramesTotal})`
          )
        }
        // The session that keeps what stays pending (a new one if none is open), made when first needed.
        let keeping = session
        const keeperOf = (): Session => (keeping ??= { baton: newBaton(), pending: [], touchedAt: now })
        if (committed === 0) {
          const keeper = keeperOf()
          const kept = pending.concat(keptCopies(h, keeper, fresh))
          h.backend.pendingCommit?.(kept.length)
          keeper.pending = kept
          keeper.touchedAt = now
          if (session === undefined) {
            session = keeper
            h.session = session
            sessionsOpen.unsafeOpen()
          }
          return yield* answer(end - 1)
        }

        const toCommit = combined.slice(0, committed)
        // (the session's frames are copies already; only the request's own are copied)
        const restFresh = committed < pending.length ? fresh : combined.slice(committed)
        const rest = (committed < pending.length ? pending.slice(committed) : []).concat(
          restFresh.length === 0 ? [] : keptCopies(h, keeperOf(), restFresh)
        )
        const malformed = (message: string) => {
          // The refused transaction includes the session's pending frames: the session is over.
          if (session !== undefined) h.session = undefined
          return fail("Malformed", `the pushed transaction would leave a malformed database: ${message}`)
        }
        const headerProblem = options.integrityCheck === "off" ? undefined : checkHeaderFrames(toCommit)
        if (headerProblem !== undefined) return yield* malformed(headerProblem)
        const sizeProblem = checkCommitSizes(toCommit, yield* headPagesOf(h, generation, head))
        if (sizeProblem !== undefined) return yield* malformed(sizeProblem)
        const result = yield* h.backend.commit(generation, head + 1, toCommit)
        if (Either.isLeft(result)) return yield* malformed(result.left)
        h.lastFrames.set(generation, head + committed)
        h.moved = true
        h.headPages = toCommit[committed - 1].commitSize
        for (const n of h.acked) if (n < head + committed) h.acked.delete(n)
        if (rest.length > 0) {
          const keeper = keeperOf()
          keeper.pending = rest
          keeper.touchedAt = now
          session = keeper
          h.session = session
          sessionsOpen.unsafeOpen()
        } else {
          if (session !== undefined) {
            h.closedBaton = session.baton
            // Its whole transaction is stored (the store keeps copies): nothing reads its frames any more.
            FramePool.release(framePool, session)
          }
          session = undefined
          h.session = undefined
        }
        const result2 = yield* answer(end - 1)
        // The frames are durable whatever happens to the roll; a failed roll is retried after the next commit.
        yield* maybeRoll(h).pipe(
          Effect.zipRight(dropOld(h)),
          Effect.catchAll((error) => Effect.logWarning(`ServerStore: roll of ${h.name} failed`, error))
        )
        return result2
      })

    /**
     * A push that names its database (`EXTENSION_PUSH_IDENTITY`) builds on a frame it names by sending it
     * again: answered a conflict at this head, before anything else is looked at, when it names another
     * database (its frames build on that one's history) or when its first request starts after the head
     * (the frame it builds on is not here: this database lost it, or never had it).
     */
    const identityConflict = (
      h: Handle,
      generation: number,
      start: number,
      baton: string | undefined,
      databaseId: string | undefined
    ): PushResult | undefined => {
      if (databaseId === undefined) return undefined
      const head = h.lastFrames.get(generation) ?? h.lastFrames.get(h.current)!
      return databaseId !== h.backend.id || (baton === undefined && start > head)
        ? { _tag: "Conflict", generation, maxFrameNo: head }
        : undefined
    }

    const push: Service["push"] = (database, generation, start, end, frames, baton, pushOptions) =>
      Effect.gen(function*() {
        if (!Number.isSafeInteger(generation)) return yield* fail("BadRequest", `generation ${generation} is not an integer`)
        yield* checkRange(start, end)
        if (end - start > MAX_FRAMES_PER_REQUEST || frames.length > MAX_FRAMES_PER_REQUEST) {
          return yield* fail("TooLarge", `at most ${MAX_FRAMES_PER_REQUEST} frames per request`)
        }
        if (frames.length !== end - start) {
          return yield* fail("BadRequest", `${frames.length} frames do not fill ${start}..${end - 1}`)
        }
        const valid = WalFrame.validateTransactions(frames)
        if (Either.isLeft(valid)) return yield* fail("BadFrames", valid.left.message)
        return yield* withHandle(database, (h) => {
          if (h.backend.readOnly) {
            return fail("ReadOnly", `the store is read-only: database ${h.name} can be read but not written`)
          }
          const shared = h.backend.shared
          const checked = () => {
            const refused = identityConflict(h, generation, start, baton, pushOptions?.databaseId)
            return refused === undefined ? pushLocked(h, generation, start, end, frames, baton) : Effect.succeed(refused)
          }
          const locked = shared === undefined
            ? Effect.suspend(checked)
            : shared.exclusive(
              (state) =>
                Effect.suspend(() => {
                  loadState(h, state)
                  return checked()
                }),
              () => ({ session: h.session, closedBaton: h.closedBaton })
            ).pipe(
              // The session lives in storage: a copy left here would count against this process's
              // pending-frames bound and keep the database from being closed when idle.
              Effect.ensuring(Effect.sync(() => {
                h.session = undefined
              }))
            )
          return h.lock.withPermits(1)(Effect.uninterruptible(Effect.ensuring(locked, wakeWaiters(h))))
        })
      })

    // After the push's storage transaction ended: a shared backend's own listener reports the commit
    // (with the head as committed, and only if it committed), so only the store's own head is told here.
    const wakeWaiters = (h: Handle) =>
      Effect.sync(() => {
        if (!h.moved) return
        h.moved = false
        if (h.backend.shared === undefined) {
          notifier.notify(h.name, { generation: h.current, maxFrameNo: h.lastFrames.get(h.current)! })
        }
      })

    const awaitChange: Service["awaitChange"] = (database, generation, frameNo, timeout) =>
      Effect.gen(function*() {
        const deadline = (yield* Clock.currentTimeMillis) + Math.max(0, Duration.toMillis(Duration.decode(timeout)))
        for (;;) {
          // Registered before the head is read: a commit between the read and the wait still wakes it.
          const woken = yield* Effect.acquireUseRelease(
            Effect.sync(() => notifier.add(database, generation, frameNo)),
            (waiter) =>
              Effect.gen(function*() {
                const head = yield* info(database)
                if (CommitNotify.moved(head, generation, frameNo)) return head
                const left = deadline - (yield* Clock.currentTimeMillis)
                if (left <= 0) return head
                const reported = yield* CommitNotify.awaitWake(waiter, left)
                if (reported._tag === "None") return head
                // A head past the one seen is an answer; an unknown one is read again.
                return reported.value !== undefined && CommitNotify.ahead(reported.value, generation, frameNo)
                  ? reported.value
                  : undefined
              }),
            (waiter) => Effect.sync(() => notifier.remove(waiter))
          )
          if (woken !== undefined) return woken
        }
      })

    const stats: Service["stats"] = backend.stats ?? Effect.map(Clock.currentTimeMillis, (now) => {
      let openBatons = 0
      for (const h of opened.values()) {
        if (h.session !== undefined && now - h.session.touchedAt <= batonIdleMs) openBatons++
      }
      return { databases: known.size, openBatons }
    })

    if (backend.watchCommits !== undefined) yield* backend.watchCommits(notifier, info)

    return {
      info, databaseId, exportGeneration, openExport, snapshot, maxPullFrames, pull, push, stats, awaitChange
    } satisfies Service
  })
