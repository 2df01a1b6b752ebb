/**
 * A minimal sync client made of raw HTTP and a real SQLite replica, for server reliability tests and the
 * load benchmark. Each step writes one row `(pusher, seq)` of table `pushed` in one transaction (sometimes a large one,
 * split over several requests with a baton) and pushes its WAL frames. Whatever is uncertain (a
 * conflict, a refused connection, a lost answer, an unknown baton after a server restart) is settled
 * by rebuilding the replica from the server and looking for the row: it is retried only if absent, so
 * a row is never written twice. Every push the server acknowledged is recorded with its frames.
 */
import * as WalFrame from "../../src/WalFrame.js"
import * as H from "./http.js"

export interface Ack {
  readonly seq: number
  readonly generation: number
  readonly start: number
  readonly frames: ReadonlyArray<WalFrame.Frame>
}

export interface PusherStats {
  /** Transactions acknowledged (their last request answered ok). */
  acked: number
  /** Requests that got `conflict`: another pusher got there first. */
  conflicts: number
  /** 503 busy answers (another pusher's transaction was open). */
  busy: number
  /** Requests that failed on the network (server killed, connection refused or reset). */
  networkErrors: number
  /** Pushes cut while the request was in flight (reset or hang-up, not refused). */
  cutPushes: number
  /** Transactions whose answer was lost but which the server had applied. */
  appliedUnacked: number
  /** Gap or unknown-baton answers: the server lost an unfinished transaction (restart). */
  restarts: number
  /** Any other answer: each is a failure of the server. */
  unexpected: Array<string>
  /** Wall time of each acknowledged transaction's pushes, in ms. */
  latencies: Array<number>
  /** Wall time of every push request answered (any status), in ms. */
  pushRequestLatencies: Array<number>
  /** Wall time of every incremental pull request answered, in ms. */
  pullLatencies: Array<number>
  /** Full re-reads of the database (export + every frame). */
  pulls: number
  /** Frames received by incremental pulls. */
  framesPulled: number
  /** Pull answers that ended inside a transaction (its frames held for the next answer). */
  cutPulls: number
}

export interface PusherOptions {
  readonly base: () => string
  readonly database: string
  readonly id: string
  readonly token?: string | undefined
  /** Frames per request (the libSQL client uses 128). */
  readonly chunkFrames?: number
  /** Share of transactions that are large (several requests with a baton). */
  readonly largeShare?: number
  readonly random?: () => number
  /** Keep the frames of every acknowledged push (to compare them with the server's at the end). */
  readonly keepFrames?: boolean
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

type PushOutcome =
  | { readonly _tag: "Acked"; readonly generation: number }
  | { readonly _tag: "Conflict" }
  | { readonly _tag: "Uncertain"; readonly why: string }

export class Pusher {
  readonly stats: PusherStats = {
    acked: 0,
    conflicts: 0,
    busy: 0,
    networkErrors: 0,
    cutPushes: 0,
    appliedUnacked: 0,
    restarts: 0,
    unexpected: [],
    latencies: [],
    pushRequestLatencies: [],
    pullLatencies: [],
    pulls: 0,
    framesPulled: 0,
    cutPulls: 0
  }
  readonly acks: Array<Ack> = []
  /** Rows this pusher knows the server has: acknowledged or found after an uncertain push. */
  readonly stored = new Set<number>()
  private replica: H.Replica | undefined
  /** The committed database the replica holds (base with every frame up to `head` applied). */
  private file: Uint8Array = new Uint8Array(0)
  private walFrames = 0
  private generation = 1
  private head = 0
  private seq = 0
  /** A row whose push ended without an answer, not yet looked for on the server. */
  private uncertain: { readonly seq: number; readonly conflicted: boolean } | undefined
  private readonly random: () => number
  /** A push request is on the wire right now. */
  inFlight = false

  constructor(readonly options: PusherOptions) {
    this.random = options.random ?? Math.random
  }

