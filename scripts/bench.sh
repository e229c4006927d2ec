#!/usr/bin/env bash
# Parley — run the benchmark suite and write the report.
#
#   bash scripts/bench.sh [--mode short|full] [--only persistence,ingest,latency,idle,replay]
#
# Installs what is missing (like test.sh), raises the open-files limit (many sockets), then runs
# `cargo xtask bench` (xtask/src/bench.rs): a private Postgres on a free port, the release
# binaries, the Node baseline server's dependencies (bench/node), then `parley-bench`, which
# starts its own nats-server and databases per part. The report lands in .parley/bench/report.md
# and report.json. Figures never fail the run; the bench's own checks (lost, duplicated,
# out-of-order messages) do.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

parley_ensure_postgres
parley_ensure_nats

# Many sockets need many file descriptors (inherited by cargo, xtask and parley-bench).
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

parley_xtask bench "$@"
