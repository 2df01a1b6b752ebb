/**
 * Names the cause of a failed HTTP request. HTTP clients wrap the socket's error (one to three levels
 * deep: `RequestError` > `fetch failed` > `connect ECONNREFUSED ...`) and the outer messages say only
 * "Transport error (GET url)", so every failure read the same.
 */

interface Found {
  readonly code: string | undefined
  readonly message: string
}

/** The innermost error of the `cause` chain: the one the socket or TLS layer raised. */
const innermost = (error: unknown): Found => {
  let current: unknown = error
  let found: Found = { code: undefined, message: String(error) }
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    const e = current as { readonly code?: unknown; readonly message?: unknown; readonly cause?: unknown }
    if (typeof e.message === "string") found = { code: typeof e.code === "string" ? e.code : undefined, message: e.message }
    current = e.cause
  }
  return found
}

const firstLine = (message: string) => message.split("\n")[0]!.trim()

/** A short phrase for the cause: "connection refused", "TLS handshake failed (...)", ... */
export const describe = (error: unknown): string => {
  const { code, message } = innermost(error)
  const tls = /wrong version number|ssl3_get_record|packet length too long|unknown protocol/i.test(message)
  if (code === "ERR_SSL_WRONG_VERSION_NUMBER" || tls) {
    return "TLS handshake failed: the server does not speak https (try http://)"
  }
  switch (code) {
    case "ECONNREFUSED":
      return "connection refused (is the server running on that host and port?)"
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "host not found"
    case "ECONNRESET":
    case "UND_ERR_SOCKET":
      return "the server closed the connection"
    case "ETIMEDOUT":
    case "UND_ERR_CONNECT_TIMEOUT":
      return "connection timed out"
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return "host unreachable"
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
    case "SELF_SIGNED_CERT_IN_CHAIN":
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "CERT_HAS_EXPIRED":
    case "ERR_TLS_CERT_ALTNAME_INVALID":
      return `the server's TLS certificate is not trusted (${code})`
  }
  const line = firstLine(message)
  return code === undefined || line.includes(code) ? line : `${line} (${code})`
}
