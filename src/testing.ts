/**
 * Layers for tests of apps that use the client: fault injection, and the in-process store remote
 * (`SyncRemote.layerStore` over `ServerStore.layerMemory`).
 *
 * @since 0.1.0
 */
/**
 * @since 0.1.0
 */
export * as FaultInjection from "./FaultInjection.js"

/**
 * @since 0.1.0
 */
export * as ServerStore from "./ServerStore.js"

/**
 * @since 0.1.0
 */
export * as SyncRemote from "./SyncRemote.js"
