/**
 * The default commit check, `changed_tables`: which tables a commit's pages belong to (a property over
 * real SQLite transactions), and a commit whose index no longer matches its table, refused by a real
 * server that `quick_check` alone would let through.
 */
import { describe, expect, it } from "@effect/vitest"
import Database from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import fc from "fast-check"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as ChangedTables from "../src/internal/server/changedTables.js"
import * as ServerStore from "../src/ServerStore.js"
import * as SyncServer from "../src/SyncServer.js"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"

const TOKEN = "changed-tables"
const TABLES = ["a", "b", "c", "d", "e", "f"] as const

/** A database file with six tables, each with an index, checkpointed; a connection that keeps its WAL. */
const makeDatabase = () => {
  const dir = H.tempDir("changed")
  const file = Path.join(dir, "db")
  const db = new Database(file)
  db.pragma("journal_mode = WAL")
  db.pragma("wal_autocheckpoint = 0")
  for (const t of TABLES) {
    db.exec(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL); CREATE INDEX ${t}_k ON ${t} (k)`)
    const insert = db.prepare(`INSERT INTO ${t} (k, v) VALUES (hex(randomblob(6)), randomblob(?))`)
    db.transaction(() => {
      for (let i = 0; i < 400; i++) insert.run(200 + (i % 7) * 50)
    })()
  }
  db.pragma("wal_checkpoint(TRUNCATE)")
  return { dir, file, db }
}

const walFrames = (file: string): ReadonlyArray<WalFrame.Frame> => {
  const bytes = Fs.existsSync(`${file}-wal`) ? new Uint8Array(Fs.readFileSync(`${file}-wal`)) : new Uint8Array(0)
  const parsed = WalFrame.parse(bytes)
  return parsed._tag === "Some" ? parsed.value.frames.map((f) => ({ ...f, page: Uint8Array.from(f.page) })) : []
}

const contents = (db: Database.Database, table: string) =>
  JSON.stringify(db.prepare(`SELECT id, k, hex(v) AS v FROM ${table} ORDER BY id`).all())

type Op =
  | { readonly kind: "insert"; readonly table: number; readonly count: number; readonly size: number }
  | { readonly kind: "update"; readonly table: number; readonly id: number; readonly size: number }
  | { readonly kind: "delete"; readonly table: number; readonly from: number; readonly count: number }

const arbOp: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("insert" as const),
    table: fc.integer({ min: 0, max: 5 }),
    count: fc.integer({ min: 1, max: 40 }),
    size: fc.oneof(fc.integer({ min: 1, max: 500 }), fc.integer({ min: 3000, max: 9000 }))
  }),
  fc.record({
    kind: fc.constant("update" as const),
    table: fc.integer({ min: 0, max: 5 }),
    id: fc.integer({ min: 1, max: 450 }),
    size: fc.oneof(fc.integer({ min: 1, max: 500 }), fc.integer({ min: 3000, max: 9000 }))
  }),
  fc.record({
    kind: fc.constant("delete" as const),
    table: fc.integer({ min: 0, max: 5 }),
    from: fc.integer({ min: 1, max: 450 }),
    count: fc.integer({ min: 1, max: 120 })
  })
)

const run = (db: Database.Database, op: Op) => {
  const t = TABLES[op.table]
  if (op.kind === "insert") {
    const insert = db.prepare(`INSERT INTO ${t} (k, v) VALUES (hex(randomblob(6)), randomblob(?))`)
    for (let i = 0; i < op.count; i++) insert.run(op.size)
  } else if (op.kind === "update") {
    db.prepare(`UPDATE ${t} SET k = hex(randomblob(6)), v = randomblob(?) WHERE id = ?`).run(op.size, op.id)
  } else {
    db.prepare(`DELETE FROM ${t} WHERE id >= ? AND id < ?`).run(op.from, op.from + op.count)
  }
}

describe("changedTables.place", () => {
  it("every table a transaction changes is placed, or the whole check is asked for", () => {
    const { db, dir, file } = makeDatabase()
    let narrowed = 0
    try {
      fc.assert(
        fc.property(fc.array(arbOp, { minLength: 1, maxLength: 3 }), (ops) => {
          const headImage = new Uint8Array(Fs.readFileSync(file))
          const schema = db.prepare<[], ChangedTables.SchemaEntry>(ChangedTables.SCHEMA_QUERY).all()
          const before = TABLES.map((t) => contents(db, t))
          db.transaction(() => ops.forEach((op) => run(db, op)))()
          const after = TABLES.map((t) => contents(db, t))
          const frames = walFrames(file)
          const changed = TABLES.filter((_, i) => before[i] !== after[i])
          const placement = ChangedTables.place(frames, schema, (pgno) =>
            pgno * WalFrame.PAGE_SIZE <= headImage.byteLength
              ? headImage.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
              : undefined)
          db.pragma("wal_checkpoint(TRUNCATE)")
          if (placement._tag === "Full") return
          narrowed++
          for (const t of changed) expect(placement.tables).toContain(t)
          // The plan always starts with the whole-file structural check.
          expect(ChangedTables.planOf(placement)[0]).toBe("quick_check")
        }),
        { numRuns: 30 }
      )
      // Most transactions are placed, not sent to the full check.
      expect(narrowed).toBeGreaterThan(10)
    } finally {
      db.close()
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("a schema change, or a page in no b-tree, asks for the full check", () => {
    const { db, dir, file } = makeDatabase()
    try {
      const headImage = new Uint8Array(Fs.readFileSync(file))
      const readHead = (pgno: number) => headImage.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
      const schema = db.prepare<[], ChangedTables.SchemaEntry>(ChangedTables.SCHEMA_QUERY).all()
      db.exec("CREATE INDEX a_v ON a (v)")
      expect(ChangedTables.place(walFrames(file), schema, readHead)).toMatchObject({ _tag: "Full", schemaChanged: true })
      db.pragma("wal_checkpoint(TRUNCATE)")
      const head2 = new Uint8Array(Fs.readFileSync(file))
      const schema2 = db.prepare<[], ChangedTables.SchemaEntry>(ChangedTables.SCHEMA_QUERY).all()
      db.exec("INSERT INTO b (k, v) VALUES ('x', randomblob(10))")
      const frames = walFrames(file)
      const read2 = (pgno: number) => head2.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
      expect(ChangedTables.place(frames, schema2, read2)).toEqual({ _tag: "Tables", tables: ["b"] })
      // The same frames with a page number no b-tree reaches.
      const size = frames.at(-1)!.commitSize
      const stray = [{ pgno: size + 1, commitSize: 0, page: new Uint8Array(WalFrame.PAGE_SIZE) }, ...frames.slice(0, -1), {
        ...frames.at(-1)!,
        commitSize: size + 1
      }]
      expect(ChangedTables.place(stray, schema2, read2)._tag).toBe("Full")
      // A table that holds most of the database gets the full check: cheaper than quick_check plus its own.
      db.pragma("wal_checkpoint(TRUNCATE)")
      db.exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) " +
          "INSERT INTO a (k, v) SELECT hex(randomblob(6)), randomblob(300) FROM n"
      )
      db.pragma("wal_checkpoint(TRUNCATE)")
      const head3 = new Uint8Array(Fs.readFileSync(file))
      const schema3 = db.prepare<[], ChangedTables.SchemaEntry>(ChangedTables.SCHEMA_QUERY).all()
      db.exec("INSERT INTO a (k, v) VALUES ('y', randomblob(10))")
      const read3 = (pgno: number) => head3.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
      expect(ChangedTables.place(walFrames(file), schema3, read3)).toEqual({
        _tag: "Full",
        why: "the changed tables hold half the database or more",
        schemaChanged: false
      })
      expect(ChangedTables.planOf({ _tag: "Tables", tables: ["b", "c"] })).toEqual([
        "quick_check",
        "integrity_check(\"b\")",
        "integrity_check(\"c\")"
      ])
    } finally {
      db.close()
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

/**
 * A commit that changes a row of `t` without its index entry: the index definition is swapped in
 * sqlite_schema around the update (on the pusher's own copy), so the final schema is the original one
 * and only the table's pages differ. `quick_check` finds nothing wrong with the result.
 */
const indexMismatch = (replica: H.Replica) => {
  const connect = () => {
    const c = new Database(replica.file)
    c.pragma("wal_autocheckpoint = 0")
    return c
  }
  const setIndex = (column: string) => {
    const c = connect()
    c.unsafeMode(true)
    c.pragma("writable_schema = ON")
    c.prepare("UPDATE sqlite_schema SET sql = ? WHERE name = 't_k'").run(`CREATE INDEX t_k ON t (${column})`)
    c.close()
  }
  setIndex("v")
  const c = connect()
  c.exec("UPDATE t SET k = 'changed' WHERE id = 5")
  c.close()
  setIndex("k")
  const check = connect()
  const verdicts = { quick: check.pragma("quick_check", { simple: true }), full: check.pragma("integrity_check", { simple: true }) }
  check.close()
  return verdicts
}

const serverWith = (integrityCheck: ServerStore.IntegrityCheck | undefined, kind: "disk" | "memory") =>
  Effect.gen(function*() {
    const dir = H.tempDir("mismatch")
    yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
    const options = integrityCheck === undefined ? {} : { integrityCheck }
    const context = yield* Layer.build(
      SyncServer.layerNode({ port: 0, authToken: Redacted.make(TOKEN) }).pipe(
        Layer.provide(kind === "disk" ? ServerStore.layer({ ...options, directory: dir }) : ServerStore.layerMemory(options))
      )
    )
    return yield* Effect.provide(SyncServer.baseUrl, context)
  })

describe("a commit whose index no longer matches its table", () => {
  for (const kind of ["disk", "memory"] as const) {
    it.scopedLive(`is refused by the default check (${kind} store), and only quick_check lets it through`, () =>
      Effect.gen(function*() {
        const strict = yield* serverWith(undefined, kind)
        const lax = yield* serverWith("quick_check", kind)
        yield* Effect.promise(async () => {
          const auth = H.auth(TOKEN)
          const replica = new H.Replica(await H.exportBase(strict, "shop", 1, TOKEN))
          try {
            const seed = replica.write(
              "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL); CREATE INDEX t_k ON t (k);" +
                "CREATE TABLE other (x); INSERT INTO other VALUES (1);" +
                // Other data, so that t is a minority of the database and its check is narrowed to it.
                "CREATE TABLE bulk (v TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) INSERT INTO bulk SELECT hex(randomblob(120)) FROM n;" +
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) INSERT INTO t (k, v) SELECT hex(randomblob(8)), hex(randomblob(100)) FROM n;"
            )
            const pushTo = (base: string, start: number, frames: ReadonlyArray<WalFrame.Frame>) =>
              H.request(base, {
                method: "POST",
                path: `/db/shop/sync/1/${start}/${start + frames.length}`,
                headers: auth,
                body: WalFrame.encodeWire(frames)
              })
            for (const base of [strict, lax]) expect((await pushTo(base, 1, seed)).status).toBe(200)
            // An ordinary commit passes the default check.
            const ordinary = replica.write("UPDATE t SET v = 'fine' WHERE id = 7; INSERT INTO other VALUES (2);")
            for (const base of [strict, lax]) expect((await pushTo(base, seed.length + 1, ordinary)).status).toBe(200)
            const head = seed.length + ordinary.length
            const verdicts = indexMismatch(replica)
            expect(verdicts.quick).toBe("ok")
            expect(verdicts.full).not.toBe("ok")
            const bad = replica.frames().slice(head)
            const snapshot = await H.snapshot(strict, "shop", TOKEN)
            const before = H.digestOf(snapshot)
            // The check is narrowed to table t (with its index), not the full integrity_check.
            const headDb = H.open(snapshot.file)
            const schema = headDb.prepare<[], ChangedTables.SchemaEntry>(ChangedTables.SCHEMA_QUERY).all()
            headDb.close()
            const readHead = (pgno: number) =>
              snapshot.file.subarray((pgno - 1) * WalFrame.PAGE_SIZE, pgno * WalFrame.PAGE_SIZE)
            expect(ChangedTables.place(bad, schema, readHead)).toEqual({ _tag: "Tables", tables: ["t"] })
            const refused = await pushTo(strict, head + 1, bad)
            expect(refused.status).toBe(400)
            expect(H.json(refused).error).toBe("malformed_database")
            expect(H.json(refused).message).toContain("t_k")
            expect(H.digestOf(await H.snapshot(strict, "shop", TOKEN))).toBe(before)
            // quick_check alone acknowledges it: the class of fault the default now catches.
            expect((await pushTo(lax, head + 1, bad)).status).toBe(200)
          } finally {
            replica.close()
          }
        })
      }))
  }
})
