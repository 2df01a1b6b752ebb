/**
 * SyncDatabase.layerSqlClient: an existing-style repository (SqlSchema + SqlResolver over `SqlClient`) runs
 * on a synced database against the real HTTP server on loopback; its writes are captured, pushed and pulled
 * by another replica; transactions are units of replay; reads and writes keep working around a pull.
 */
import { expect, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqlResolver from "@effect/sql/SqlResolver"
import * as SqlSchema from "@effect/sql/SqlSchema"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { Harness, freshName, layerHttp, openClient, openSqlReplica, remoteQuery, tempDir } from "./support/engine.js"

class Person extends Schema.Class<Person>("Person")({
  id: Schema.Number,
  name: Schema.String,
  age: Schema.Number
}) {}

/** A repository as an app would write it, knowing nothing of sync. */
const makeRepository = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const createTable = sql`CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER NOT NULL)`
  const findAll = SqlSchema.findAll({
    Request: Schema.Void,
    Result: Person,
    execute: () => sql`SELECT * FROM people ORDER BY id`
  })
  const insert = SqlSchema.single({
    Request: Schema.Struct({ name: Schema.String, age: Schema.Number }),
    Result: Person,
    execute: (person) => sql`INSERT INTO people ${sql.insert(person)} RETURNING *`
  })
  const setAge = SqlSchema.void({
    Request: Schema.Struct({ id: Schema.Number, age: Schema.Number }),
    execute: ({ age, id }) => sql`UPDATE people SET ${sql.update({ age })} WHERE id = ${id}`
  })
  const remove = SqlSchema.void({
    Request: Schema.Number,
    execute: (id) => sql`DELETE FROM people WHERE id = ${id}`
  })
  const byId = yield* SqlResolver.findById("PersonById", {
    Id: Schema.Number,
    Result: Person,
    ResultId: (person) => person.id,
    execute: (ids) => sql`SELECT * FROM people WHERE ${sql.in("id", ids)}`
  })
  const findById = (id: number) => byId.execute(id)
  return { sql, createTable, findAll, insert, setAge, remove, findById }
})

const rowsOf = (people: ReadonlyArray<Person>) => people.map(({ age, id, name }) => ({ id, name, age }))

