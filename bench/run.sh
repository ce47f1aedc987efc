#!/usr/bin/env bash
# One command: install the generator's requirements into the repo's venv and run the
# benchmark against kanal and (if installed) soketi. Extra arguments go to `python -m bench run`,
# e.g. bench/run.sh --scenarios fanout,latency --runs 3 --soketi-dir /path/to/soketi-peer
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
"$PY" -m pip install --quiet -r "$ROOT/bench/requirements.txt"
cd "$ROOT"
exec "$PY" -m bench run "$@"
