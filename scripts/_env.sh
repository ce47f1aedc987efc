# shellcheck shell=bash
# Sourced by scripts/serve and scripts/test: one virtualenv (.venv, or $KANAL_VENV) shared by
# both, filled from the committed locks in requirements/ (pip --require-hashes), with kanal
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
