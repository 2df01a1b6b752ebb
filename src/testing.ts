/**
 * For tests of code built on the client: a remote in the same process (`StoreRemote` over
 * `ServerStore.layerMemory()`), and `FaultInjection` to fail the k-th file or remote operation.
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
export * as StoreRemote from "./StoreRemote.js"
