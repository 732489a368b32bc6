#!/usr/bin/env bash
# Every failure drill on both backends against one release build; one summary line each
# (the figures RELIABILITY.md quotes). Exits non-zero if any drill fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q --bin wahook
status=0
for backend in ${DRILL_BACKENDS:-sqlite postgres}; do
  for drill in crash poison agent_crash hostile; do
    python3 "scripts/drills/$drill.py" "$backend" || status=1
  done
done
# The outage drill cuts a proxy in front of PostgreSQL (SQLite has no server to lose).
if [[ " ${DRILL_BACKENDS:-sqlite postgres} " == *" postgres "* ]]; then
  python3 scripts/drills/outage.py || status=1
  # Three nodes on PostgreSQL + RabbitMQ, one killed under load.
  python3 scripts/drills/cluster.py || status=1
fi
# SQLite on a full disk: the drill mounts a small tmpfs under the database (it needs root).
if [[ " ${DRILL_BACKENDS:-sqlite postgres} " == *" sqlite "* ]]; then
  if [[ "$(id -u)" == 0 ]]; then
    python3 scripts/drills/disk_full.py || status=1
  else
    echo "SKIP drill disk-full [sqlite]: mounting a tmpfs needs root"
  fi
fi
exit "$status"
