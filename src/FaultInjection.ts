/**
 * Fault injection for tests of code built on the client: a `SyncFiles` service and a `SyncRemote` wrapper
 * that count the operations they see (one counter for both) and fail the k-th one.
 *
 * Files: open, close, write, fsync, truncate (by path or descriptor), rename, remove and copy are fault
 * points; reads and stats are not. A file fault either fails before the operation (`"before"`: nothing
 * happened) or after it (`"after"`: it happened, and the caller still sees an error, like an `EIO` from
 * the fsync of a directory after a rename).
 *
 * Remote: `info`, `export`, `pull` and `push` are fault points. `"dropRequest"` fails before the remote
 * sees the call, `"dropAnswer"` after it answered (a push is then applied but unacknowledged), and
 * `"cutBody"` delivers part of the answer: half of a pull's frames (a body ending at a frame boundary, maybe
 * inside a transaction), half of an export's pages, and a `Protocol` failure for the JSON answers of
 * `info` and `push` (which, cut, do not parse).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as SyncError from "./SyncError.js"
import * as SyncFiles from "./SyncFiles.js"
import * as SyncRemote from "./SyncRemote.js"
import * as WalFrame from "./WalFrame.js"

/**
 * @since 0.1.0
 * @category models
 */
export type FileFault = "before" | "after"

/**
 * @since 0.1.0
 * @category models
 */
export type RemoteFault = "dropRequest" | "dropAnswer" | "cutBody"

/**
 * @since 0.1.0
 * @category models
 */
export type Fault = FileFault | RemoteFault

