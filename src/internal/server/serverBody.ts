/**
 * Bodies the store serves (bases and snapshots), read as they are consumed: a reader that stops reading
 * holds one chunk, not the file.
 */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import type { Body } from "../../ServerStore.js"
import { StoreError } from "./storeError.js"

/**
 * Bytes per chunk read from disk: big enough for throughput (each chunk is one read on the thread pool
 * and one trip through the response stream: at 64 KiB those made most of a snapshot answer's CPU time),
 * small enough that slow readers cost little.
 */
export const CHUNK_BYTES = 512 * 1024

/** The bytes of bodies made by `ofBytes`, so that an answer can send them in one write. */
const inMemory = new WeakMap<Body, Uint8Array>()

/** A body over bytes already in memory (the memory store): chunks are views, never copies. */
export const ofBytes = (bytes: Uint8Array): Body => {
  const body: Body = {
    size: bytes.byteLength,
    stream: Stream.suspend(() => {
      const chunks: Array<Uint8Array> = []
      for (let at = 0; at < bytes.byteLength; at += CHUNK_BYTES) {
        chunks.push(bytes.subarray(at, Math.min(at + CHUNK_BYTES, bytes.byteLength)))
      }
      return Stream.fromIterable(chunks)
    })
  }
  inMemory.set(body, bytes)
  return body
}

/**
 * The whole of a body already in memory (made by `ofBytes`), undefined for one read as it is consumed:
 * an answer sends those in one write, without the trips of a stream (most of a cached snapshot's time).
 */
export const bytesOf = (body: Body): Uint8Array | undefined => inMemory.get(body)

const readAt = (fd: number, position: number, length: number): Effect.Effect<Uint8Array, StoreError> =>
  Effect.async<Uint8Array, StoreError>((resume) => {
    const buffer = Buffer.allocUnsafe(length)
    fs.read(fd, buffer, 0, length, position, (error, read) => {
      if (error !== null) {
        resume(Effect.fail(new StoreError({ reason: "Storage", message: "reading a stored file failed", cause: error })))
      } else if (read !== length) {
        resume(Effect.fail(new StoreError({ reason: "Storage", message: `a stored file ended ${length - read} bytes early` })))
      } else {
        resume(Effect.succeed(new Uint8Array(buffer.buffer, buffer.byteOffset, read)))
      }
    })
  })

/**
 * A body over a file, opened now and closed with the scope: the open descriptor keeps the bytes readable
 * even if the file is deleted or replaced meanwhile (POSIX), so what the body reads is fixed at opening.
 * Chunks are read (off the event loop) only as the consumer pulls them. `prepare` runs just before the
 * open, in the same synchronous step (say, to create the file), and `onError` maps what either throws.
 */
export const ofFile = (
  file: string,
  onError: (cause: unknown) => StoreError,
  prepare?: () => void
): Effect.Effect<Body, StoreError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        prepare?.()
        const fd = fs.openSync(file, "r")
        try {
          return { fd, size: fs.fstatSync(fd).size }
        } catch (error) {
          fs.closeSync(fd)
          throw error
        }
      },
      catch: onError
    }),
    ({ fd }) => Effect.sync(() => fs.closeSync(fd))
  ).pipe(
    Effect.map(({ fd, size }): Body => ({
      size,
      stream: Stream.paginateChunkEffect(0, (position) =>
        position >= size
          ? Effect.succeed([Chunk.empty<Uint8Array>(), Option.none<number>()] as const)
          : Effect.map(readAt(fd, position, Math.min(CHUNK_BYTES, size - position)), (chunk) => {
            const next = position + chunk.byteLength
            return [Chunk.of(chunk), next < size ? Option.some(next) : Option.none<number>()] as const
          }))
    }))
  )

/** Reads a whole body into memory (the in-process remote and tests). */
export const readAll = (body: Body): Effect.Effect<Uint8Array, StoreError> =>
  Stream.runFold(body.stream, { parts: [] as Array<Uint8Array>, size: 0 }, (acc, chunk) => {
    acc.parts.push(chunk)
    acc.size += chunk.byteLength
    return acc
  }).pipe(
    Effect.flatMap(({ parts, size }) => {
      if (size === body.size) {
        if (parts.length === 1) return Effect.succeed(parts[0])
        const joined = Buffer.concat(parts, size)
        return Effect.succeed(new Uint8Array(joined.buffer, joined.byteOffset, joined.byteLength))
      }
      return Effect.fail(new StoreError({ reason: "Storage", message: `a stored file of ${body.size} bytes read as ${size}` }))
    })
  )
