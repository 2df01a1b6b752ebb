/** Bundles the CLI into dist/bin.mjs. */
export declare const build: () => Promise<unknown>