/**
 * The shared counter. `arm(k, fault)` makes the k-th operation counted from now fail (1-based);
 * `disarm()` only counts. `operations` lists what was counted since the last `arm`/`disarm`, e.g.
 * `"fsync"`, `"rename"`, `"remote.push"`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Plan {
  readonly operations: ReadonlyArray<string>
  /** The operation that was failed, if the armed one was reached. */
  readonly fired: { readonly at: number; readonly operation: string; readonly fault: Fault } | undefined
  readonly arm: (at: number, fault: Fault) => void
  readonly disarm: () => void
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const makePlan = (): Plan & { readonly tick: (operation: string) => Fault | undefined } => {
  let operations: Array<string> = []
  let armed: { at: number; fault: Fault } | undefined
  let fired: Plan["fired"]
  return {
    get operations() {
      return operations
    },
    get fired() {
      return fired
    },
    arm: (at, fault) => {
      operations = []
      armed = { at, fault }
      fired = undefined
    },
    disarm: () => {
      operations = []
      armed = undefined
    },
    tick: (operation) => {
      operations.push(operation)
      if (armed !== undefined && operations.length === armed.at) {
        fired = { at: armed.at, operation, fault: armed.fault }
        return armed.fault
      }
      return undefined
    }
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export type CountingPlan = ReturnType<typeof makePlan>

/**
 * The error a failed file operation throws (as node:fs would, with an errno code).
 *
 * @since 0.1.0
 * @category errors
 */
export class InjectedFault extends Error {
  readonly code = "EIO"
  constructor(readonly operation: string, readonly fault: Fault) {
    super(`injected fault: ${operation} (${fault})`)
  }
}

const isFileFault = (fault: Fault): fault is FileFault => fault === "before" || fault === "after"

/**
 * `inner` (node:fs by default) with every mutating operation and every open/close counted by `plan`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const files = (plan: CountingPlan, inner: SyncFiles.Service = SyncFiles.node): SyncFiles.Service => {
  const point = <A>(operation: string, run: () => A, undo?: (a: A) => void): A => {
    const fault = plan.tick(operation)
    if (fault === undefined || !isFileFault(fault)) return run()
    if (fault === "before") throw new InjectedFault(operation, fault)
    const a = run()
    undo?.(a)
    throw new InjectedFault(operation, fault)
  }
  return {
    ...inner,
    // An open that "failed after" must not leak its descriptor.
    openSync: (path, flags) => point("open", () => inner.openSync(path, flags), (fd) => inner.closeSync(fd)),
    // A close that fails still releases the descriptor (as close(2) does on EIO).
    closeSync: (fd) => {
      const fault = plan.tick("close")
      inner.closeSync(fd)
      if (fault !== undefined && isFileFault(fault)) throw new InjectedFault("close", fault)
    },
    writeSync: (fd, bytes, offset, length, position) =>
      point("write", () => inner.writeSync(fd, bytes, offset, length, position)),
    fsyncSync: (fd) => point("fsync", () => inner.fsyncSync(fd)),
    // One counted point per descriptor, in order, as `fsyncSync` would be.
    fsyncAll: (fds) =>
      new Promise<void>((resolve) => {
        for (const fd of fds) point("fsync", () => inner.fsyncSync(fd))
        resolve()
      }),
    ftruncateSync: (fd, length) => point("truncate", () => inner.ftruncateSync(fd, length)),
    truncateSync: (path, length) => point("truncate", () => inner.truncateSync(path, length)),
    renameSync: (from, to) => point("rename", () => inner.renameSync(from, to)),
    removeSync: (path) => point("remove", () => inner.removeSync(path)),
    copyFileSync: (from, to) => point("copy", () => inner.copyFileSync(from, to))
  }
}

/**
 * @since 0.1.0
 * @category layers
 */
export const layerFiles = (plan: CountingPlan): Layer.Layer<SyncFiles.SyncFiles> =>
  Layer.succeed(SyncFiles.SyncFiles, files(plan))

// Half the pages (what a transport that checks for whole pages lets through), or half the bytes of one.
const cutBase = (length: number) =>
  length >= 2 * WalFrame.PAGE_SIZE ? Math.floor(length / WalFrame.PAGE_SIZE / 2) * WalFrame.PAGE_SIZE : Math.floor(length / 2)

const dropped = (operation: string) =>
  new SyncError.NetworkError({ reason: "Transport", message: `injected fault: ${operation} request dropped` })
const lost = (operation: string) =>
  new SyncError.NetworkError({ reason: "Transport", message: `injected fault: ${operation} answer lost` })
const cut = (operation: string) =>
  new SyncError.RemoteError({ reason: "Protocol", message: `injected fault: ${operation} answer cut short` })

/**
 * `inner` with each call counted by `plan` and failed as the plan says.
 *
 * @since 0.1.0
 * @category constructors
 */
export const remote = (plan: CountingPlan, inner: SyncRemote.Service): SyncRemote.Service => {
  const point = <A, E, R>(
    operation: string,
    call: Effect.Effect<A, E, R>,
    cutShort: (a: A) => Effect.Effect<A, SyncError.RemoteFailure>
  ): Effect.Effect<A, E | SyncError.RemoteFailure, R> =>
    Effect.suspend(() => {
      const fault = plan.tick(operation)
      switch (fault) {
        case "dropRequest":
          return Effect.fail(dropped(operation))
        case "dropAnswer":
          return Effect.flatMap(call, () => Effect.fail(lost(operation)))
        case "cutBody":
          return Effect.flatMap(call, cutShort)
        default:
          return call
      }
    })
  return {
    url: inner.url,
    info: point("remote.info", inner.info, () => Effect.fail(cut("info"))),
    export: (generation) =>
      point("remote.export", inner.export(generation), (bytes) => Effect.succeed(bytes.subarray(0, cutBase(bytes.byteLength)))),
    snapshot: point(
      "remote.snapshot",
      inner.snapshot,
      (snapshot) => Effect.succeed({ ...snapshot, bytes: snapshot.bytes.subarray(0, cutBase(snapshot.bytes.byteLength)) })
    ),
    pull: (generation, start, end, options) =>
      point("remote.pull", inner.pull(generation, start, end, options), (result) =>
        result._tag === "Frames" && result.frames.length > 1
          ? Effect.succeed({ ...result, frames: result.frames.slice(0, Math.floor(result.frames.length / 2)) })
          : Effect.fail(cut("pull"))),
    push: (generation, start, end, frames, baton, options) =>
      point("remote.push", inner.push(generation, start, end, frames, baton, options), () => Effect.fail(cut("push")))
  }
}

/**
 * Wraps the `SyncRemote` below it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRemote = (plan: CountingPlan): Layer.Layer<SyncRemote.SyncRemote, never, SyncRemote.SyncRemote> =>
  Layer.effect(SyncRemote.SyncRemote, Effect.map(SyncRemote.SyncRemote, (inner) => remote(plan, inner)))
