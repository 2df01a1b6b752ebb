/**
 * A SyncDatabase (public HTTP layer) and the real libSQL offline client on the same server database see
 * each other's writes. The libSQL client blocks this thread during its HTTP calls, so the server runs in
 * its own process (the `effect-sqlite-sync serve` binary with its embedded SQLite store).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Layer from "effect/Layer"
import Database from "libsql"
import * as Fs from "node:fs"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import { tempDir } from "./support/engine.js"
import { libsqlBesideSyncDatabase } from "./support/interop.js"
import { serverProcess } from "./support/process.js"

const TOKEN = "engine-interop"

describe("SyncDatabase with the real libSQL client", () => {
  it.scoped("both write, push and pull on the same server database and see each other's rows", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data, "--auth-token", TOKEN])
      const url = `${server.url}/db/mixed`

      const libsql = new Database(NodePath.join(dir, "libsql.db"), { syncUrl: url, authToken: TOKEN, offline: true } as Database.Options)
      yield* Effect.addFinalizer(() => Effect.sync(() => libsql.close()))
      libsql.exec("CREATE TABLE t (id TEXT PRIMARY KEY, who TEXT)")
      libsql.exec("INSERT INTO t VALUES ('l-1', 'libsql')")
      libsql.sync()

      const db = yield* Layer.build(
        SyncDatabase.layer({ path: NodePath.join(dir, "ours"), url, authToken: TOKEN, clientName: "interop" }).pipe(
          Layer.provide(NodeHttpClient.layerUndici)
        )
      ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))
      yield* libsqlBesideSyncDatabase(libsql, db)
    }))

  it.scoped("layerConfig reads path, url, token and client name from Config; a wrong token is a typed RemoteError", () =>
    Effect.gen(function*() {
      const data = yield* tempDir
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", data, "--auth-token", TOKEN])
      const options = {
        path: Config.string("DB_PATH"),
        url: Config.string("SYNC_URL"),
        authToken: Config.option(Config.redacted("SYNC_TOKEN")).pipe(Config.map(Option.getOrUndefined)),
        clientName: Config.string("CLIENT_NAME")
      }
      const build = (token: string, file: string) =>
        Layer.build(SyncDatabase.layerConfig(options).pipe(Layer.provide(NodeHttpClient.layerUndici))).pipe(
          Effect.map(Context.get(SyncDatabase.SyncDatabase)),
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([
            ["DB_PATH", NodePath.join(dir, file)],
            ["SYNC_URL", `${server.url}/db/configured`],
            ["SYNC_TOKEN", token],
            ["CLIENT_NAME", "configured"]
          ])))
        )
      const db = yield* build(TOKEN, "good")
      yield* db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
      expect(yield* db.push).toBe(true)
      expect((yield* db.stats).clientId).toMatch(/^configured-/)
      const refused = yield* Effect.flip(build("wrong", "bad"))
      expect(refused).toMatchObject({ _tag: "BootstrapError", reason: "Remote" })
      expect((refused as { cause?: unknown }).cause).toMatchObject({ _tag: "RemoteError", reason: "Unauthorized" })
      expect(Fs.readdirSync(dir).filter((f) => f.startsWith("bad"))).toEqual([])
    }))
})
