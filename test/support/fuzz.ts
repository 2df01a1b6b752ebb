/**
 * Runs one fuzz history (test/support/fuzzModel.ts) against real SyncDatabase replicas of one remote and
 * checks them against the model after every step:
 * - every server commit: the client whose `_sync_progress` row it advanced (exactly one), and the server's
 *   data at that commit = the model's state after replaying that client's pushed changes;
 * - after every step, each replica it touched holds exactly its model state (a pull: the server state at
 *   the frame the replica says it synced, plus its pending changes replayed);
 * - at the end (two sync rounds): every replica, the server and the model hold the same rows, columns and
 *   indexes, the same schema text, nothing is pending, every file passes integrity_check; so does a fresh
 *   replica bootstrapped from the server at the end.
 */
import BetterSqlite3 from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as NodePath from "node:path"
import type * as SyncDatabase from "../../src/SyncDatabase.js"
import type * as SyncRemote from "../../src/SyncRemote.js"
import * as WalFrame from "../../src/WalFrame.js"
import { openClient } from "./engine.js"
import * as Model from "./fuzzModel.js"

type Rows = ReadonlyArray<Record<string, unknown>>

export interface Snapshot {
  readonly data: Record<string, Array<string>>
  readonly indexes: Array<string>
  readonly schema: Array<string>
}

/**
 * A column's value as an exact literal, in SQL (the libSQL reader answers through the same text): TEXT by
 * its bytes, since `quote()` cuts TEXT at a NUL and reading TEXT that is not valid UTF-8 as a string is
 * lossy (or, in the libSQL client, fatal); -0.0 told from 0.0 by the sign `atan2` sees, since `quote()`
 * writes both as 0.0. Model.exact writes the model's literals the same way.
 */
const exactColumn = (c: string) =>
  `CASE typeof(${c}) WHEN 'text' THEN 'CAST(X''' || hex(${c}) || ''' AS TEXT)' ` +
  `WHEN 'real' THEN CASE WHEN ${c} = 0 AND atan2(${c}, -1) < 0 THEN '-0.0' ELSE quote(${c}) END ELSE quote(${c}) END`

/** Reads what fuzzModel.dump produces (plus index names and schema text) through any query function. */
export const snapshot = <E>(all: (sql: string) => Effect.Effect<Rows, E>): Effect.Effect<Snapshot, E> =>
  Effect.gen(function*() {
    const tables = yield* all(
      "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 6) <> '_sync_' AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name"
    )
    const data: Record<string, Array<string>> = {}
    for (const { name } of tables) {
      const columns = (yield* all(`SELECT name FROM pragma_table_info('${name}') ORDER BY cid`)).map((r) => r.name as string)
      const rows = yield* all(`SELECT ${columns.map(exactColumn).join(" || ' | ' || ")} AS line FROM ${name}`)
      data[`${name}(${columns.join(",")})`] = rows.map((r) => r.line as string).sort()
    }
    const indexes = (yield* all("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"))
      .map((r) => r.name as string)
    const schema = (yield* all(
      "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS s FROM sqlite_master WHERE substr(name, 1, 6) <> '_sync_' AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name"
    )).map((r) => r.s as string)
    return { data, indexes, schema }
  })

const modelSnapshot = (state: Model.State) => ({ data: Model.dump(state), indexes: [...state.indexes].sort() })

const sqliteAll = (db: BetterSqlite3.Database) => (sql: string) => Effect.sync(() => db.prepare(sql).all() as Rows)

/** A database image (base + frames) opened read-only in memory. */
const openImage = (image: Uint8Array) => {
  const file = Buffer.from(image)
  file[18] = 1
  file[19] = 1
  return new BetterSqlite3(file)
}

export class FuzzFailure extends Error {}

const check = (what: string, actual: unknown, expected: unknown) => {
  const a = JSON.stringify(actual)
  const e = JSON.stringify(expected)
  if (a !== e) throw new FuzzFailure(`${what}\n  actual:   ${a.slice(0, 3000)}\n  expected: ${e.slice(0, 3000)}`)
}

export interface Environment {
  readonly clients: number
  readonly dir: string
  /** The remote the checks read the server through. */
  readonly remote: SyncRemote.Service
  /** The remote replica `i` syncs through (the same or another connection to the same database). */
  readonly replicaRemote: (i: number) => Effect.Effect<SyncRemote.Service>
  /** A pull-only reader (the real libSQL client), synced on `reader` ops and at the end. */
  readonly reader?: { readonly sync: () => void; readonly all: (sql: string) => Rows } | undefined
  readonly log?: ((line: string) => void) | undefined
  /** Options of every replica (small WAL bounds, a bootstrap mode). */
  readonly clientOptions?: Partial<SyncDatabase.Options> | undefined
}

