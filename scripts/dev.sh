#!/usr/bin/env bash
# Parley — start the whole stack locally, with a demo conversation; Ctrl-C stops it all.
#
#   bash scripts/dev.sh
#
# Installs what is missing, starts Postgres (data kept in .parley/dev/pg) and
# nats-server (.parley/dev/nats), builds the binaries, runs the persistence worker,
# the notification worker and the gateway (logs in .parley/dev/logs/), publishes a
# demo project and prints tokens and copy-paste examples.
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
ROOT="$PARLEY_ROOT"
DEV="$ROOT/.parley/dev"
LOGS="$DEV/logs"
RUN="$DEV/run"

# Fixed demo identities, so that a restart finds the same conversation.
DEMO_PROJECT_ID="de300000-0000-4000-8000-000000000001"
ALICE_ID="a11ce000-0000-4000-8000-000000000001"
BOB_ID="b0b00000-0000-4000-8000-000000000002"
SERVICES=(parley-persistence-worker parley-notification-worker parley-gateway)

trap parley_stop_all EXIT
trap 'echo; exit 130' INT
trap 'exit 143' TERM

mkdir -p "$LOGS" "$RUN"

parley_ensure_postgres
parley_ensure_nats

# Stop whatever an earlier run left behind (e.g. after kill -9) before choosing ports.
for svc in "${SERVICES[@]}"; do parley_kill_pidfile "$RUN/$svc.pid" "$svc"; done
parley_kill_pidfile "$DEV/nats/nats.pid" nats-server
parley_stop_stale_postgres "$DEV/pg"

# choose_port VAR DEFAULT LABEL — an explicit $VAR must be free; else DEFAULT if free, else any free port.
choose_port() {
  local var="$1" default="$2" label="$3" port
  if [[ -n "${!var:-}" ]]; then
    port="${!var}"
    parley_port_is_free "$port" || parley_die "$var=$port, but that port is already in use"
  else
    port="$(parley_pick_port "$default")"
    [[ "$port" == "$default" ]] || parley_log "$label: port $default is taken, using $port"
  fi
  printf '%s\n' "$port"
}
# Each port is chosen right before its server starts, so two never collide.
PG_PORT="$(choose_port PARLEY_PG_PORT 5432 Postgres)"
parley_start_postgres "$DEV/pg" "$PG_PORT"
parley_create_db "$PG_PORT" parley
NATS_PORT="$(choose_port PARLEY_NATS_PORT 4222 NATS)"
parley_start_nats "$DEV/nats" "$NATS_PORT"
if [[ -n "${PARLEY_HTTP_PORT:-}" ]]; then   # fail before the build, not after
  parley_port_is_free "$PARLEY_HTTP_PORT" || parley_die "PARLEY_HTTP_PORT=$PARLEY_HTTP_PORT, but that port is already in use"
fi

# The JWT secret: from the environment, else a random one generated once.
if [[ -z "${PARLEY_JWT_SECRET:-}" ]]; then
  if [[ ! -s "$DEV/jwt-secret" ]]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(48))' >"$DEV/jwt-secret")
    parley_log "generated a dev JWT secret in $DEV/jwt-secret"
  fi
  PARLEY_JWT_SECRET="$(<"$DEV/jwt-secret")"
fi

printf '\n========== cargo build --bins ==========\n' >&2
cargo build --bins
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN_DIR="$TARGET_DIR/debug"
for b in "${SERVICES[@]}" parley; do
  [[ -x "$BIN_DIR/$b" ]] || parley_die "cargo build did not produce $BIN_DIR/$b"
done

HTTP_PORT="$(choose_port PARLEY_HTTP_PORT 8080 gateway)"
export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/parley"
export PARLEY_LISTEN="127.0.0.1:$HTTP_PORT"
export PARLEY_JWT_SECRET
export RUST_LOG="${RUST_LOG:-info}"
BASE_URL="http://$PARLEY_LISTEN"

# The persistence worker first: it applies the migrations.
for svc in "${SERVICES[@]}"; do
  parley_start_service "$svc" "$LOGS/$svc.log" "$RUN/$svc.pid" "$BIN_DIR/$svc"
done

# Fails (showing its log) when a service has exited.
check_services() {
  local svc pid
  for svc in "${SERVICES[@]}"; do
    pid="$(cat "$RUN/$svc.pid")"
    if ! kill -0 "$pid" 2>/dev/null; then
      parley_log "$svc exited; last lines of $LOGS/$svc.log:"
      tail -n 30 "$LOGS/$svc.log" >&2 || true
      return 1
    fi
  done
}

parley_log "waiting for $BASE_URL/readyz"
ready=0
for _ in $(seq 1 240); do
  check_services || parley_die "a service stopped during start-up"
  if [[ "$(parley_http_status "$BASE_URL/readyz")" == "200" ]]; then ready=1; break; fi
  sleep 0.5
