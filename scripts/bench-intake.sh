#!/usr/bin/env bash
# Intake benchmark: a release wahook on 127.0.0.1:18080 and the loadgen (64 connections) on the
# same machine; reports the acks and, from the server's /metrics, the processed rate and lag of the same run. usage: scripts/bench-intake.sh <database-url> <requests> [loadgen args]
#   scripts/bench-intake.sh sqlite:///tmp/wahook-bench/a.db 100000
#   WAHOOK_DATABASE__SCHEMA=bench scripts/bench-intake.sh postgres://postgres@127.0.0.1:5432/test 100000
set -u
URL=$1; N=$2; shift 2
cd "$(dirname "$0")/.."
cargo build --release -q
BIN=$PWD/target/release/wahook
mkdir -p /tmp/wahook-bench && cd /tmp/wahook-bench
WAHOOK_DATABASE__URL="$URL" WAHOOK_SERVER__LISTEN=127.0.0.1:18080 WAHOOK_LOG__FILTER=warn $BIN serve > server.log 2>&1 &
PID=$!
for i in $(seq 1 100); do curl -sf localhost:18080/health >/dev/null && break; sleep 0.1; done
/usr/bin/time -f "loadgen cpu: user %U s, sys %S s" $BIN loadgen --url http://127.0.0.1:18080/webhooks/whatsapp --requests "$N" --connections 64 --until-processed "$@"
curl -s localhost:18080/metrics | grep -E '^wahook_inbox_batch_size_(sum|count)|^wahook_inbox_commit_duration_seconds_(sum|count)'
awk "{print \"server cpu: user \" \$14/100 \" s, sys \" \$15/100 \" s\"}" /proc/$PID/stat; kill $PID; wait $PID 2>/dev/null
