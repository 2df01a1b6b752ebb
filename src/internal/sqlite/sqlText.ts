/**
 * Small pure helpers for building SQL text: identifiers, string literals and the literals SQLite's quote()
 * produces. Replay inlines quote() literals into statement text so values never pass through JS numbers.
 */

/** `"name"` with embedded double quotes doubled: safe for any table or column name. */
export const ident = (name: string): string => `"${name.replaceAll(`"`, `""`)}"`

/** `'text'` with embedded single quotes doubled. */
export const stringLiteral = (text: string): string => `'${text.replaceAll(`'`, `''`)}'`

const integerLiteral = /^-?[0-9]+$/
// quote() writes REALs with "%!.15g" or "%!.20e" (always a dot; an exponent when large or small).
const realLiteral = /^-?[0-9]+\.[0-9]+(?:e[+-][0-9]+)?$/
const blobLiteral = /^X'(?:[0-9A-F]{2})*'$/

/**
 * Whether `text` is one literal as quote() writes it: NULL, an integer, a real, a string or a blob.
 * Anything else must never be spliced into SQL text.
 */
export const isLiteral = (text: string): boolean => {
  if (text === "NULL") return true
  if (text.length >= 2 && text.charCodeAt(0) === 39 && text.charCodeAt(text.length - 1) === 39) {
    return !text.slice(1, -1).replaceAll("''", "").includes("'")
  }
  return integerLiteral.test(text) || realLiteral.test(text) || blobLiteral.test(text)
}

/**
 * `a || b || c ...` as a balanced tree: a left-deep chain of thousands of operands would exceed SQLite's
 * expression depth limit (1000), and a function call would exceed its argument limit.
 */
export const concat = (parts: ReadonlyArray<string>): string => {
  if (parts.length === 0) return "''"
  if (parts.length === 1) return parts[0]!
  const middle = Math.floor(parts.length / 2)
  return `(${concat(parts.slice(0, middle))} || ${concat(parts.slice(middle))})`
}

/** Case-insensitive prefix test, as SQLite compares names case-insensitively. */
export const hasPrefix = (name: string, prefix: string): boolean =>
  name.slice(0, prefix.length).toLowerCase() === prefix

/** Tables that are never captured nor replayed as user data. */
export const isInternalTable = (name: string): boolean => hasPrefix(name, "_sync_") || hasPrefix(name, "sqlite_")

