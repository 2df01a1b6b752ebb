import type * as ChangeReplay from "../../src/ChangeReplay.js"

/** A table `t (a PRIMARY KEY, b, c)` as replay sees it, for the pure planning tests. */
export const tableABC: ChangeReplay.TableInfo = {
  name: "t",
  columns: ["a", "b", "c"],
  primaryKey: ["a"],
  withoutRowid: false,
  rowidAlias: "_rowid_",
  uniqueIndexes: [],
  allColumns: ["a", "b", "c"]
}
