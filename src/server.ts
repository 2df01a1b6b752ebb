/**
 * The sync server and its store, to run or embed in a host app.
 *
 * @since 0.1.0
 */
/**
 * @since 0.1.0
 */
export * as Cli from "./Cli.js"

/**
 * @since 0.1.0
 */
export * as ServerStore from "./ServerStore.js"

/**
 * @since 0.1.0
 */
export * as SyncServer from "./SyncServer.js"
