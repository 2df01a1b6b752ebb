/**
 * The sync server: `SyncServer` (the HTTP routes, and a Node listener) over a `ServerStore` (on disk or
 * in memory). `StoreRemote` is a client remote served by a store in the same process. The protocol
 * modules (`SyncProtocol`, `WalFrame`) are the client's and are exported there.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 */
export * as ServerStore from "./ServerStore.js"

/**
 * @since 0.1.0
 */
export * as StoreRemote from "./StoreRemote.js"

/**
 * @since 0.1.0
 */
export * as SyncServer from "./SyncServer.js"
