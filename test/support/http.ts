/**
 * Test helpers for talking to a real sync server: raw HTTP (node:http, so paths are sent verbatim, `..`
 * and `%2f` included), real frames made by a real SQLite, and materializing the server's current
 * database (export + pulled frames) to open it with better-sqlite3.
 */
import BetterSqlite3 from "better-sqlite3"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Option from "effect/Option"
import * as WalFrame from "../../src/WalFrame.js"

export interface RawResponse {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: Buffer
}

export interface RawRequest {
  readonly method?: string
  readonly path: string
  readonly headers?: Record<string, string>
  /** One buffer: sent with its content-length. Several: sent chunked, without content-length. */
  readonly body?: Uint8Array | ReadonlyArray<Uint8Array>
}

/** One HTTP request over loopback; the path goes out byte for byte. */
export const request = (base: string, options: RawRequest): Promise<RawResponse> =>
  new Promise((resolve, reject) => {
    const url = new URL(base)
    const headers: Record<string, string> = { ...options.headers }
    const single = options.body instanceof Uint8Array ? options.body : undefined
    if (single !== undefined && headers["content-length"] === undefined) {
      headers["content-length"] = String(single.byteLength)
    }
    const req = Http.request({
      host: url.hostname,
      port: url.port,
      method: options.method ?? "GET",
      path: options.path,
      headers,
      agent: false
    }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (chunk: Buffer) => chunks.push(chunk))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on("error", reject)
    })
    // A server may answer (413) and close before the whole body is written: the answer still counts.
    req.on("error", reject)
    if (single !== undefined) req.end(single)
    else if (options.body !== undefined) {
      const chunks = options.body as ReadonlyArray<Uint8Array>
      const writeAll = async () => {
        for (const chunk of chunks) {
          if (req.destroyed) return
          if (!req.write(chunk)) await new Promise((r) => req.once("drain", r))
        }
        req.end()
      }
      writeAll().catch(reject)
    } else req.end()
  })

export const json = (response: RawResponse): any => JSON.parse(response.body.toString("utf8"))

export const tempDir = (prefix: string): string => Fs.mkdtempSync(Path.join(Os.tmpdir(), `ess-${prefix}-`))

/**
 * A local replica of one server database, made from the generation's base, that produces real WAL frames:
 * each `write` runs SQL and returns the frames it added to the WAL.
 */
export class Replica {
  readonly dir: string
  readonly file: string
  readonly db: BetterSqlite3.Database
  private taken = 0

  constructor(base: Uint8Array) {
    this.dir = tempDir("replica")
    this.file = Path.join(this.dir, "db")
    Fs.writeFileSync(this.file, base)
    this.db = new BetterSqlite3(this.file)
    this.db.pragma("wal_autocheckpoint = 0")
    this.db.pragma("journal_mode = WAL")
  }

  /** Every committed frame in the WAL. */
  frames(): ReadonlyArray<WalFrame.Frame> {
    const wal = Fs.readFileSync(`${this.file}-wal`)
    return Option.match(WalFrame.parse(new Uint8Array(wal)), { onNone: () => [], onSome: (w) => w.frames })
  }

  /** Runs SQL and returns the frames it appended (copied, so later writes do not change them). */
  write(sql: string): ReadonlyArray<WalFrame.Frame> {
    this.db.exec(sql)
    const all = this.frames()
    const added = all.slice(this.taken).map((f) => ({ ...f, page: Uint8Array.from(f.page) }))
    this.taken = all.length
    return added
  }

  close() {
    this.db.close()
    Fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

export const auth = (token: string | undefined): Record<string, string> =>
  token === undefined ? {} : { authorization: `Bearer ${token}` }

/** Pulls every committed frame of generation `generation` (until checkpoint_needed). */
export const pullAll = async (
  base: string,
  name: string,
  generation: number,
  token?: string
): Promise<Array<WalFrame.Frame>> => {
  const frames: Array<WalFrame.Frame> = []
  for (;;) {
    const start = frames.length + 1
    const res = await request(base, { path: `/db/${name}/sync/${generation}/${start}/${start + 128}`, headers: auth(token) })
    if (res.status === 400 && json(res).status === "checkpoint_needed") return frames
    if (res.status !== 200) throw new Error(`pull ${start}: ${res.status} ${res.body.toString()}`)
    const decoded = WalFrame.decodeWire(new Uint8Array(res.body))
    if (decoded._tag === "Left") throw decoded.left
    frames.push(...decoded.right.map((f) => ({ ...f, page: Uint8Array.from(f.page) })))
  }
}

export const exportBase = async (base: string, name: string, generation: number, token?: string) => {
  const res = await request(base, { path: `/db/${name}/export/${generation}`, headers: auth(token) })
  if (res.status !== 200) throw new Error(`export ${generation}: ${res.status} ${res.body.toString()}`)
  return new Uint8Array(res.body)
}

export const currentGeneration = async (base: string, name: string, token?: string): Promise<number> => {
  const res = await request(base, { path: `/db/${name}/info`, headers: auth(token) })
  if (res.status !== 200) throw new Error(`info: ${res.status} ${res.body.toString()}`)
  return json(res).current_generation
}

/** What the server holds for a database: its current generation, that base, and its frames. */
export const snapshot = async (base: string, name: string, token?: string) => {
  const generation = await currentGeneration(base, name, token)
  const baseBytes = await exportBase(base, name, generation, token)
  const frames = await pullAll(base, name, generation, token)
  return { generation, base: baseBytes, frames, file: WalFrame.applyFrames(baseBytes, frames) }
}

export const digestOf = (s: { generation: number; base: Uint8Array; frames: ReadonlyArray<WalFrame.Frame> }) => {
  const hash = Crypto.createHash("sha256")
  hash.update(String(s.generation))
  hash.update(s.base)
  hash.update(WalFrame.encodeWire(s.frames))
  return hash.digest("hex")
}

/** Opens a materialized database file (in memory) with better-sqlite3. */
export const open = (file: Uint8Array): BetterSqlite3.Database => {
  const copy = Buffer.from(file)
  // A WAL-mode header (18/19 = 2) cannot be deserialized; the content is the same in rollback mode.
  if (copy.byteLength >= 20) {
    copy[18] = 1
    copy[19] = 1
  }
  return new BetterSqlite3(copy)
}

/** A digest of every file under a directory except SQLite's shared-memory index, which reads rewrite. */
export const treeDigest = (dir: string): string => {
  const hash = Crypto.createHash("sha256")
  const walk = (d: string) => {
    for (const entry of Fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const full = Path.join(d, entry.name)
      if (entry.isDirectory()) walk(full)
      else if (!entry.name.endsWith("-shm")) {
        hash.update(Path.relative(dir, full))
        hash.update(Fs.readFileSync(full))
      }
    }
  }
  walk(dir)
  return hash.digest("hex")
}
