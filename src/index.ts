/**
 * @since 0.1.0
 */
export * as WalFrame from "./WalFrame.js"

/**
 * @since 0.1.0
 */
export * as SyncProtocol from "./SyncProtocol.js"
