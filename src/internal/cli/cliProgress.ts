/**
 * The command line's progress bar on stderr, for a bootstrap and for pulls of a few MB or more. It is
 * fed by a `SyncRemote` wrapper (bytes of frames and of base files as they arrive), so the engine needs
 * no hook of its own. `render` is pure; `make` owns the terminal line.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as SyncRemote from "../../SyncRemote.js"
import * as WalFrame from "../../WalFrame.js"
import { formatBytes } from "./cliParams.js"

/** `auto`: only when stderr is a terminal and the transfer is big enough; `always`, `never`. */
export type Mode = "auto" | "always" | "never"

/** In `auto` mode a pull shows a bar once it is expected to bring (or has brought) this much. */
export const AUTO_THRESHOLD_BYTES = 2 * 1024 * 1024

export interface State {
  readonly label: string
  readonly done: number
  /** Expected bytes, when the remote's head was learnt beforehand. */
  readonly total: number | undefined
  readonly elapsedMs: number
}

/** One line: `pull [#######.........]  42%  2.1 MB / 5.0 MB  1.3 MB/s`; without a total, no bar. */
export const render = (state: State, width = 24): string => {
  const rate = state.elapsedMs > 0 ? `  ${formatBytes(Math.round(state.done / (state.elapsedMs / 1000)))}/s` : ""
  if (state.total === undefined || state.total <= 0) {
    return `${state.label}  ${formatBytes(state.done)}${rate}`
  }
  const total = Math.max(state.total, state.done)
  const ratio = total === 0 ? 1 : state.done / total
  const filled = Math.round(ratio * width)
  const percent = `${Math.floor(ratio * 100)}%`.padStart(4)
  return `${state.label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${percent}  ${formatBytes(state.done)} / ${
    formatBytes(total)
  }${rate}`
}

export interface Progress {
  /** Starts (or restarts) the line for a transfer of about `total` bytes (undefined: unknown). */
  readonly begin: (label: string, total: number | undefined) => Effect.Effect<void>
  readonly advance: (bytes: number) => Effect.Effect<void>
  /** Ends the line (leaves the final state visible, followed by a newline) if one was shown. */
  readonly end: Effect.Effect<void>
  /** Whether anything was drawn (for tests with `always`). */
  readonly shown: () => boolean
}

interface Terminal {
  readonly isTTY: boolean
  readonly write: (text: string) => void
}

const stderrTerminal: Terminal = {
  isTTY: process.stderr.isTTY === true,
  write: (text) => void process.stderr.write(text)
}

/** A progress line on `terminal` (stderr by default) following `mode`. */
export const make = (mode: Mode, terminal: Terminal = stderrTerminal): Progress => {
  const enabled = mode === "always" || (mode === "auto" && terminal.isTTY)
  let label = ""
  let total: number | undefined
  let done = 0
  let started = 0
  let lastDraw = 0
  let visible = false
  let drewAny = false

  const worthShowing = () =>
    mode === "always" || label.startsWith("bootstrap") ||
    (total !== undefined ? total >= AUTO_THRESHOLD_BYTES : done >= AUTO_THRESHOLD_BYTES)

  const draw = (force: boolean) => {
    if (!enabled || !worthShowing()) return
    const now = Date.now()
    if (!force && now - lastDraw < 100) return
    lastDraw = now
    const line = render({ label, done, total, elapsedMs: now - started })
    // On a terminal, redraw in place; elsewhere (`always` into a pipe), one line per update.
    terminal.write(terminal.isTTY ? `\r\u001b[K${line}` : `${line}\n`)
    visible = terminal.isTTY
    drewAny = true
  }

  return {
    begin: (newLabel, newTotal) =>
      Effect.sync(() => {
        if (visible) terminal.write("\n")
        visible = false
        label = newLabel
        total = newTotal
        done = 0
        started = Date.now()
        lastDraw = 0
        draw(true)
      }),
    advance: (bytes) =>
      Effect.sync(() => {
        if (started === 0) started = Date.now()
        done += bytes
        draw(false)
      }),
    end: Effect.sync(() => {
      if (label !== "") draw(true)
      if (visible) terminal.write("\n")
      visible = false
      label = ""
    }),
    shown: () => drewAny
  }
}

/** Probe start frame: beyond any real generation, so the answer is `CheckpointNeeded` with the head. */
const PROBE_FRAME = 2 ** 31 - 2

/**
 * The remote's current generation and its last frame, learnt with one pull past the end (the protocol
 * answers `checkpoint_needed` with both).
 */
export const remoteHead = (remote: SyncRemote.Service, generation: number) =>
  Effect.map(remote.pull(generation, PROBE_FRAME, PROBE_FRAME + 1), (result) =>
    result._tag === "CheckpointNeeded"
      ? { generation: result.generation, maxFrameNo: result.maxFrameNo }
      : { generation, maxFrameNo: PROBE_FRAME })

/** `remote`, reporting the bytes of every base file and frame batch it receives to `progress`. */
export const observe = (remote: SyncRemote.Service, progress: Progress): SyncRemote.Service => ({
  ...remote,
  export: (generation) =>
    Effect.zipRight(
      progress.begin(`bootstrap (base of generation ${generation})`, undefined),
      Effect.tap(remote.export(generation), (base) => Effect.zipRight(progress.advance(base.byteLength), progress.end))
    ),
  // A new database opens at the remote's head by default: one snapshot, reported once it is known.
  snapshot: Effect.tap(remote.snapshot, (snapshot) =>
    Effect.zipRight(
      progress.begin(`bootstrap (head of generation ${snapshot.generation}, frame ${snapshot.frameNo})`, undefined),
      Effect.zipRight(progress.advance(snapshot.bytes.byteLength), progress.end)
    )),
  pull: (generation, start, end) =>
    Effect.tap(remote.pull(generation, start, end), (result) =>
      result._tag === "Frames" ? progress.advance(result.frames.length * WalFrame.FRAME_SIZE) : Effect.void)
})
