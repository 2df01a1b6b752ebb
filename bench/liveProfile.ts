/**
 * `bench/live.ts --profile`: where the time of one live write goes. Each replica process records, with
 * wall-clock times comparable across the processes of this machine, every span it runs (the engine's
 * `Effect.fn` steps, its HTTP requests) and every fsync its engine makes (through a recording `SyncFiles`).
 * The parent then lays out, per write, what both replicas did between A's `execute` returning and B's
 * stream emitting, and prints per-step medians.
 */
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Tracer from "effect/Tracer"
import * as NodePath from "node:path"
import * as SyncFiles from "../src/SyncFiles.js"

/** One span or fsync: who ran it, what, from when to when (ms, wall clock). */
export interface Event {
  readonly proc: string
  readonly name: string
  readonly start: number
  end: number
}

const now = () => performance.timeOrigin + performance.now()

/** Names worth a line: the engine's steps, HTTP requests, fsyncs and the public operations. */
const interesting = (name: string) =>
  /^(Engine\.|SyncDatabase\.(push|pull|sync|execute|query)|http\.client|fsync|SyncMetadata)/.test(name)

/** The HTTP request a client span stands for: method, route (`sync`, `info`, ...) and the span it ran in. */
const httpName = (name: string, attributes: ReadonlyMap<string, unknown>, parent: string) => {
  const url = String(attributes.get("url.full") ?? attributes.get("http.url") ?? "")
  const route = /\/db\/[^/]+\/([a-z]+)/.exec(url)?.[1] ?? "?"
  return `${name} ${route} (in ${parent})`
}

/** A recorder: a tracer and a file service that note their events into `events`. */
export const make = (proc: string) => {
  const events: Array<Event> = []
  // The default tracer does the rest.
  const base = Effect.runSync(Effect.tracer)
  const tracer = Tracer.make({
    span: (name, parent, context, links, startTime, kind, options) => {
      const span = base.span(name, parent, context, links, startTime, kind, options)
      // Only the steps the report lays out: every SQL statement's span would make B's report line megabytes.
      if (!interesting(name)) return span
      const event: Event = { proc, name, start: now(), end: NaN }
      events.push(event)
      const end = span.end.bind(span)
      return Object.assign(span, {
        end: (endTime: bigint, exit: Exit.Exit<unknown, unknown>) => {
          event.end = now()
          if (name.startsWith("http.client")) {
            const within = parent._tag === "Some" && parent.value._tag === "Span" ? parent.value.name : "no span"
            ;(event as { name: string }).name = httpName(name, span.attributes, within)
          }
          end(endTime, exit)
        }
      })
    },
    context: base.context
  })
  const paths = new Map<number, string>()
  // The file's role, not its temp name: `-info`, `-synced-wal`, a directory...
  const role = (fd: number) =>
    NodePath.basename(paths.get(fd) ?? "?").replace(/^[^-]*/, "").replace(/\.tmp-.*$/, ".tmp") || "(dir)"
  const files: SyncFiles.Service = {
    ...SyncFiles.node,
    openSync: (path, flags) => {
      const fd = SyncFiles.node.openSync(path, flags)
      paths.set(fd, path)
      return fd
    },
    fsyncSync: (fd) => {
      const start = now()
      SyncFiles.node.fsyncSync(fd)
      events.push({ proc, name: `fsync ${role(fd)}`, start, end: now() })
    },
    // Off the event loop (the engine waits, other fibers run): noted as such, each from when all were asked.
    fsyncAll: (fds) => {
      const start = now()
      return SyncFiles.node.fsyncAll!(fds).then(() => {
        const end = now()
        for (const fd of fds) events.push({ proc, name: `fsync ${role(fd)} (off the thread)`, start, end })
      })
    }
  }
  const layer = Layer.mergeAll(Layer.setTracer(tracer), Layer.succeed(SyncFiles.SyncFiles, files))
  return { events, tracer, layer, withTracer: <A, E, R>(e: Effect.Effect<A, E, R>) => Effect.withTracer(e, tracer) }
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)]
}

/**
 * Per write (A's execute return `t0` to B's emission `t1`): the events of both replicas that overlap the
 * window. Prints the median's write as a waterfall and, per step, the median duration and how many times it
 * ran per write.
 */
export const report = (
  events: ReadonlyArray<Event>,
  writes: ReadonlyArray<{ readonly n: number; readonly t0: number; readonly t1: number }>
) => {
  const windows = writes.filter((w) => Number.isFinite(w.t1)).sort((a, b) => (a.t1 - a.t0) - (b.t1 - b.t0))
  if (windows.length === 0) return
  const inside = (w: { t0: number; t1: number }) =>
    events.filter((e) => interesting(e.name) && e.end >= w.t0 && e.start <= w.t1).sort((a, b) => a.start - b.start)
  const mid = windows[Math.floor(windows.length / 2)]
  console.log(`\nprofile: write ${mid.n} (the median latency, ${(mid.t1 - mid.t0).toFixed(1)} ms), ms from A's execute returning:`)
  for (const e of inside(mid)) {
    console.log(
      `  ${e.proc}  ${(e.start - mid.t0).toFixed(1).padStart(7)} .. ${(e.end - mid.t0).toFixed(1).padStart(7)}  ` +
        `${(e.end - e.start).toFixed(1).padStart(6)} ms  ${e.name}`
    )
  }
  // Per step over every write: median duration, and runs per write (each event counted in the windows it ends in).
  const byName = new Map<string, Array<number>>()
  for (const e of events) {
    if (!interesting(e.name) || !Number.isFinite(e.end)) continue
    const key = `${e.proc} ${e.name}`
    const list = byName.get(key) ?? []
    list.push(e.end - e.start)
    byName.set(key, list)
  }
  console.log(`\nprofile: per step over the run (${writes.length} writes): median ms, count, total ms`)
  for (const [key, list] of [...byName].sort((a, b) => a[0].localeCompare(b[0]))) {
    const total = list.reduce((s, x) => s + x, 0)
    console.log(`  ${median(list).toFixed(2).padStart(8)}  ${String(list.length).padStart(5)}  ${total.toFixed(0).padStart(7)}  ${key}`)
  }
}
