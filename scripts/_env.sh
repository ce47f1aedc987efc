# shellcheck shell=bash
# Sourced by scripts/serve, scripts/test and the examples' run scripts: one virtualenv (.venv,
# or $KANAL_VENV) shared by all, filled from the committed locks in requirements/ (pip --require-hashes), with kanal
# itself installed editable. Nothing is installed when the stamp written after the last
# install still matches the lock, pyproject.toml and the Python version, so serve and test
# never reinstall over each other. `ensure_env runtime` accepts an environment made from the
# test lock too (it is a superset of the runtime lock, pinned to the same versions).

KANAL_VENV="${KANAL_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

_env_digest() {  # $1: lock name -> a digest of everything the install depends on
  {
    cat "requirements/$1.txt" pyproject.toml
    "$KANAL_VENV/bin/python" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
}

_env_current() {  # $1: lock name -> 0 when the last install from that lock is still current
  [ -f "$KANAL_VENV/.kanal-$1" ] && [ "$(cat "$KANAL_VENV/.kanal-$1")" = "$(_env_digest "$1")" ]
}

ensure_env() {  # $1: runtime | test | lowest
  local lock="$1"
  [ -x "$KANAL_VENV/bin/python" ] || "$PYTHON" -m venv "$KANAL_VENV"
  if _env_current "$lock" || { [ "$lock" = runtime ] && _env_current test; }; then
    return 0
  fi
  echo "kanal: installing the locked dependencies (requirements/$lock.txt) into $KANAL_VENV" >&2
  rm -f "$KANAL_VENV"/.kanal-*
  "$KANAL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes --no-deps -r "requirements/$lock.txt"
  # Build kanal with the locked setuptools instead of whatever an isolated build would fetch.
  "$KANAL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-deps --no-build-isolation -e .
  _env_digest "$lock" > "$KANAL_VENV/.kanal-$lock"
}

ensure_node_modules() {  # node_modules from package-lock.json (npm ci), only when the lock changed
  # npm ci deletes and refills node_modules: run it only when package-lock.json changed.
  local digest
  digest="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ "$(cat node_modules/.kanal-lock 2>/dev/null)" != "$digest" ]; then
    npm ci --silent --no-audit --no-fund
    echo "$digest" > node_modules/.kanal-lock
  fi
}

_install_chromium() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
}

ensure_chromium() {  # Debian's chromium for the browser tests (tests/browser), when it is missing
  # The browser tests launch $KANAL_CHROMIUM, else /usr/bin/chromium, and skip saying why when
  # it does not exist. Installing needs root and apt; a failed install is reported, not fatal.
  local chromium="${KANAL_CHROMIUM:-/usr/bin/chromium}"
  local how="sudo apt-get install -y --no-install-recommends chromium"
  [ -x "$chromium" ] && return 0
  if [ -n "${KANAL_CHROMIUM:-}" ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "kanal: no chromium at $chromium, so the browser tests will be skipped." \
      "Install it (Debian: $how) or set KANAL_CHROMIUM to its path." >&2
    return 0
  fi
  echo "kanal: installing Debian's chromium for the browser tests (apt-get)" >&2
  # A fresh machine may have no or stale package lists: update them only when needed.
  _install_chromium || { apt-get update -q >/dev/null && _install_chromium; } \
    || echo "kanal: installing chromium failed, so the browser tests will be skipped" >&2
}
