#!/usr/bin/env bash
# Parley — run the benchmark suite and write the report.
#
#   bash scripts/bench.sh [--mode short|full] [--only persistence,ingest,latency,idle,replay]
#
# Installs what is missing (like test.sh), starts a private Postgres on a free port, builds the
# release binaries, installs the Node baseline server's dependencies (bench/node), then runs
# `parley-bench`, which starts its own nats-server and databases per part. The report lands in
# .parley/bench/report.md and report.json. Figures never fail the run; the bench's own checks
# (lost, duplicated, out-of-order messages) do.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ROOT="$PARLEY_ROOT"

trap parley_stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

parley_ensure_postgres
parley_ensure_nats
parley_stop_stale_postgres "$ROOT/.parley/bench/pg"
PG_PORT="$(parley_free_port)"
parley_start_postgres "$ROOT/.parley/bench/pg" "$PG_PORT" --fresh

export PARLEY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export PARLEY_TEST_NATS_SERVER="$NATS_SERVER_BIN"
export SQLX_OFFLINE=true

parley_log "building release binaries"
cargo build --release --locked --bins

if [[ -f "$ROOT/bench/node/package.json" ]]; then
  parley_log "installing the Node baseline server"
  (cd "$ROOT/bench/node" && if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi) >/dev/null
fi

# Many sockets need many file descriptors.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$ROOT/target/release/parley-bench" --bin-dir "$ROOT/target/release" --out "$ROOT/.parley/bench" \
  --nats-config nats/nats-server.conf "$@"
printf '\n'
cat "$ROOT/.parley/bench/report.md"
