/**
 * A `SyncRemote` that is a `ServerStore` in the same process: the same batching, batons and error mapping
 * as over HTTP, without the network. For tests of code built on the client, and for a host that runs a
 * replica next to its own server.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { ServerStore, type StoreError } from "./ServerStore.js"
import * as SyncError from "./SyncError.js"
import * as SyncRemote from "./SyncRemote.js"

const fromStoreError = (error: StoreError): SyncError.RemoteFailure => {
  switch (error.reason) {
    case "Busy":
    case "Storage":
      return new SyncError.NetworkError({ reason: "ServerUnavailable", message: error.message, cause: error })
    case "GenerationGone":
      return new SyncError.RemoteError({ reason: "GenerationGone", message: error.message, status: 410, cause: error })
    case "GenerationNotFound":
      return new SyncError.RemoteError({ reason: "NotFound", message: error.message, status: 404, cause: error })
    default:
      return new SyncError.RemoteError({ reason: "Refused", message: error.message, status: 400, cause: error })
  }
}

/**
 * The remote of database `database` in `store`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (store: ServerStore["Type"], database: string): SyncRemote.Service => ({
  info: Effect.mapBoth(store.info(database), { onFailure: fromStoreError, onSuccess: (i) => ({ generation: i.generation }) }),
  export: (generation) => Effect.mapError(store.exportGeneration(database, generation), fromStoreError),
  pull: (generation, start, end) => Effect.mapError(store.pull(database, generation, start, end), fromStoreError),
  push: SyncRemote.batchedPush((generation, start, end, frames, baton) =>
    Effect.mapError(store.push(database, generation, start, end, frames, baton), fromStoreError)
  )
})

/**
 * `SyncRemote` for database `database` of the `ServerStore` in context.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: { readonly database: string }): Layer.Layer<SyncRemote.SyncRemote, never, ServerStore> =>
  Layer.effect(SyncRemote.SyncRemote, Effect.map(ServerStore, (store) => make(store, options.database)))
