#!/usr/bin/env bash
# The cluster drill: three nodes on one PostgreSQL and RabbitMQ, kill -9 of the busiest under
# load, then its restart (see cluster.py). `cluster.sh --bench 3` measures 1, 2 and 3 nodes.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q --bin wahook
exec python3 scripts/drills/cluster.py "$@"
