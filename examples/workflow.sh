#!/usr/bin/env bash
# A scripted sync workflow with the effect-sqlite-sync CLI: a server, two local replicas, writes on
# both, sync both ways, and a check that they agree. No setup: bash examples/workflow.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/bin/effect-sqlite-sync.js"
cli() { node "$bin" "$@"; } # once installed: npx effect-sqlite-sync "$@"

work="$(mktemp -d)"
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT

# A server on a free port; it prints "Listening on URL" on stdout, its request log goes to stderr.
node "$bin" serve --port 0 --data "$work/server" >"$work/serve.out" 2>"$work/serve.log" &
server=$!
for _ in $(seq 1 300); do grep -q "^Listening on " "$work/serve.out" && break; sleep 0.1; done
export EFFECT_SQLITE_SYNC_URL="$(sed -n 's/^Listening on //p' "$work/serve.out")/db/shop"
echo "server: $EFFECT_SQLITE_SYNC_URL"

a=(--db "$work/a.db")
b=(--db "$work/b.db")

# Replica a creates the table and a row; the first command creates a.db from the server.
cli exec "${a[@]}" "CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL)"
cli exec "${a[@]}" "INSERT INTO stock VALUES (?, ?)" apple 10
cli sync "${a[@]}"

# Replica b gets it, changes it, adds a row.
cli sync "${b[@]}"
cli exec "${b[@]}" "UPDATE stock SET qty = qty - ? WHERE sku = ?" 3 apple
cli exec "${b[@]}" "INSERT INTO stock VALUES (?, ?)" pear 4
cli sync "${b[@]}"
cli sync "${a[@]}"
cli status "${a[@]}"

left="$(cli query "${a[@]}" --json "SELECT sku, qty FROM stock ORDER BY sku")"
right="$(cli query "${b[@]}" --json "SELECT sku, qty FROM stock ORDER BY sku")"
echo "a: $left"
echo "b: $right"
if [ "$left" != "$right" ]; then echo "diverged" >&2; exit 1; fi
echo "converged"

# The exit status tells a script what happened: 0 done, 1 the sync failed, 2 bad usage.
kill "$server"; wait "$server" || true; server=""
cli exec "${a[@]}" "INSERT INTO stock VALUES (?, ?)" plum 2 # local writes need no server
if cli push "${a[@]}" --retries 0 2>/dev/null; then
  echo "unexpected: pushed with the server down" >&2; exit 1
else
  echo "server down: push exited with status $? (the plum stays pending for the next sync)"
fi
