/**
 * The server's metrics (Effect `Metric`s, so any Effect metrics exporter sees them too) and their
 * Prometheus text rendering for `GET /metrics`. Only metrics named `effect_sqlite_sync_*` are rendered.
 *
 * @internal
 */
import * as Arr from "effect/Array"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import type * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"

const PREFIX = "effect_sqlite_sync_"

/** 1 ms .. about 16 s, doubling. */
const latencyBoundaries = MetricBoundaries.exponential({ start: 0.001, factor: 2, count: 15 })

export const requests = Metric.counter(`${PREFIX}requests_total`, {
  description: "HTTP requests answered, by route and status",
  incremental: true
})

export const pushSeconds = Metric.histogram(
  `${PREFIX}push_seconds`,
  latencyBoundaries,
  "Time to answer a push (POST /db/NAME/sync/...), body read included"
)

export const pullSeconds = Metric.histogram(`${PREFIX}pull_seconds`, latencyBoundaries, "Time to answer a pull (GET /db/NAME/sync/...)")

export const checkSeconds = Metric.histogram(
  `${PREFIX}check_seconds`,
  latencyBoundaries,
  "Time of the malformed-database check of a pushed commit"
)

export const frames = Metric.counter(`${PREFIX}frames_total`, {
  description: "WAL frames carried, by direction (push: received, pull: sent)",
  incremental: true
})

export const bytes = Metric.counter(`${PREFIX}bytes_total`, {
  description: "Body bytes carried, by direction (push: received, pull and export: sent)",
  incremental: true
})

export const databases = Metric.gauge(`${PREFIX}databases`, {
  description: "Databases in the store (the embedded store: opened by this process since it started)"
})

export const openBatons = Metric.gauge(`${PREFIX}open_batons`, {
  description: "Transactions spanning requests that are open (baton sessions)"
})

export const waitingPulls = Metric.gauge(`${PREFIX}waiting_pulls`, {
  description: "Pulls waiting for the next commit of their database (Prefer: wait)"
})

/**
 * The labels of one value of the tags a request is counted under, made once: a metric finds its series
 * by the identity of the labels array it is updated with, so a fresh array (what `Effect.tagMetrics`
 * makes each time) costs a new key, its hash and a registry lookup on every request.
 */
const labelsOf = (() => {
  const made = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
  return (pairs: ReadonlyArray<readonly [string, string]>): ReadonlyArray<MetricLabel.MetricLabel> => {
    const id = pairs.map(([k, v]) => `${k}\u0000${v}`).join("\u0000")
    let labels = made.get(id)
    if (labels === undefined) {
      labels = pairs.map(([k, v]) => MetricLabel.make(k, v))
      made.set(id, labels)
    }
    return labels
  }
})()

/** A request as the metrics count it. */
export interface RequestMeasure {
  readonly route: string
  readonly status: number
  /** Seconds from the request's arrival to its answer. */
  readonly seconds: number
  /** Seconds of that spent waiting for a commit (not serving time). */
  readonly waited: number
  readonly frames: number
  readonly bytes: number
}

/**
 * Counts one answered request: `requests` by route and status, the push or pull latency, and the frames
 * and bytes carried by direction. `ambient`: the labels of the fiber (`FiberRef.currentMetricLabels`),
 * which come first, as with `Effect.tagMetrics` around the updates.
 */
export const recordRequest = (ambient: ReadonlyArray<MetricLabel.MetricLabel>, r: RequestMeasure): void => {
  const tagged = (labels: ReadonlyArray<MetricLabel.MetricLabel>) => ambient.length === 0 ? labels : Arr.union(ambient, labels)
  requests.unsafeUpdate(1, tagged(labelsOf([["route", r.route], ["status", String(r.status)]])))
  const push = r.route.startsWith("POST /sync")
  const pull = r.route.startsWith("GET /sync")
  if (push) pushSeconds.unsafeUpdate(r.seconds, ambient)
  if (pull) pullSeconds.unsafeUpdate(Math.max(0, r.seconds - r.waited), ambient)
  if (push || pull || r.route.startsWith("GET /export")) {
    const direction = tagged(labelsOf([["direction", push ? "push" : "pull"]]))
    frames.unsafeUpdate(r.frames, direction)
    bytes.unsafeUpdate(r.bytes, direction)
  }
}

/** Records how long `effect` takes in `checkSeconds`. */
export const timeCheck = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.timed(effect).pipe(
    Effect.tap(([duration]) => Metric.update(checkSeconds, Duration.toSeconds(duration))),
    Effect.map(([, a]) => a)
  )

const escapeLabel = (value: string) => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, "\\\"")

const labels = (tags: ReadonlyArray<{ readonly key: string; readonly value: string }>, extra?: readonly [string, string]) => {
  const all = tags.map((t) => [t.key, t.value] as const).concat(extra === undefined ? [] : [extra])
  return all.length === 0 ? "" : `{${all.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`
}

const number = (n: number | bigint) =>
  typeof n === "bigint" ? n.toString() : n === Infinity ? "+Inf" : n === -Infinity ? "-Inf" : String(n)

/** The `effect_sqlite_sync_*` metrics in Prometheus' text exposition format (version 0.0.4). */
export const renderPrometheus = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const byName = new Map<string, Array<MetricPair.MetricPair.Untyped>>()
  for (const pair of pairs) {
    const name = pair.metricKey.name
    if (!name.startsWith(PREFIX)) continue
    const list = byName.get(name) ?? []
    list.push(pair)
    byName.set(name, list)
  }
  const lines: Array<string> = []
  for (const [name, list] of [...byName].sort(([a], [b]) => a.localeCompare(b))) {
    const key = list[0].metricKey as MetricKey.MetricKey.Untyped
    const description = key.description._tag === "Some" ? key.description.value : name
    const state = list[0].metricState
    const type = MetricState.isCounterState(state)
      ? "counter"
      : MetricState.isGaugeState(state)
      ? "gauge"
      : MetricState.isHistogramState(state)
      ? "histogram"
      : undefined
    if (type === undefined) continue
    lines.push(`# HELP ${name} ${description.replace(/\n/g, " ")}`, `# TYPE ${name} ${type}`)
    for (const pair of list) {
      const s = pair.metricState
      const tags = pair.metricKey.tags
      if (MetricState.isCounterState(s)) {
        lines.push(`${name}${labels(tags)} ${number(s.count)}`)
      } else if (MetricState.isGaugeState(s)) {
        lines.push(`${name}${labels(tags)} ${number(s.value)}`)
      } else if (MetricState.isHistogramState(s)) {
        for (const [boundary, count] of s.buckets) lines.push(`${name}_bucket${labels(tags, ["le", number(boundary)])} ${count}`)
        if (!s.buckets.some(([boundary]) => boundary === Infinity)) {
          lines.push(`${name}_bucket${labels(tags, ["le", "+Inf"])} ${s.count}`)
        }
        lines.push(`${name}_sum${labels(tags)} ${s.sum}`, `${name}_count${labels(tags)} ${s.count}`)
      }
    }
  }
  return lines.join("\n") + "\n"
}
