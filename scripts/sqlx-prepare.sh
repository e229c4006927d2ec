#!/usr/bin/env bash
# Parley — regenerate `.sqlx/`, the compile-time query metadata that lets `sqlx::query!` build
# offline (CI, Docker) and checks every query against the schema in `migrations/`.
#
#   bash scripts/sqlx-prepare.sh
#
# Run it after changing a query or a migration, and commit `.sqlx/`. It starts a throwaway
# Postgres, applies the migrations, and rebuilds the crates that hold queries with the macros
# writing their metadata (the same thing `cargo sqlx prepare` does, without installing sqlx-cli).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ROOT="$PARLEY_ROOT"
trap parley_stop_all EXIT

parley_ensure_postgres
PG_PORT="$(parley_free_port)"
parley_start_postgres "$ROOT/.parley/sqlx/pg" "$PG_PORT" --fresh
parley_create_db "$PG_PORT" parley
for migration in "$ROOT"/migrations/*.sql; do
  "$(_parley_psql_cmd)" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d parley -v ON_ERROR_STOP=1 -q -f "$migration"
done

rm -rf "$ROOT/.sqlx"
mkdir -p "$ROOT/.sqlx"
# Force the macros to run again in every crate that holds queries.
cargo clean -p parley-store -p parley-test-support
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$ROOT/.sqlx" DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/parley" \
  cargo check --workspace --all-targets
parley_log "wrote $(find "$ROOT/.sqlx" -name 'query-*.json' | wc -l) query files to .sqlx/"