  /** The committed database the replica holds: its generation, last frame and file. */
  get committed(): { readonly generation: number; readonly head: number; readonly file: Uint8Array } {
    return { generation: this.generation, head: this.head, file: this.file }
  }

  private headers() {
    return H.auth(this.options.token)
  }

  private rebuild() {
    this.replica?.close()
    this.replica = new H.Replica(this.file)
    // The replica is rebuilt from the server whenever in doubt: its own durability buys nothing.
    this.replica.db.pragma("synchronous = OFF")
    this.walFrames = 0
  }

  /** Rebuilds the replica from the server's current generation: base plus every committed frame. */
  async resync(): Promise<void> {
    const snap = await H.snapshot(this.options.base(), this.options.database, this.options.token)
    this.stats.pulls++
    this.file = snap.file
    this.rebuild()
    this.generation = snap.generation
    this.head = snap.frames.length
  }

  /**
   * Pulls frames after `head` (128 a request, like the libSQL client) until the server says there are
   * no more, and rebuilds the replica if any came. Falls back to `resync` on a new generation.
   * Returns the number of frames received; throws on network errors.
   */
  async catchUp(): Promise<number> {
    if (this.replica === undefined) {
      await this.resync()
      return 0
    }
    let received = 0
    try {
      await this.pullFrames((n) => {
        received += n
      })
    } finally {
      // Frames already applied to `file` must reach the replica even when a later request fails: a
      // replica left behind its head would write its next transaction on pages the server has moved past.
      if (received > 0) this.rebuild()
    }
    return received
  }

  private async pullFrames(onFrames: (n: number) => void): Promise<void> {
    // A pull answer may end inside a transaction (the server caps answers without looking at transaction
    // boundaries): its frames after the last commit frame are held until the answer that completes it.
    // Applying only what precedes the commit frame while counting every frame into `head` would leave
    // the replica without those pages, and its next transaction would be written on pages the server has
    // moved past (refused as malformed, or worse, accepted and undoing another pusher's row).
    let carried: ReadonlyArray<WalFrame.Frame> = []
    for (;;) {
      const start = this.head + carried.length + 1
      const started = performance.now()
      const res = await H.request(this.options.base(), {
        path: `/db/${this.options.database}/sync/${this.generation}/${start}/${start + 128}`,
        headers: this.headers()
      })
      this.stats.pullLatencies.push(performance.now() - started)
      if (res.status === 200) {
        const decoded = WalFrame.decodeWire(new Uint8Array(res.body))
        if (decoded._tag === "Left") throw new Error(`${this.options.id}: undecodable pull: ${decoded.left.message}`)
        const batch = carried.length === 0 ? decoded.right : carried.concat(decoded.right)
        const committed = WalFrame.committedLength(batch)
        this.file = WalFrame.applyFrames(this.file, batch)
        this.head += committed
        carried = batch.slice(committed)
        if (carried.length > 0) this.stats.cutPulls++
        onFrames(committed)
        this.stats.framesPulled += decoded.right.length
        continue
      }
      const body = res.headers["content-type"]?.includes("json") ? H.json(res) : undefined
      if (res.status === 400 && body?.status === "checkpoint_needed") {
        if (body.generation !== this.generation) {
          this.replica!.close()
          this.replica = undefined
          await this.resync()
          return
        }
        return
      }
      this.stats.unexpected.push(`pull ${res.status} ${res.body.toString("utf8").slice(0, 200)}`)
      throw new Error(`pull answered ${res.status}`)
    }
  }

  private hasRow(seq: number): boolean {
    const db = this.replica!.db
    const table = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'pushed'").get()
    if (table === undefined) return false
    return db.prepare("SELECT 1 FROM pushed WHERE pusher = ? AND seq = ?").get(this.options.id, seq) !== undefined
  }