layer(layerHttp, { timeout: 30_000 })("SqlClient over a real server", (it) => {
  it.scoped("a repository's writes, in transactions and outside, reach another replica exactly", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("repo"))
      const dir = yield* tempDir
      const context = yield* openSqlReplica(remote, NodePath.join(dir, "a"))
      const db = Context.get(context, SyncDatabase.SyncDatabase)
      const repo = yield* Effect.provide(makeRepository, context)

      const program = Effect.gen(function*() {
        yield* repo.createTable
        const ada = yield* repo.insert({ name: "ada", age: 36 })
        const [bob, cy] = yield* repo.sql.withTransaction(Effect.gen(function*() {
          const bob = yield* repo.insert({ name: "bob", age: 20 })
          const cy = yield* repo.insert({ name: "cy", age: 30 })
          yield* repo.setAge({ id: bob.id, age: 21 })
          // A read inside the transaction sees its own writes.
          expect(Option.map(yield* repo.findById(bob.id), (p) => p.age)).toEqual(Option.some(21))
          return [bob, cy] as const
        }))
        yield* repo.remove(cy.id)
        yield* repo.setAge({ id: ada.id, age: 37 })
        const found = yield* Effect.forEach([ada.id, bob.id, cy.id], repo.findById, { batching: true })
        expect(found.map(Option.map((p) => p.name))).toEqual([Option.some("ada"), Option.some("bob"), Option.none()])
        return yield* repo.findAll()
      })
      const local = rowsOf(yield* Effect.provide(program, context))
      expect(local).toEqual([{ id: 1, name: "ada", age: 37 }, { id: 2, name: "bob", age: 21 }])
      // DDL + 1 insert + the transaction's 3 changes + delete + update, all captured.
      expect((yield* db.stats).pendingChanges).toBeGreaterThanOrEqual(7)

      expect(yield* db.push).toBe(true)
      expect((yield* db.stats).pendingChanges).toBe(0)
      expect(yield* remoteQuery(remote, "SELECT id, name, age FROM people ORDER BY id")).toEqual(local)

      // Replica B: a plain SyncDatabase sees exactly those rows ...
      const b = yield* openClient(remote, NodePath.join(dir, "b"))
      yield* b.pull
      expect(yield* b.query("SELECT id, name, age FROM people ORDER BY id")).toEqual(local)
      // ... and replica C, another layerSqlClient, through the same repository.
      const cContext = yield* openSqlReplica(remote, NodePath.join(dir, "c"))
      yield* Context.get(cContext, SyncDatabase.SyncDatabase).pull
      const cRepo = yield* Effect.provide(makeRepository, cContext)
      expect(rowsOf(yield* Effect.provide(cRepo.findAll(), cContext))).toEqual(local)

      // C writes through the repository, pushes; A pulls it back.
      yield* Effect.provide(cRepo.sql.withTransaction(cRepo.insert({ name: "dee", age: 50 })), cContext)
      yield* Context.get(cContext, SyncDatabase.SyncDatabase).push
      yield* db.pull
      expect(rowsOf(yield* Effect.provide(repo.findAll(), context)).map((p) => p.name)).toEqual(["ada", "bob", "dee"])
    }))

  it.scoped("a rolled-back transaction leaves no row and nothing captured; a rolled-back savepoint only its part", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("rollback"))
      const dir = yield* tempDir
      const context = yield* openSqlReplica(remote, NodePath.join(dir, "a"))
      const db = Context.get(context, SyncDatabase.SyncDatabase)
      const repo = yield* Effect.provide(makeRepository, context)
      yield* Effect.provide(repo.createTable, context)
      yield* db.push
      const before = (yield* db.stats).pendingChanges
      expect(before).toBe(0)

      const failed = yield* Effect.provide(
        repo.sql.withTransaction(Effect.zipRight(repo.insert({ name: "ghost", age: 1 }), Effect.fail("boom" as const))),
        context
      ).pipe(Effect.flip)
      expect(failed).toBe("boom")
      expect((yield* db.stats).pendingChanges).toBe(0)
      expect(yield* Effect.provide(repo.findAll(), context)).toEqual([])

      yield* Effect.provide(
        repo.sql.withTransaction(Effect.gen(function*() {
          yield* repo.insert({ name: "kept", age: 2 })
          yield* repo.sql.withTransaction(
            Effect.zipRight(repo.insert({ name: "dropped", age: 3 }), Effect.fail("inner" as const))
          ).pipe(Effect.catchAll(() => Effect.void))
        })),
        context
      )
      expect(rowsOf(yield* Effect.provide(repo.findAll(), context)).map((p) => p.name)).toEqual(["kept"])
      expect((yield* db.stats).pendingChanges).toBe(1)
      // A write outside a transaction is reported like `execute` (events, status, autoSync).
      const events = yield* db.subscribe
      yield* Effect.provide(repo.setAge({ id: 1, age: 9 }), context)
      expect(yield* Queue.take(events)).toMatchObject({ _tag: "LocalWrite", changes: 1 })
      yield* db.push
      const b = yield* openClient(remote, NodePath.join(dir, "b"))
      yield* b.pull
      expect(yield* b.query("SELECT name, age FROM people")).toEqual([{ name: "kept", age: 9 }])
    }))

  it.scoped("a write waits for an open transaction; during a pull's copy step reads work and a write waits, then lands", () =>
    Effect.gen(function*() {
      const harness = yield* Harness
      const remote = yield* harness.remote(freshName("copy"))
      const dir = yield* tempDir
      const other = yield* openClient(remote, NodePath.join(dir, "other"))
      yield* other.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER NOT NULL)")
      yield* other.execute("INSERT INTO people VALUES (100, 'remote', 1)")
      yield* other.push

      const armed = yield* Ref.make(false)
      const self = yield* Deferred.make<Context.Context<SqlClient.SqlClient | SyncDatabase.SyncDatabase>>()
      const pendingWrite = yield* Deferred.make<Fiber.RuntimeFiber<Person, unknown>>()
      const observed: Array<string> = []
      const onStep = (step: string) =>
        Effect.gen(function*() {
          if (!(yield* Ref.get(armed))) return
          const context = yield* Deferred.await(self)
          const repo = yield* Effect.provide(makeRepository, context)
          if (step === "copy:writesHeld") {
            // Writes are held for the swap: this one waits for it, then lands.
            yield* Deferred.succeed(
              pendingWrite,
              yield* Effect.fork(Effect.provide(repo.insert({ name: "during", age: 4 }), context))
            )
          }
          if (step === "copy:draftClosed") {
            // Draft is closed: the read is served by Synced, with the merged rows.
            const names = rowsOf(yield* Effect.provide(repo.findAll(), context)).map((p) => p.name)
            observed.push(names.join(","))
            const write = yield* Deferred.await(pendingWrite)
            observed.push(`write done: ${Option.isSome(yield* Fiber.poll(write))}`)
          }
        }).pipe(Effect.orDie)
      const context = yield* openSqlReplica(remote, NodePath.join(dir, "self"), { onStep })
      yield* Deferred.succeed(self, context)
      const db = Context.get(context, SyncDatabase.SyncDatabase)
      const repo = yield* Effect.provide(makeRepository, context)
      yield* db.pull

      // An open transaction holds writes made outside it back until it commits.
      const outside = yield* Effect.provide(
        repo.sql.withTransaction(Effect.gen(function*() {
          yield* repo.insert({ name: "local", age: 2 })
          const fiber = yield* Effect.fork(db.execute("INSERT INTO people (name, age) VALUES ('outside', 3)"))
          // Real time (the test runs under TestClock): long enough for the write to have run if it could.
          yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 50)))
          expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
          return fiber
        })),
        context
      )
      expect((yield* Fiber.join(outside)).changes).toBe(1)

      yield* other.execute("INSERT INTO people VALUES (200, 'remote-2', 5)")
      yield* other.push
      yield* Ref.set(armed, true)
      // A read issued while the pull runs works.
      const reader = yield* Effect.fork(Effect.provide(repo.findAll(), context))
      expect(yield* db.pull).toBe(true)
      expect((yield* Fiber.join(reader)).length).toBeGreaterThanOrEqual(3)
      expect(observed).toEqual(["remote,local,outside,remote-2", "write done: false"])
      const during = yield* Fiber.join(yield* Deferred.await(pendingWrite))
      expect(during.name).toBe("during")
      expect(rowsOf(yield* Effect.provide(repo.findAll(), context)).map((p) => p.name)).toEqual(
        ["remote", "local", "outside", "remote-2", "during"]
      )
      // Statements prepared before the copy keep working on the reopened Draft, and everything syncs.
      yield* Effect.provide(repo.setAge({ id: during.id, age: 44 }), context)
      yield* db.sync
      expect(yield* remoteQuery(remote, "SELECT name, age FROM people ORDER BY id")).toEqual([
        { name: "remote", age: 1 },
        { name: "local", age: 2 },
        { name: "outside", age: 3 },
        { name: "remote-2", age: 5 },
        { name: "during", age: 44 }
      ])
    }))
})