done
(( ready )) || parley_die "the gateway did not report ready within 2 minutes (see $LOGS/parley-gateway.log)"

# The demo project, published as the marketplace would; prints the conversation id.
out="$("$BIN_DIR/parley" project start --nats-url "$NATS_URL" \
  --project-id "$DEMO_PROJECT_ID" --title "Demo project" \
  --client-id "$ALICE_ID" --client-name "Alice (client)" --client-email alice@example.com \
  --provider-id "$BOB_ID" --provider-name "Bob (provider)" --provider-email bob@example.com)"
CONV_ID="$(printf '%s\n' "$out" | grep -Eio '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' | tail -n 1 || true)"
[[ -n "$CONV_ID" ]] || parley_die "parley project start printed no conversation id (got: $out)"

mint() {
  local tok
  tok="$("$BIN_DIR/parley" token mint --secret="$PARLEY_JWT_SECRET" --user-id "$1" --ttl-hours 24)"
  tok="$(printf '%s\n' "$tok" | sed '/^[[:space:]]*$/d' | tail -n 1 | tr -d '[:space:]')"
  [[ -n "$tok" ]] || parley_die "parley token mint printed no token"
  printf '%s\n' "$tok"
}
ALICE_TOKEN="$(mint "$ALICE_ID")"
BOB_TOKEN="$(mint "$BOB_ID")"

# The persistence worker applies the event asynchronously: wait until Alice sees it.
seen=0
for _ in $(seq 1 60); do
  if [[ "$(parley_http_status "$BASE_URL/v1/conversations/$CONV_ID" "$ALICE_TOKEN")" == "200" ]]; then seen=1; break; fi
  sleep 0.5
done
(( seen )) || parley_log "WARNING: conversation $CONV_ID is not visible yet (see $LOGS/parley-persistence-worker.log)"

(umask 077 && cat >"$DEV/env" <<EOF
# Written by scripts/dev.sh — source it in another shell.
export PARLEY_URL='$BASE_URL'
export NATS_URL='$NATS_URL'
export DATABASE_URL='$DATABASE_URL'
export CONV_ID='$CONV_ID'
export ALICE_ID='$ALICE_ID'
export BOB_ID='$BOB_ID'
export ALICE_TOKEN='$ALICE_TOKEN'
export BOB_TOKEN='$BOB_TOKEN'
EOF
)

cat >"$DEV/demo-client.mjs" <<EOF
// Bob's live view of the demo conversation. Needs socket.io-client:
//   npm install socket.io-client   (in this folder, or run it from one that has it)
import { io } from "socket.io-client";

const socket = io("$BASE_URL", { auth: { token: "$BOB_TOKEN" } });
socket.on("connect_error", (err) => console.error("connect_error:", err.message));
socket.on("message:new", (m) => console.log("message:new", m.seq, m.senderId, m.body));
socket.on("conversation:typing", (t) => console.log("typing", t));
socket.on("connect", async () => {
  const joined = await socket.emitWithAck("conversation:join", { conversationId: "$CONV_ID" });
  console.log("joined:", joined.ok, "replayed:", joined.replayed);
  const sent = await socket.emitWithAck("message:send", {
    conversationId: "$CONV_ID",
    body: "Hi Alice, Bob here (socket.io)",
  });
  console.log("sent:", sent);
});
EOF

cat <<EOF

==================== Parley is running ====================
Gateway      $BASE_URL   (logs: .parley/dev/logs/)
NATS         $NATS_URL
Postgres     $DATABASE_URL

Conversation $CONV_ID
Alice (client)   $ALICE_ID
  token: $ALICE_TOKEN
Bob (provider)   $BOB_ID
  token: $BOB_TOKEN

All of the above as shell variables:  source .parley/dev/env

# Alice posts a message
curl -sS -X POST '$BASE_URL/v1/conversations/$CONV_ID/messages' \\
  -H 'Authorization: Bearer $ALICE_TOKEN' \\
  -H 'Content-Type: application/json' \\
  -d '{"body": "Hello Bob!", "clientMsgId": "demo-1"}'

# Bob reads the history
curl -sS '$BASE_URL/v1/conversations/$CONV_ID/messages?limit=50' \\
  -H 'Authorization: Bearer $BOB_TOKEN'

# Bob's conversation list
curl -sS '$BASE_URL/v1/conversations' -H 'Authorization: Bearer $BOB_TOKEN'

# Socket.IO (Node), saved as .parley/dev/demo-client.mjs:
#   cd .parley/dev && npm install --no-save socket.io-client && node demo-client.mjs
$(sed -n '/^import/,$p' "$DEV/demo-client.mjs")

Press Ctrl-C to stop everything.
EOF

# Stay in the foreground until Ctrl-C (or until a service dies).
while check_services; do
  sleep 2 &
  wait $! || true
done
parley_die "a service stopped; shutting the stack down"
