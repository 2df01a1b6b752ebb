/**
 * Head snapshots kept in memory once materialized: every replica that bootstraps asks for the same one
 * (the head changes only with a commit), and serving it from memory spares the store a materialization
 * (backends without snapshot files) or a file's open and reads per answer. Small snapshots only, least
 * recently used dropped first, within a total bound; bigger ones stream from the store as before.
 *
 * A snapshot is named by its database's name and identity (a database wiped and created again under the
 * same name is another one), its generation and its frame: the pages at or below a committed frame never
 * change, so an entry never goes stale, it only stops being asked for.
 *
 * @internal
 */

/** @internal */
export interface SnapshotCache {
  readonly get: (key: string) => Uint8Array | undefined
  /** Keeps `bytes` if they fit: at most `maxEntryBytes`, older entries dropped to stay within `maxBytes`. */
  readonly set: (key: string, bytes: Uint8Array) => void
  /** Whether a snapshot of `size` bytes would be kept (the caller reads it into memory only then). */
  readonly fits: (size: number) => boolean
  readonly bytes: () => number
}

/** Bytes of snapshots kept in memory at most, all databases together. @internal */
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024
/** The largest snapshot kept in memory. @internal */
export const DEFAULT_MAX_ENTRY_BYTES = 8 * 1024 * 1024

/** @internal */
export const keyOf = (database: string, databaseId: string, generation: number, frameNo: number) =>
  `${database}\u0000${databaseId}\u0000${generation}\u0000${frameNo}`

/** @internal */
export const make = (options: { readonly maxBytes?: number; readonly maxEntryBytes?: number } = {}): SnapshotCache => {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES
  const maxEntryBytes = Math.min(options.maxEntryBytes ?? DEFAULT_MAX_ENTRY_BYTES, maxBytes)
  // Least recently used first: a hit moves its entry to the end.
  const entries = new Map<string, Uint8Array>()
  let total = 0
  const fits = (size: number) => size <= maxEntryBytes
  return {
    get: (key) => {
      const bytes = entries.get(key)
      if (bytes !== undefined) {
        entries.delete(key)
        entries.set(key, bytes)
      }
      return bytes
    },
    set: (key, bytes) => {
      if (!fits(bytes.byteLength)) return
      const previous = entries.get(key)
      if (previous !== undefined) {
        entries.delete(key)
        total -= previous.byteLength
      }
      entries.set(key, bytes)
      total += bytes.byteLength
      for (const [oldest, old] of entries) {
        if (total <= maxBytes) break
        entries.delete(oldest)
        total -= old.byteLength
      }
    },
    fits,
    bytes: () => total
  }
}
