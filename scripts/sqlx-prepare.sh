#!/usr/bin/env bash
# Parley — regenerate `.sqlx/`, the compile-time query metadata that lets `sqlx::query!` build
# offline (CI, Docker) and checks every query against the schema in `migrations/`.
#
#   bash scripts/sqlx-prepare.sh
#
# Run it after changing a query or a migration, and commit `.sqlx/`. `cargo xtask sqlx-prepare`
# (xtask/src/sqlx_prepare.rs) starts a throwaway Postgres, applies the migrations, and rebuilds
# the crates that hold queries with the macros writing their metadata (the same thing
# `cargo sqlx prepare` does, without installing sqlx-cli).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

parley_ensure_postgres
parley_xtask sqlx-prepare
