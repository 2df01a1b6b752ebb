/**
 * The local conflict log: `<path>-conflicts`, a JSON array of the last {@link LIMIT} conflicts decided by
 * acknowledged pushes. It is a file of its own because Draft is replaced by a copy of Synced at every pull
 * (a table there would vanish, a table in Synced would replicate) and the metadata file is rewritten at
 * every step. Written like the metadata: temp file, fsync, rename.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import type * as ChangeReplay from "../../ChangeReplay.js"
import * as ConflictPolicy from "../../ConflictPolicy.js"
import * as SyncError from "../../SyncError.js"
import * as Files from "../sqlite/files.js"

/** Entries kept (oldest dropped first). */
export const LIMIT = 1000

/** The log entries of one replay's result (time filled in when its push is acknowledged). */
export const entries = (result: ChangeReplay.ApplyResult): ReadonlyArray<ConflictPolicy.Entry> => {
  const dropped = new Set(result.dropped ?? [])
  return result.conflicts.map((conflict) => {
    const change = conflict.change
    const own = conflict.resolution?._tag
    const decision: ConflictPolicy.Entry["decision"] = own !== undefined && !(dropped.has(change.id) && own !== "KeepRemote" && own !== "Skip" && own !== "Fail")
      ? own
      : dropped.has(change.id)
      ? "TransactionDropped"
      : "KeepLocal"
    return {
      at: 0,
      kind: conflict.kind,
      table: change.table,
      key: keyOf(conflict),
      changeId: change.id,
      txId: change.txId,
      localBefore: change.before,
      localAfter: change.after,
      remote: conflict.current,
      decision,
      ...(conflict.statement !== undefined ? { statement: conflict.statement } : {}),
      ...(conflict.message !== undefined ? { message: conflict.message } : {})
    }
  })
}

const keyOf = (conflict: ChangeReplay.Conflict): ReadonlyArray<readonly [string, string]> => {
  if (conflict.key !== undefined) return conflict.key
  const d = conflict.decision
  if (d._tag === "Upsert" || d._tag === "Update" || d._tag === "Delete") return d.key
  return []
}

export const make = (path: string) => {
  const read: Effect.Effect<ReadonlyArray<ConflictPolicy.Entry>, SyncError.StorageError> = Effect.try({
    try: () => {
      if (!Fs.existsSync(path)) return []
      const parsed = JSON.parse(Fs.readFileSync(path, "utf8")) as unknown
      return Array.isArray(parsed) ? (parsed as Array<ConflictPolicy.Entry>) : []
    },
    catch: (cause) =>
      new SyncError.StorageError({ reason: "Files", message: `cannot read the conflict log ${path}`, cause })
  })
  const append = (added: ReadonlyArray<ConflictPolicy.Entry>) =>
    Effect.gen(function*() {
      const all = [...(yield* read), ...added].slice(-LIMIT)
      const temp = `${path}.tmp`
      yield* Files.writeNew(temp, new TextEncoder().encode(JSON.stringify(all)))
      yield* Files.rename(temp, path)
    })
  return { read, append }
}
