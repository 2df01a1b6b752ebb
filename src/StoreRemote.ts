/**
 * A `SyncRemote` that is a `ServerStore` in the same process: the same batching, batons and error mapping
 * as over HTTP, without the network. For tests of code built on the client, and for a host that runs a
 * replica next to its own server.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import { ServerStore, type StoreError } from "./ServerStore.js"
import type * as SyncError from "./SyncError.js"
import * as SyncProtocol from "./SyncProtocol.js"
import * as SyncRemote from "./SyncRemote.js"
import * as waitingPull from "./internal/server/waitingPull.js"

const fromStoreError = (error: StoreError): SyncError.RemoteFailure =>
  SyncRemote.failureOf(SyncProtocol.errorStatus[error.reason].status, error.message, error)

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * The longest a pull at the head waits for the next commit when asked to (`SyncRemote.PullOptions`),
   * in seconds; 0 makes pulls answer at once. Default `SyncProtocol.DEFAULT_MAX_WAIT_SECONDS`.
   */
  readonly maxWaitSeconds?: number | undefined
}

/**
 * The remote of database `database` in `store`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (store: ServerStore["Type"], database: string, options: Options = {}): SyncRemote.Service => {
  const maxWaitSeconds = options.maxWaitSeconds ?? SyncProtocol.DEFAULT_MAX_WAIT_SECONDS
  return {
  info: Effect.mapError(
    Effect.zipWith(store.info(database), store.databaseId(database), (i, databaseId): SyncRemote.Info => ({
      generation: i.generation,
      databaseId,
      maxFrameNo: i.maxFrameNo,
      maxPullFrames: store.maxPullFrames,
      maxPushFrames: SyncProtocol.MAX_FRAMES_PER_REQUEST,
      snapshot: true,
      pushIdentity: true,
      ...(maxWaitSeconds > 0 ? { maxWaitSeconds, waitAfter: true } : {})
    })),
    fromStoreError
  ),
  export: (generation) => Effect.mapError(store.exportGeneration(database, generation), fromStoreError),
  // Named like the HTTP answer does (its identity header, read before the snapshot).
  snapshot: Effect.zip(store.databaseId(database), store.snapshot(database)).pipe(
    Effect.flatMap(([databaseId, s]) =>
      Effect.map(
        Stream.runFold(s.body.stream, [] as Array<Uint8Array>, (parts, chunk) => {
          parts.push(chunk)
          return parts
        }),
        (parts): SyncRemote.RemoteSnapshot => {
          const named = { generation: s.generation, frameNo: s.frameNo, ...(databaseId === undefined ? {} : { databaseId }) }
          if (parts.length === 1) return { ...named, bytes: parts[0] }
          const joined = Buffer.concat(parts)
          return { ...named, bytes: new Uint8Array(joined.buffer, joined.byteOffset, joined.byteLength) }
        }
      )
    ),
    Effect.scoped,
    Effect.mapError(fromStoreError)
  ),
  // Named like the HTTP answer is (its identity header, read before the pull).
  pull: (generation, start, end, pullOptions) =>
    Effect.mapError(
      Effect.zipWith(store.databaseId(database), waitingPull.pull(
        store,
        database,
        generation,
        start,
        end,
        SyncRemote.waitToAsk(pullOptions?.waitSeconds, maxWaitSeconds > 0 ? maxWaitSeconds : undefined) * 1000,
        undefined,
        pullOptions?.after
      ), (databaseId, result): SyncRemote.PullResult => databaseId === undefined ? result : { ...result, databaseId }),
      fromStoreError
    ),
  // As many frames a request as the store takes (what the HTTP server advertises as `max_push_frames`).
  push: SyncRemote.batchedPush(
    (generation, start, end, frames, baton, pushOptions) =>
      Effect.mapError(store.push(database, generation, start, end, frames, baton, pushOptions), fromStoreError),
    SyncProtocol.MAX_FRAMES_PER_REQUEST
  )
  }
}

/**
 * `SyncRemote` for database `database` of the `ServerStore` in context.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options & { readonly database: string }): Layer.Layer<SyncRemote.SyncRemote, never, ServerStore> =>
  Layer.effect(SyncRemote.SyncRemote, Effect.map(ServerStore, (store) => make(store, options.database, options)))