  private async pushFrames(frames: ReadonlyArray<WalFrame.Frame>): Promise<PushOutcome> {
    const chunk = this.options.chunkFrames ?? 64
    let baton: string | undefined
    for (let offset = 0; offset < frames.length; offset += chunk) {
      const part = frames.slice(offset, offset + chunk)
      const start = this.head + 1 + offset
      const path = `/db/${this.options.database}/sync/${this.generation}/${start}/${start + part.length}` +
        (baton === undefined ? "" : `/${baton}`)
      let res: H.RawResponse
      for (let attempt = 0;; attempt++) {
        const requestStarted = performance.now()
        try {
          this.inFlight = true
          res = await H.request(this.options.base(), {
            method: "POST",
            path,
            headers: this.headers(),
            body: WalFrame.encodeWire(part)
          })
          this.stats.pushRequestLatencies.push(performance.now() - requestStarted)
        } catch (error) {
          this.stats.networkErrors++
          const code = (error as NodeJS.ErrnoException).code ?? String(error)
          if (code !== "ECONNREFUSED") this.stats.cutPushes++
          return { _tag: "Uncertain", why: `network: ${code}` }
        } finally {
          this.inFlight = false
        }
        if (res.status === 503 && attempt < 50) {
          this.stats.busy++
          await sleep(10 + this.random() * 40)
          continue
        }
        break
      }
      const body = res.headers["content-type"]?.includes("json") ? H.json(res) : undefined
      if (res.status === 200 && body?.status === "conflict") {
        this.stats.conflicts++
        return { _tag: "Conflict" }
      }
      if (res.status === 200 && body?.status === "ok") {
        if (body.max_frame_no !== start + part.length - 1) {
          this.stats.restarts++
          return { _tag: "Uncertain", why: `gap: head ${body.max_frame_no}, pushed to ${start + part.length - 1}` }
        }
        baton = body.baton
        continue
      }
      if (res.status === 400 && body?.error === "unknown_baton") {
        this.stats.restarts++
        return { _tag: "Uncertain", why: "unknown baton" }
      }
      if (res.status === 503) return { _tag: "Uncertain", why: "still busy" }
      this.stats.unexpected.push(`${res.status} ${res.body.toString("utf8").slice(0, 200)}`)
      return { _tag: "Uncertain", why: `unexpected ${res.status}` }
    }
    return { _tag: "Acked", generation: this.generation }
  }

  /**
   * Writes and pushes the next row. Returns false when the server could not be reached (the caller
   * waits and calls again); throws only on a broken invariant.
   */
  async step(): Promise<boolean> {
    try {
      if (this.replica === undefined) await this.resync()
    } catch {
      this.stats.networkErrors++
      return false
    }
    if (this.uncertain !== undefined) {
      this.settle(this.uncertain)
      this.uncertain = undefined
    }
    const seq = this.seq + 1
    const large = this.random() < (this.options.largeShare ?? 0.1)
    const payload = large ? 200_000 + Math.floor(this.random() * 200_000) : 50 + Math.floor(this.random() * 400)
    const frames = this.replica!.write(
      "BEGIN; CREATE TABLE IF NOT EXISTS pushed(pusher TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL); " +
        `INSERT INTO pushed VALUES ('${this.options.id}', ${seq}, randomblob(${payload})); COMMIT;`
    )
    const started = performance.now()
    const outcome = await this.pushFrames(frames)
    if (outcome._tag === "Acked") {
      this.stats.acked++
      this.stats.latencies.push(performance.now() - started)
      this.acks.push({
        seq,
        generation: outcome.generation,
        start: this.head + 1,
        frames: this.options.keepFrames === false ? [] : frames
      })
      this.stored.add(seq)
      this.head += frames.length
      this.file = WalFrame.applyFrames(this.file, frames)
      this.seq = seq
      // Replica.write re-reads its whole WAL each time: start a fresh one before that cost adds up.
      this.walFrames += frames.length
      if (this.walFrames > 256) this.rebuild()
      return true
    }
    if (outcome._tag === "Conflict") {
      // Someone else's frames are at our numbers: the replica's transaction cannot be pushed. Drop it,
      // catch up with what the server has, and write the row again next time.
      this.rebuild()
      try {
        await this.catchUp()
      } catch {
        this.stats.networkErrors++
        this.replica?.close()
        this.replica = undefined
        this.uncertain = { seq, conflicted: true }
        return false
      }
      this.settle({ seq, conflicted: true })
      return true
    }
    // Not acknowledged: the server has the row or it does not; only a fresh copy tells, and until one
    // is read the row stays uncertain (never written again before it has been looked for).
    this.uncertain = { seq, conflicted: false }
    this.replica!.close()
    this.replica = undefined
    try {
      await this.resync()
    } catch {
      this.stats.networkErrors++
      return false
    }
    this.settle(this.uncertain)
    this.uncertain = undefined
    return !outcome.why.startsWith("network")
  }

