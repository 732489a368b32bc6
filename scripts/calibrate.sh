#!/usr/bin/env bash
# This machine's limits for wahook's own database writes, with nothing else running:
#   1. `wahook calibrate` on SQLite and on PostgreSQL: the inbox's group commit and the store's
#      transaction through wahook's own code, driver and writer connection;
#   2. pgbench on PostgreSQL with the same statements in SQL (scripts/calibrate/*.sql), two
#      clients, no driver in between.
# Usage: scripts/calibrate.sh [seconds per pgbench run, default 10]   (needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
bin="${CARGO_TARGET_DIR:-target}/release/wahook"
pg="${WAHOOK_BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}"
work="$(mktemp -d /tmp/wahook-calibrate-XXXXXX)"
schema="calibrate_$$"
trap 'rm -rf "$work"; psql -q "$pg" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true' EXIT
export WAHOOK_LOG__FILTER=warn

WAHOOK_DATABASE__URL="sqlite://$work/calibrate.db" "$bin" calibrate
WAHOOK_DATABASE__URL="$pg" WAHOOK_DATABASE__SCHEMA="$schema" "$bin" calibrate

ws=$(psql -qtA "$pg" -c "SELECT workspace_id, id FROM $schema.whatsapp_accounts ORDER BY id LIMIT 1")
export PGOPTIONS="-c search_path=$schema"
for script in inbox store; do
  # The store script marks pending inbox rows: the inbox run before it leaves plenty.
  out=$(pgbench -n -c 2 -j 2 -T "$seconds" -D ws="${ws%%|*}" -D acct="${ws##*|}" \
        -f "scripts/calibrate/$script.sql" "$pg" 2>&1)
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  rows=$([ "$script" = inbox ] && echo 30 || echo 50)
  printf 'pgbench [%s]: 2 clients, %s s: %.0f transactions/s x %s rows = %.0f rows/s (%s ms each)\n' \
    "$script" "$seconds" "$tps" "$rows" "$(echo "$tps * $rows" | bc)" "$lat"
done
