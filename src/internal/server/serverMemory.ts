/**
 * The in-memory backend: generations as arrays of frames, and the current head materialised in a
 * buffer so a commit can be checked by handing the candidate image to SQLite.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as crypto from "node:crypto"
import { StoreError } from "./storeError.js"
import * as WalFrame from "../../WalFrame.js"
import type { Backend, DatabaseBackend } from "./serverCore.js"
import type { IntegrityCheck } from "./sqliteImage.js"
import * as ChangedTables from "./changedTables.js"
import * as serverMetrics from "./serverMetrics.js"
import { checkImage, planOnImage } from "./sqliteImage.js"

interface Generation {
  base: Uint8Array | undefined
  frames: Array<WalFrame.Frame>
  /** Set when the generation is dropped: its frame count, kept after its frames are gone. */
  droppedLast?: number
}

type Stored = Omit<DatabaseBackend, "generations"> & {
  readonly generationsNow: () => DatabaseBackend["generations"]
}

const gone = (generation: number) =>
  new StoreError({ reason: "GenerationGone", message: `generation ${generation} is no longer kept` })

/**
 * Databases live as long as the backend: a database closed for being idle is found again when it is
 * next opened.
 */
export const make = (options: { readonly integrityCheck: IntegrityCheck }): Backend => {
  const databases = new Map<string, Stored>()
  const open = (emptyBase: Uint8Array): Stored => {
      const generations = new Map<number, Generation>([[1, { base: emptyBase, frames: [] }]])
      let current = 1
      let head = emptyBase
      // sqlite_schema of `head`, read again after a commit that changes it.
      let schema: ReadonlyArray<ChangedTables.SchemaEntry> | undefined
      const planFor = (frames: ReadonlyArray<WalFrame.Frame>): ChangedTables.CheckPlan => {
        const next = planOnImage(options.integrityCheck, head, schema, frames)
        schema = next.schema
        return next.plan
      }
      return {
        id: crypto.randomUUID(),
        readOnly: false,
        // Nothing here outlives the process, and the core keeps the acks of this process itself.
        ackedPending: [],
        recordAck: () => Effect.void,
        readBase: (generation) =>
          Effect.suspend(() => {
            const base = generations.get(generation)?.base
            return base === undefined ? Effect.fail(gone(generation)) : Effect.succeed(base)
          }),
        readFrames: (generation, start, end) =>
          Effect.sync(() => generations.get(generation)?.frames.slice(start - 1, end - 1) ?? []),
        commit: (generation, firstFrameNo, frames) =>
          Effect.try({
            try: () => {
              const gen = generations.get(generation)
              if (generation !== current || gen === undefined || gen.frames.length + 1 !== firstFrameNo) {
                throw new Error(`commit of ${generation}/${firstFrameNo} does not continue the head`)
              }
              // Without a check the head image is not needed: skip its copy.
              if (options.integrityCheck !== "off") {
                const plan = planFor(frames)
                const candidate = WalFrame.applyFrames(head, frames)
                const started = performance.now()
                const problem = checkImage(candidate, plan, { owned: true })
                serverMetrics.checkSeconds.unsafeUpdate((performance.now() - started) / 1e3, [])
                if (problem !== undefined) return Either.left(problem)
                head = candidate
              }
              // (the frames may be views into a request's body: the store keeps copies)
              for (const frame of frames) gen.frames.push({ ...frame, page: frame.page.slice() })
              return Either.right(undefined)
            },
            catch: (cause) => new StoreError({ reason: "Storage", message: "commit failed", cause })
          }),
        materialize: (generation) =>
          Effect.suspend(() => {
            const gen = generations.get(generation)
            return gen?.base === undefined
              ? Effect.fail(gone(generation))
              : Effect.succeed(WalFrame.applyFrames(gen.base, gen.frames))
          }),
        roll: (generation, base) =>
          Effect.sync(() => {
            generations.set(generation, { base, frames: [] })
            current = generation
            head = base
            schema = undefined
          }),
        dropThrough: (generation) =>
          Effect.sync(() => {
            for (const [g, gen] of generations) {
              if (g <= generation && gen.base !== undefined) {
                gen.droppedLast = gen.frames.length
                gen.base = undefined
                gen.frames = []
              }
            }
          }),
        close: Effect.void,
        generationsNow: () => Array.from(generations, ([generation, gen]) => ({
          generation,
          lastFrame: gen.droppedLast ?? gen.frames.length,
          dropped: gen.base === undefined
        }))
      }
  }
  return {
    readOnly: false,
    list: Effect.sync(() => Array.from(databases.keys())),
    open: (name, emptyBase) =>
      Effect.sync((): DatabaseBackend => {
        let db = databases.get(name)
        if (db === undefined) {
          db = open(emptyBase)
          databases.set(name, db)
        }
        return { ...db, generations: db.generationsNow() }
      })
  }
}
