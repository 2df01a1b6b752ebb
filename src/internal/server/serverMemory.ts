/**
 * The in-memory backend: generations as arrays of frames, and the current head materialised in a
 * buffer so a commit can be checked by handing the candidate image to SQLite.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { StoreError } from "./storeError.js"
import * as WalFrame from "../../WalFrame.js"
import type { Backend, DatabaseBackend } from "./serverCore.js"
import type { IntegrityCheck } from "./sqliteImage.js"
import { checkImage } from "./sqliteImage.js"

interface Generation {
  base: Uint8Array | undefined
  frames: Array<WalFrame.Frame>
}

const gone = (generation: number) =>
  new StoreError({ reason: "GenerationGone", message: `generation ${generation} is no longer kept` })

export const make = (options: { readonly integrityCheck: IntegrityCheck }): Backend => ({
  open: (_name, emptyBase) =>
    Effect.sync((): DatabaseBackend => {
      const generations = new Map<number, Generation>([[1, { base: emptyBase, frames: [] }]])
      let current = 1
      let head = emptyBase
      return {
        generations: [{ generation: 1, lastFrame: 0, dropped: false }],
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
                const candidate = WalFrame.applyFrames(head, frames)
                const problem = checkImage(candidate, options.integrityCheck, { owned: true })
                if (problem !== undefined) return Either.left(problem)
                head = candidate
              }
              gen.frames.push(...frames)
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
          }),
        dropThrough: (generation) =>
          Effect.sync(() => {
            for (const [g, gen] of generations) {
              if (g <= generation) {
                gen.base = undefined
                gen.frames = []
              }
            }
          }),
        close: Effect.void
      }
    })
})
