/**
 * Exports and snapshots stream from disk with backpressure: slow readers of a large base cost the server
 * a chunk each, not a copy of the file. Measured on the real server process (its resident set size from
 * /proc), over loopback, with readers that stop reading after the first bytes.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Path from "node:path"
import * as ServerStore from "../src/ServerStore.js"
import * as WalFrame from "../src/WalFrame.js"
import * as H from "./support/http.js"
import { serverProcess } from "./support/process.js"

const PAGES = 16_384 // a 64 MiB base
const READERS = 8

const rssBytes = (pid: number): number => {
  const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const match = /VmRSS:\s+(\d+) kB/.exec(status)
  if (match === null) throw new Error("no VmRSS")
  return Number(match[1]) * 1024
}

const openStoredFiles = (pid: number): Array<string> =>
  Fs.readdirSync(`/proc/${pid}/fd`).flatMap((fd) => {
    try {
      const target = Fs.readlinkSync(`/proc/${pid}/fd/${fd}`)
      return /\/(base-\d+|snapshot-\d+-\d+)\.db/.test(target) ? [target] : []
    } catch {
      return []
    }
  })

/** A GET whose body is read only up to its first chunk, then left unread until `resume` or `destroy`. */
const slowReader = (base: string, path: string) =>
  new Promise<{ status: number; resume: () => Promise<Buffer>; destroy: () => void }>((resolve, reject) => {
    const url = new URL(base)
    const req = Http.request({ host: url.hostname, port: url.port, path, agent: false }, (res) => {
      const chunks: Array<Buffer> = []
      res.once("data", (chunk: Buffer) => {
        chunks.push(chunk)
        res.pause()
        resolve({
          status: res.statusCode ?? 0,
          resume: () =>
            new Promise((done, failed) => {
              res.on("data", (c: Buffer) => chunks.push(c))
              res.on("end", () => done(Buffer.concat(chunks)))
              res.on("error", failed)
              res.resume()
            }),
          destroy: () => req.destroy()
        })
      })
    })
    req.on("error", reject)
    req.end()
  })

const sha = (bytes: Uint8Array) => Crypto.createHash("sha256").update(bytes).digest("hex")

describe("streamed exports and snapshots", () => {
  it.live(`${READERS} slow readers each of /export and /snapshot of a 64 MiB base cost the server a few MB, not copies`, () =>
    Effect.gen(function*() {
      const data = yield* Effect.acquireRelease(
        Effect.sync(() => H.tempDir("streaming")),
        (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
      )
      // Generation 2's base: one transaction writing every page of a 64 MiB file, rolled at once.
      const expected = yield* Effect.gen(function*() {
        const store = yield* ServerStore.ServerStore
        const page = (n: number) => {
          const bytes = Crypto.randomBytes(WalFrame.PAGE_SIZE)
          bytes.writeUInt32BE(n, 0)
          return new Uint8Array(bytes)
        }
        const frames = Array.from({ length: PAGES }, (_, i): WalFrame.Frame => ({
          pgno: i + 1,
          commitSize: i === PAGES - 1 ? PAGES : 0,
          page: page(i + 1)
        }))
        let baton: string | undefined
        for (let at = 0; at < PAGES; at += 1024) {
          const result = yield* store.push("big", 1, at + 1, at + 1025, frames.slice(at, at + 1024), baton)
          baton = result._tag === "Ok" ? result.baton : undefined
        }
        expect(yield* store.info("big")).toEqual({ generation: 2, maxFrameNo: 0 })
        return sha(WalFrame.applyFrames(yield* store.exportGeneration("big", 1), frames))
      }).pipe(Effect.provide(Layer.fresh(ServerStore.layer({ directory: data, integrityCheck: "off", generationFrames: 1 }))))
      expect(Fs.statSync(Path.join(data, "big", "base-2.db")).size).toBe(PAGES * WalFrame.PAGE_SIZE)

      const server = yield* serverProcess(["--data", data, "--integrity-check", "off", "--log-format", "json"])
      const pid = server.child.pid!
      // Warm up: each route read once in full (this also builds the snapshot file).
      for (const path of ["/db/big/export/2", "/db/big/snapshot"]) {
        const whole = yield* Effect.promise(() => H.request(server.url, { path }))
        expect(whole.status).toBe(200)
        expect(sha(whole.body)).toBe(expected)
      }
      yield* Effect.sleep("500 millis")
      const before = rssBytes(pid)

      const readers = yield* Effect.promise(() =>
        Promise.all(
          Array.from({ length: 2 * READERS }, (_, i) =>
            slowReader(server.url, i % 2 === 0 ? "/db/big/export/2" : "/db/big/snapshot"))
        )
      )
      expect(readers.every((r) => r.status === 200)).toBe(true)
      // Time for a server that loads whole files per request to have done so.
      yield* Effect.sleep("1500 millis")
      const during = rssBytes(pid)
      const growth = during - before
      // Loading the base per request would cost 16 x 64 MiB; streaming costs a chunk or two per reader.
      expect(growth).toBeLessThan(48 * 1024 * 1024)
      expect(openStoredFiles(pid).length).toBe(2 * READERS)

      // A slow reader still gets every byte once it reads on; the others hang up.
      const full = yield* Effect.promise(() => readers[0].resume())
      expect(sha(full)).toBe(expected)
      const fullSnapshot = yield* Effect.promise(() => readers[1].resume())
      expect(sha(fullSnapshot)).toBe(expected)
      for (const reader of readers.slice(2)) reader.destroy()
      // Every file the answers held is closed once they end.
      let open = openStoredFiles(pid)
      for (let i = 0; i < 50 && open.length > 0; i++) {
        yield* Effect.sleep("100 millis")
        open = openStoredFiles(pid)
      }
      expect(open).toEqual([])
      console.log(`server RSS ${(before / 2 ** 20).toFixed(1)} MiB idle, +${(growth / 2 ** 20).toFixed(1)} MiB with ${2 * READERS} slow readers of a 64 MiB base`)
    }).pipe(Effect.scoped), 180_000)
})