export interface Outcome {
  readonly commits: number
  readonly steps: number
  /** Changes replayed onto the server, and groups in which two or more pushes were committed. */
  readonly changes: number
  readonly races: number
  /** The server's materialized database (the current generation's base + every frame), for byte comparisons. */
  readonly image: Uint8Array
  readonly base: Uint8Array
  readonly frames: ReadonlyArray<WalFrame.Frame>
}

interface Replica {
  readonly db: SyncDatabase.Service
  readonly clientId: string
  local: Model.State
  pending: Array<Model.Change>
  /** Pushed snapshots not yet matched with a server commit. */
  readonly accepted: Array<Array<Model.Change>>
}

export const run = (ops: ReadonlyArray<Model.Op>, env: Environment) =>
  Effect.gen(function*() {
    const log = env.log ?? (() => {})
    const replicas: Array<Replica> = []
    // Server history: every frame, the image at the last commit, and the model state after each commit.
    // Of the current generation (a roll starts the next from the image at the last commit).
    let generation = 1
    let frames: Array<WalFrame.Frame> = []
    let base: Uint8Array | undefined
    let image: Uint8Array | undefined
    let progress = new Map<string, number>()
    const commits: Array<{ readonly generation: number; readonly frame: number; readonly state: Model.State }> = [
      { generation: 1, frame: 0, state: Model.empty() }
    ]
    const head = () => commits[commits.length - 1]!.state
    let changes = 0
    let races = 0

    const absorb = Effect.gen(function*() {
      if (base === undefined) {
        base = yield* env.remote.export(1)
        image = base
      }
      for (;;) {
        const result = yield* env.remote.pull(generation, frames.length + 1, frames.length + 129)
        if (result._tag === "Frames") {
          if (result.frames.length === 0) break
          frames.push(...result.frames.map((f) => ({ ...f, page: Uint8Array.from(f.page) })))
          continue
        }
        if (result.generation <= generation) break
        // The server rolled: the next generation's base is this one's image at its last commit.
        absorbCommits()
        generation += 1
        base = image
        frames = []
        commits.push({ generation, frame: 0, state: head() })
        log(`server rolled to generation ${generation}`)
      }
      absorbCommits()
    })

    const absorbCommits = () => {
      let applied = commits[commits.length - 1]!.frame
      for (let i = applied; i < frames.length; i++) {
        if (frames[i]!.commitSize === 0) continue
        image = WalFrame.applyFrames(image!, frames.slice(applied, i + 1))
        applied = i + 1
        const db = openImage(image)
        try {
          const rows = db.prepare("SELECT client_id, change_id FROM _sync_progress").all() as Array<{ client_id: string; change_id: number }>
          const next = new Map(rows.map((r) => [r.client_id, r.change_id]))
          const advanced = [...next].filter(([id, n]) => (progress.get(id) ?? 0) !== n).map(([id]) => id)
          progress = next
          if (advanced.length !== 1) throw new FuzzFailure(`commit ending at frame ${i + 1} advanced ${advanced.length} progress rows`)
          const replica = replicas.find((r) => r.clientId === advanced[0])
          const pushed = replica?.accepted.shift()
          if (pushed === undefined) throw new FuzzFailure(`commit ending at frame ${i + 1} by ${advanced[0]}: no push of it was expected`)
          const state = Model.clone(head())
          for (const change of pushed) Model.replay(state, change)
          changes += pushed.length
          commits.push({ generation, frame: i + 1, state })
          log(`commit @${i + 1} by r${replicas.indexOf(replica!)} (${pushed.length} changes)`)
          check(`server at commit frame ${i + 1}`, Effect.runSync(snapshot(sqliteAll(db))).data, Model.dump(state))
        } finally {
          db.close()
        }
      }
    }

    const checkLocal = (r: Replica, what: string) =>
      Effect.gen(function*() {
        const actual = yield* snapshot((sql) => r.db.query(sql))
        check(`replica r${replicas.indexOf(r)} ${what}`, { data: actual.data, indexes: actual.indexes }, modelSnapshot(r.local))
      })

    const startPush = (r: Replica) => {
      if (r.pending.length > 0) r.accepted.push(r.pending)
      r.pending = []
    }

    const afterPull = (r: Replica) =>
      Effect.gen(function*() {
        const stats = yield* r.db.stats
        const at = commits.find((c) => c.generation === stats.generation && c.frame === stats.syncedFrame)
        if (at === undefined) {
          throw new FuzzFailure(`replica synced to generation ${stats.generation} frame ${stats.syncedFrame}, not a commit frame`)
        }
        const local = Model.clone(at.state)
        for (const change of r.pending) Model.replay(local, change)
        r.local = local
      })

    const syncOp = (r: Replica, kind: Model.SyncKind) =>
      Effect.gen(function*() {
        if (kind !== "pull") startPush(r)
        yield* r.db[kind]
      })

    const step = (op: Model.Op) =>
      Effect.gen(function*() {
        switch (op._tag) {
          case "write": {
            const r = replicas[op.client]!
            const resolved = op.writes.map((w) => Model.resolveWrite(r.local, w)).filter((x) => x !== undefined)
            if (resolved.length === 0) return
            const sql = resolved.map((x) => x.sql).join("; ")
            log(`r${op.client}: ${sql.length > 300 ? `${sql.slice(0, 300)}…` : sql}`)
            yield* r.db.execute(sql)
            r.pending.push(...resolved.flatMap((x) => x.changes))
            return yield* checkLocal(r, `after ${sql.slice(0, 200)}`)
          }
          case "ddl": {
            const r = replicas[op.client]!
            if (!Model.ddlApplicable(r.local, op.ddl)) return
            const sql = Model.ddlSql(op.ddl)
            log(`r${op.client}: ${sql}`)
            yield* r.db.execute(sql)
            const change: Model.Change = { kind: "ddl", ddl: op.ddl }
            Model.replay(r.local, change)
            r.pending.push(change)
            return yield* checkLocal(r, `after ${sql}`)
          }
          case "sync": {
            const r = replicas[op.client]!
            log(`r${op.client}: ${op.kind}`)
            yield* syncOp(r, op.kind)
            yield* absorb
            if (op.kind !== "push") yield* afterPull(r)
            return yield* checkLocal(r, `after ${op.kind}`)
          }
          case "group": {
            log(`concurrently: ${op.members.map(([c, k]) => `r${c} ${k}`).join(", ")}`)
            const before = commits.length
            yield* Effect.forEach(op.members, ([c, kind]) => syncOp(replicas[c]!, kind), { concurrency: "unbounded", discard: true })
            yield* absorb
            if (commits.length - before >= 2) races++
            for (const [c, kind] of op.members) {
              const r = replicas[c]!
              if (r.accepted.length > 0) throw new FuzzFailure(`r${c}'s push was not found among the server's commits`)
              if (kind !== "push") yield* afterPull(r)
              yield* checkLocal(r, `after concurrent ${kind}`)
            }
            return
          }
          case "reader": {
            if (env.reader === undefined) return
            log("reader: sync")
            env.reader.sync()
            check("libsql reader after sync", Effect.runSync(snapshot((sql) => Effect.sync(() => env.reader!.all(sql)))).data, Model.dump(head()))
            return
          }
        }
      })

    // Replica 0 creates t0 and t1 and pushes; the others open on the result. The model is row-level last
    // push wins (inserts on a small key space collide on purpose, and overwrite).
    for (let i = 0; i < env.clients; i++) {
      const remote = yield* env.replicaRemote(i)
      const db = yield* openClient(remote, NodePath.join(env.dir, `r${i}`), {
        maxPushRounds: 200,
        clientName: `r${i}`,
        conflicts: "lastPushWinsRow",
        ...env.clientOptions
      })
      const replica: Replica = { db, clientId: (yield* db.stats).clientId, local: Model.empty(), pending: [], accepted: [] }
      replicas.push(replica)
      if (i === 0) {
        for (const table of ["t0", "t1"]) {
          yield* db.execute(Model.TABLES[table]!.create)
          const change: Model.Change = { kind: "ddl", ddl: { _tag: "createTable", table } }
          Model.replay(replica.local, change)
          replica.pending.push(change)
        }
        yield* syncOp(replica, "push")
        yield* absorb
      } else {
        yield* step({ _tag: "sync", client: i, kind: "pull" })
      }
    }
    for (const op of ops) yield* step(op)
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < env.clients; i++) yield* step({ _tag: "sync", client: i, kind: "sync" })
    }

    // Everyone holds the same, and what the model says.
    const final = head()
    const serverDb = openImage(image!)
    const server = yield* snapshot(sqliteAll(serverDb)).pipe(Effect.ensuring(Effect.sync(() => serverDb.close())))
    check("server at the end", { data: server.data, indexes: server.indexes }, modelSnapshot(final))
    for (const [i, r] of replicas.entries()) {
      const local = yield* snapshot((sql) => r.db.query(sql))
      check(`replica r${i} at the end`, local, server)
      check(`replica r${i} pending`, (yield* r.db.stats).pendingChanges, 0)
      check(`replica r${i} integrity`, yield* r.db.query("PRAGMA integrity_check"), [{ integrity_check: "ok" }])
    }
    // A replica that never wrote, bootstrapped from the server now, holds the same.
    const fresh = yield* openClient(yield* env.replicaRemote(env.clients), NodePath.join(env.dir, "fresh"), {
      clientName: "fresh",
      ...env.clientOptions
    })
    yield* fresh.pull
    check("a fresh replica", yield* snapshot((sql) => fresh.query(sql)), server)
    if (env.reader !== undefined) {
      env.reader.sync()
      check("libsql reader at the end", Effect.runSync(snapshot((sql) => Effect.sync(() => env.reader!.all(sql)))), server)
    }
    return { commits: commits.length - 1, steps: ops.length, changes, races, image: image!, base: base!, frames } satisfies Outcome
  })
