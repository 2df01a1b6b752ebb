// Tests spawn the CLI many times: build its bundle once so each start is cheap and runs the current sources.
import { build } from "../scripts/build-bin.mjs"

export default async function setup() {
  await build()
}
