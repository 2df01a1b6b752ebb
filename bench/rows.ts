/**
 * The benches' table and rows: one definition, so every figure of `npm run bench` measures the same rows.
 */
export const CREATE = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, value REAL, payload TEXT)"
export const INSERT = "INSERT INTO items (id, name, value, payload) VALUES (?, ?, ?, ?)"
/** Row `i`: about 130 bytes. */
export const row = (i: number) => [i, `name-${i}`, i * 0.5, String(i).padStart(100, "x")] as const
/** Rows 1..n written by one statement (one captured transaction), the same values as `row`. */
export const bulkInsert = (n: number) =>
  `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${n}) ` +
  "INSERT INTO items SELECT i, 'name-' || i, i * 0.5, substr(replace(hex(zeroblob(100)), '0', 'x'), 1, 100 - length(i)) || i FROM n"
