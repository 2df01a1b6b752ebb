// Child process for the kill -9 test of the SQLite store: pushes the wire frames in a file, prints the
// answer as one JSON line, then waits to be killed (so nothing after the answer can help durability).
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as fs from "node:fs"
import * as ServerStore from "../../src/ServerStore.js"
import * as WalFrame from "../../src/WalFrame.js"

const [directory, database, framesFile] = process.argv.slice(2)
const frames = Either.getOrThrow(WalFrame.decodeWire(new Uint8Array(fs.readFileSync(framesFile))))

const program = Effect.gen(function*() {
  const store = yield* ServerStore.ServerStore
  const result = yield* store.push(database, 1, 1, frames.length + 1, frames)
  process.stdout.write(JSON.stringify(result) + "\n")
  yield* Effect.never
}).pipe(Effect.provide(ServerStore.layer({ directory })))

Effect.runPromise(program).catch((error) => {
  process.stderr.write(String(error) + "\n")
  process.exit(1)
})