const DML = new Set(["SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "VALUES"])

/** The first keyword of a statement, after whitespace and comments (uppercase; "" when none). */
export const firstKeyword = (statement: string): string => {
  const match = /^[A-Za-z]+/.exec(stripLeadingComments(statement).slice(0, 16))
  return match === null ? "" : match[0].toUpperCase()
}

/**
 * Whether a statement can insert rows into a table: `INSERT`, `REPLACE`, or a `WITH` clause ahead of one.
 * `last_insert_rowid()` means something after these only; after any other statement it still holds the rowid
 * of an earlier insert on the connection, which may be one of the change log's own rows.
 */
export const mayInsert = (statement: string): boolean => {
  const keyword = firstKeyword(statement)
  return keyword === "INSERT" || keyword === "REPLACE" ||
    (keyword === "WITH" && /\b(INSERT|REPLACE)\b/i.test(statement))
}

/** The statement without its leading whitespace and comments. */
export const stripLeadingComments = (statement: string): string => {
  let i = 0
  for (;;) {
    while (i < statement.length && /\s/.test(statement[i]!)) i++
    if (statement.startsWith("--", i)) {
      const end = statement.indexOf("\n", i)
      if (end === -1) return ""
      i = end + 1
    } else if (statement.startsWith("/*", i)) {
      const end = statement.indexOf("*/", i + 2)
      if (end === -1) return ""
      i = end + 2
    } else break
  }
  return statement.slice(i)
}

/**
 * False only for statements that cannot change the schema of `main` (DML and queries: triggers cannot hold
 * DDL), so their schema-version check can be skipped. Anything else is checked.
 */
export const mayChangeSchema = (statement: string): boolean => !DML.has(firstKeyword(statement))

const isWordChar = (c: string) => /[A-Za-z0-9_$]/.test(c)

/**
 * At a quoted string or name (`'..'`, `".."`, `` `..` ``, `[..]`): the index just after it (doubled quotes
 * stay inside), or -1 when it never closes. Anywhere else: undefined.
 */
const skipQuoted = (text: string, i: number): number | undefined => {
  const c = text[i]
  if (c !== "'" && c !== `"` && c !== "`" && c !== "[") return undefined
  const close = c === "[" ? "]" : c
  let j = i + 1
  for (;;) {
    const k = text.indexOf(close, j)
    if (k === -1) return -1
    if (close !== "]" && text[k + 1] === close) {
      j = k + 2
      continue
    }
    return k + 1
  }
}

/** At a line or block comment: the index just after it, or -1 when it never ends. Anywhere else: undefined. */
const skipComment = (text: string, i: number): number | undefined => {
  if (text[i] === "-" && text[i + 1] === "-") {
    const k = text.indexOf("\n", i)
    return k === -1 ? -1 : k + 1
  }
  if (text[i] === "/" && text[i + 1] === "*") {
    const k = text.indexOf("*/", i + 2)
    return k === -1 ? -1 : k + 2
  }
  return undefined
}

/**
 * Splits SQL text into statements at top-level semicolons: semicolons inside string literals, quoted
 * identifiers (`"x"`, `` `x` ``, `[x]`), comments and the BEGIN … END body of CREATE TRIGGER (where CASE …
 * END nests) do not split. Empty statements are dropped; each statement is returned without its `;`.
 */
export const splitStatements = (text: string): ReadonlyArray<string> => {
  const statements: Array<string> = []
  let start = 0
  let i = 0
  let words: Array<string> = [] // first words of the current statement (to spot CREATE [TEMP] TRIGGER)
  let trigger = false
  let depth = 0 // BEGIN/CASE … END nesting inside a trigger
  const finish = (end: number) => {
    const statement = text.slice(start, end).trim()
    if (stripComments(statement).trim().length > 0) statements.push(statement)
    start = end + 1
    words = []
    trigger = false
    depth = 0
  }
  while (i < text.length) {
    const c = text[i]!
    const skipped = skipQuoted(text, i) ?? skipComment(text, i)
    if (skipped !== undefined) {
      i = skipped === -1 ? text.length : skipped
      continue
    }
    if (isWordChar(c)) {
      let j = i + 1
      while (j < text.length && isWordChar(text[j]!)) j++
      const word = text.slice(i, j).toUpperCase()
      if (words.length < 4) {
        words.push(word)
        if (
          words[0] === "CREATE" &&
          (words[1] === "TRIGGER" || ((words[1] === "TEMP" || words[1] === "TEMPORARY") && words[2] === "TRIGGER"))
        ) trigger = true
      }
      if (trigger) {
        if (word === "BEGIN" || word === "CASE") depth++
        else if (word === "END" && depth > 0) depth--
      }
      i = j
      continue
    }
    if (c === ";" && !(trigger && depth > 0)) {
      finish(i)
      i++
      continue
    }
    i++
  }
  finish(text.length)
  return statements
}

/** The text with comments removed (strings kept as they are). */
const stripComments = (text: string): string =>
  text.replace(/--[^\n]*(\n|$)|\/\*[\s\S]*?(\*\/|$)/g, " ")

/**
 * The WHERE clause of a partial index's CREATE INDEX text (the expression after the top-level WHERE), or
 * undefined. Strings, quoted names, comments and parentheses are skipped.
 */
export const partialIndexWhere = (indexSql: string): string | undefined => {
  let depth = 0
  let i = 0
  while (i < indexSql.length) {
    const c = indexSql[i]!
    const skipped = skipQuoted(indexSql, i) ?? skipComment(indexSql, i)
    if (skipped !== undefined) {
      if (skipped === -1) return undefined
      i = skipped
      continue
    }
    if (c === "(") depth++
    else if (c === ")") depth--
    else if (depth === 0 && isWordChar(c)) {
      let j = i + 1
      while (j < indexSql.length && isWordChar(indexSql[j]!)) j++
      if (indexSql.slice(i, j).toUpperCase() === "WHERE") {
        const rest = indexSql.slice(j).trim()
        return rest.length === 0 ? undefined : rest
      }
      i = j
      continue
    }
    i++
  }
  return undefined
}

/**
 * The items of a CREATE INDEX column list (text between the first top-level parentheses, split at top-level
 * commas), each without a trailing ASC/DESC and COLLATE. Undefined when the text cannot be read.
 */
export const indexItems = (indexSql: string): ReadonlyArray<string> | undefined => {
  let depth = 0
  let start = -1
  const items: Array<string> = []
  let i = 0
  while (i < indexSql.length) {
    const c = indexSql[i]!
    const skipped = skipQuoted(indexSql, i)
    if (skipped !== undefined) {
      if (skipped === -1) return undefined
      i = skipped
      continue
    }
    if (c === "(") {
      depth++
      if (depth === 1 && start === -1) start = i + 1
    } else if (c === ")") {
      depth--
      if (depth === 0 && start !== -1) {
        items.push(indexSql.slice(start, i))
        return items.map((item) =>
          item.trim().replace(/\s+(ASC|DESC)$/i, "").replace(/\s+COLLATE\s+("(?:[^"]|"")*"|\w+)$/i, "").trim()
        )
      }
    } else if (c === "," && depth === 1 && start !== -1) {
      items.push(indexSql.slice(start, i))
      start = i + 1
    }
    i++
  }
  return undefined
}

/** Pragmas that run a checkpoint whenever they are run, and ones that do (or stop WAL mode) once set. */
const CHECKPOINTING = new Set(["wal_checkpoint"])
const CHECKPOINTING_WHEN_SET = new Set(["wal_autocheckpoint", "journal_mode", "locking_mode"])

const PRAGMA = /^PRAGMA\s+(?:(?:"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|'(?:[^']|'')*'|\w+)\s*\.\s*)?("|`|\[|')?(\w+)["`\]']?\s*([\s\S]*)$/i

/**
 * The pragma of `text` (any of its statements) that would let SQLite checkpoint a WAL, or take the database
 * out of WAL mode, on its own: `wal_checkpoint` in any form, and `wal_autocheckpoint`, `journal_mode` or
 * `locking_mode` set to a value (reading them is harmless). Lower case; undefined when there is none.
 * Comments anywhere in a statement, quoted names and schema prefixes are seen through.
 */
export const checkpointingPragma = (text: string): string | undefined => {
  if (!/pragma/i.test(text)) return undefined
  for (const statement of text.includes(";") ? splitStatements(text) : [text]) {
    const match = PRAGMA.exec(stripComments(statement).trim())
    if (match === null) continue
    const name = match[2]!.toLowerCase()
    if (CHECKPOINTING.has(name)) return name
    if (CHECKPOINTING_WHEN_SET.has(name) && /^[=(]/.test(match[3]!)) return name
  }
  return undefined
}