  private settle(uncertain: { readonly seq: number; readonly conflicted: boolean }) {
    if (!this.hasRow(uncertain.seq)) return
    if (uncertain.conflicted) {
      throw new Error(`${this.options.id}: row ${uncertain.seq} is on the server although its push conflicted`)
    }
    this.stats.appliedUnacked++
    this.stored.add(uncertain.seq)
    this.seq = uncertain.seq
  }

  close() {
    this.replica?.close()
    this.replica = undefined
  }
}

/** Runs `step` until `running()` is false; backs off when the server is unreachable. */
export const runPusher = async (pusher: Pusher, running: () => boolean): Promise<void> => {
  while (running()) {
    const reached = await pusher.step()
    if (!reached) await sleep(50)
  }
}

export interface Verdict {
  /** The generation the check read. */
  readonly generation: number
  readonly rows: number
  readonly integrity: string
  readonly duplicates: ReadonlyArray<string>
  readonly missing: ReadonlyArray<string>
  readonly framesDiffering: number
  /** Frames of the current generation, and how many of them acknowledged pushes account for. */
  readonly totalFrames: number
  readonly framesAcknowledged: number
}

/**
 * Checks the server's copy of a database against what the pushers were told: every acknowledged row
 * (and every row found after an uncertain push) is there exactly once, every acknowledged frame is
 * stored byte for byte at the number it was acknowledged at, and SQLite finds the database sound.
 */
export const verify = async (
  base: string,
  database: string,
  pushers: ReadonlyArray<Pusher>,
  token?: string
): Promise<Verdict> => {
  const snap = await H.snapshot(base, database, token)
  const db = H.open(snap.file)
  try {
    const integrity = String(db.pragma("integrity_check", { simple: true }))
    const hasTable = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'pushed'").get() !== undefined
    const counts = new Map<string, number>()
    if (hasTable) {
      for (const row of db.prepare("SELECT pusher, seq, count(*) AS n FROM pushed GROUP BY pusher, seq").all() as Array<{ pusher: string; seq: number; n: number }>) {
        counts.set(`${row.pusher}/${row.seq}`, row.n)
      }
    }
    const duplicates = [...counts].filter(([, n]) => n !== 1).map(([k, n]) => `${k} x${n}`)
    const missing: Array<string> = []
    let framesDiffering = 0
    let framesAcknowledged = 0
    for (const pusher of pushers) {
      for (const seq of pusher.stored) {
        if (!counts.has(`${pusher.options.id}/${seq}`)) missing.push(`${pusher.options.id}/${seq}`)
      }
      for (const ack of pusher.acks) {
        if (ack.generation !== snap.generation) continue
        framesAcknowledged += ack.frames.length
        for (let i = 0; i < ack.frames.length; i++) {
          const stored = snap.frames[ack.start - 1 + i]
          if (stored === undefined || !WalFrame.equals(stored, ack.frames[i])) framesDiffering++
        }
      }
    }
    const rows = [...counts.values()].reduce((a, b) => a + b, 0)
    return { generation: snap.generation, rows, integrity, duplicates, missing, framesDiffering, totalFrames: snap.frames.length, framesAcknowledged }
  } finally {
    db.close()
  }
}
