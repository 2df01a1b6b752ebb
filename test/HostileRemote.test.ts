/**
 * A lying or broken remote: a proxy on loopback in front of a real `serve` process rewrites its answers
 * (garbage pages, random bytes, a base of 1024-byte pages). The client refuses each with a typed error,
 * records nothing of it as synced, writes no outsized file, and syncs normally once the answers are honest.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { describe, expect, it } from "@effect/vitest"
import BetterSqlite3 from "better-sqlite3"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as NodePath from "node:path"
import * as SyncDatabase from "../src/SyncDatabase.js"
import * as SyncError from "../src/SyncError.js"
import * as WalFrame from "../src/WalFrame.js"
import { tempDir } from "./support/engine.js"
import * as H from "./support/http.js"
import { serverProcess } from "./support/process.js"

type Mode = "honest" | "garbage pages" | "random bytes" | "small pages"

/** A proxy to `upstream` that lies as `mode()` says. */
const lyingProxy = (upstream: string, mode: () => Mode, dir: string) =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<Http.Server>((resolve) => {
        const server = Http.createServer((req, res) => {
          const chunks: Array<Buffer> = []
          req.on("data", (chunk: Buffer) => chunks.push(chunk))
          req.on("end", () => forward(req, res, Buffer.concat(chunks)))
        })
        const forward = (req: Http.IncomingMessage, res: Http.ServerResponse, requestBody: Buffer) =>
          void H.request(upstream, {
            method: req.method ?? "GET",
            path: req.url ?? "/",
            ...(requestBody.byteLength > 0 ? { body: requestBody } : {})
          }).then((answer) => {
            let body: Buffer = answer.body
            const m = mode()
            if (answer.status === 200 && /\/sync\/\d+\/\d+\/\d+$/.test(req.url ?? "") && req.method === "GET") {
              if (m === "garbage pages") {
                // Same page numbers and commit sizes, pages overwritten with random bytes.
                body = Buffer.from(body)
                for (let at = 0; at < body.byteLength; at += WalFrame.FRAME_SIZE) {
                  Crypto.randomFillSync(body, at + WalFrame.FRAME_HEADER_SIZE, WalFrame.PAGE_SIZE)
                }
              } else if (m === "random bytes") {
                body = Crypto.randomBytes(body.byteLength)
              }
            }
            // Both ways a new replica takes a whole file: the base of a generation and the snapshot at the head.
            if (answer.status === 200 && /\/(export\/\d+|snapshot)$/.test(req.url ?? "") && m === "small pages") {
              const file = NodePath.join(dir, `small-${Date.now()}.db`)
              const db = new BetterSqlite3(file)
              db.pragma("page_size = 1024")
              db.exec("CREATE TABLE t (k TEXT PRIMARY KEY); INSERT INTO t VALUES ('small')")
              // Whole 4096-byte units, so that only its header tells it apart.
              for (let i = 0; (db.pragma("page_count", { simple: true }) as number) % 4 !== 0; i++) {
                db.exec(`CREATE TABLE pad${i} (x)`)
              }
              db.close()
              body = Fs.readFileSync(file)
            }
            // The protocol's own headers pass (the snapshot's generation and frame, the database identity).
            const own = Object.entries(answer.headers).filter(([name]) => name.startsWith("x-"))
            res.writeHead(answer.status, {
              ...Object.fromEntries(own.map(([name, value]) => [name, String(value)])),
              "content-type": String(answer.headers["content-type"] ?? "application/octet-stream")
            })
            res.end(body)
          }, (error) => {
            res.writeHead(502)
            res.end(String(error))
          })
        server.listen(0, "127.0.0.1", () => resolve(server))
      })
    ),
    (server) => Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
  ).pipe(Effect.map((server) => `http://127.0.0.1:${(server.address() as Net.AddressInfo).port}`))

const open = (path: string, url: string, bootstrap: "head" | "base" = "head") =>
  Layer.build(
    SyncDatabase.layer({ path, url, retrySchedule: undefined, bootstrap }).pipe(Layer.provide(NodeHttpClient.layerUndici))
  ).pipe(Effect.map(Context.get(SyncDatabase.SyncDatabase)))

/** Every local file of `path` and its size. */
const localFiles = (dir: string) =>
  Object.fromEntries(Fs.readdirSync(dir).filter((f) => f.startsWith("victim")).map((f) => [f, Fs.statSync(NodePath.join(dir, f)).size]))

describe("a lying or broken remote", () => {
  it.scoped("garbage pages and random bytes are refused with InvalidData; nothing is recorded; honest answers sync again", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      let mode: Mode = "honest"
      const proxy = yield* lyingProxy(server.url, () => mode, dir)
      const url = `${proxy}/db/shop`

      const writer = yield* open(NodePath.join(dir, "writer"), `${server.url}/db/shop`)
      yield* writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
      yield* writer.execute("INSERT INTO t VALUES ('w1', 'one')")
      yield* writer.push

      // Opened on the base alone, so that the writer's frames still have to come through the lying proxy
      // (a replica at the head would first find the lie at its own synced frame: RemoteBehind).
      const path = NodePath.join(dir, "victim")
      const victim = yield* open(path, url, "base")
      yield* victim.execute("CREATE TABLE mine (k TEXT PRIMARY KEY)")
      yield* victim.execute("INSERT INTO mine VALUES ('pending')")
      const metadataBefore = Fs.readFileSync(`${path}-info`, "utf8")

      for (const lie of ["garbage pages", "random bytes"] as const) {
        mode = lie
        const error = yield* Effect.flip(victim.pull)
        expect(error, lie).toBeInstanceOf(SyncError.RemoteError)
        expect(error, lie).toMatchObject({ reason: "InvalidData" })
        const m = JSON.parse(Fs.readFileSync(`${path}-info`, "utf8"))
        expect(m.syncedFrame, lie).toBe(JSON.parse(metadataBefore).syncedFrame)
        expect(m.generation, lie).toBe(JSON.parse(metadataBefore).generation)
        // No outsized file (random commit sizes once made a sparse Draft of terabytes).
        for (const [file, size] of Object.entries(localFiles(dir))) expect(size, `${lie}: ${file}`).toBeLessThan(1_000_000)
        expect(yield* victim.query("SELECT k FROM mine")).toEqual([{ k: "pending" }])
        // A push is refused the same way, before anything is sent.
        expect(yield* Effect.flip(victim.push), lie).toMatchObject({ _tag: "RemoteError", reason: "InvalidData" })
      }

      mode = "honest"
      expect(yield* victim.sync).toBe(true)
      expect(yield* victim.query("SELECT k, v FROM t")).toEqual([{ k: "w1", v: "one" }])
      expect(yield* victim.query("PRAGMA integrity_check")).toEqual([{ integrity_check: "ok" }])
      yield* writer.pull
      expect(yield* writer.query("SELECT k FROM mine")).toEqual([{ k: "pending" }])
    }), 300_000)

  it.scoped("a base of 1024-byte pages is refused at bootstrap, and nothing is left on disk", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const server = yield* serverProcess(["--data", NodePath.join(dir, "server")])
      const proxy = yield* lyingProxy(server.url, () => "small pages", dir)
      const error = yield* Effect.flip(open(NodePath.join(dir, "victim"), `${proxy}/db/shop`))
      expect(error).toBeInstanceOf(SyncError.BootstrapError)
      expect(error).toMatchObject({ reason: "InvalidBase" })
      expect(error.message).toContain("1024-byte pages")
      // Nothing: a refused first open removes its lock file too.
      expect(Object.keys(localFiles(dir))).toEqual([])
    }), 300_000)
})
