#!/usr/bin/env bash
# Parley — start the whole stack locally, with a demo conversation; Ctrl-C stops it all.
#
#   bash scripts/dev.sh
#
# Installs what is missing, then runs `cargo xtask dev` (xtask/src/dev.rs): Postgres (data kept
# in .parley/dev/pg) and nats-server (.parley/dev/nats), builds the binaries, runs the
# persistence worker, the notification worker and the gateway (logs in .parley/dev/logs/),
# publishes a demo project and prints tokens and copy-paste examples.
#
# Environment (all optional):
#   PARLEY_PG_PORT     Postgres port      (default 5432, or a free port if taken)
#   PARLEY_NATS_PORT   NATS client port   (default 4222, or a free port if taken)
#   PARLEY_HTTP_PORT   gateway HTTP port  (default 8080, or a free port if taken)
#   PARLEY_JWT_SECRET  token secret       (default: a random one kept in .parley/dev/jwt-secret)
#   RUST_LOG           service log filter (default info)
# After start, .parley/dev/env holds the URLs, tokens and ids (`source` it in another shell).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

parley_ensure_postgres
parley_ensure_nats
parley_xtask dev
