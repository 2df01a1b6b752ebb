/**
 * The client: a local SQLite database kept in two-way sync with a remote. The server is in
 * `effect-sqlite-sync/server`, test layers in `effect-sqlite-sync/testing`; importing this entry loads
 * neither, nor the command line.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 */
export * as ChangeCapture from "./ChangeCapture.js"

/**
 * @since 0.1.0
 */
export * as ChangeReplay from "./ChangeReplay.js"

/**
 * @since 0.1.0
 */
export * as ConflictPolicy from "./ConflictPolicy.js"

/**
 * @since 0.1.0
 */
export * as LocalCopies from "./LocalCopies.js"

/**
 * @since 0.1.0
 */
export * as SyncDatabase from "./SyncDatabase.js"

/**
 * @since 0.1.0
 */
export * as SyncError from "./SyncError.js"

/**
 * @since 0.1.0
 */
export * as SyncEvents from "./SyncEvents.js"

/**
 * @since 0.1.0
 */
export * as SyncFiles from "./SyncFiles.js"

/**
 * @since 0.1.0
 */
export * as SyncMetadata from "./SyncMetadata.js"

/**
 * @since 0.1.0
 */
export * as SyncProtocol from "./SyncProtocol.js"

/**
 * @since 0.1.0
 */
export * as SyncRemote from "./SyncRemote.js"

/**
 * @since 0.1.0
 */
export * as WalFrame from "./WalFrame.js"
