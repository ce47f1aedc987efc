#!/usr/bin/env bash
# Count the CPU instructions of bench/instructions.py's workloads with callgrind, for this
# checkout and (optionally) another one: bench/instructions.sh [OTHER_SRC_DIR].
# Prints one line per (checkout, workload): instructions of the workload alone (its total minus
# the set-up-only run). Deterministic for the same code, interpreter and packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
count() {  # $1: src dir, $2: workload -> total instructions
  PYTHONPATH="$1:$PWD" PYTHONHASHSEED=0 valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg" "$PY" -m bench.instructions "$2" >/dev/null 2>"$out/log"
  grep -E "^summary:" "$out/cg" | awk '{print $2}'
}
# KANAL_WORKLOADS may name cluster-mode workloads (fanout-redis, http-channel, ...): each is
# measured against the set-up of its own mode (none-redis for fanout-redis, else bare-redis).
for src in "$PWD/src" ${1:+"$1"}; do
  declare -A base=()
  for workload in ${KANAL_WORKLOADS:-fanout http wire}; do
    mode="${workload#*-}"; [ "$mode" = "$workload" ] && mode="" || mode="-$mode"
    set_up=none; [ -n "$mode" ] && [ "${workload%%-*}" != fanout ] && set_up=bare
    [ -n "${base[$set_up$mode]:-}" ] || base[$set_up$mode]="$(count "$src" "$set_up$mode")"
    total="$(count "$src" "$workload")"
    echo "$src $workload $((total - ${base[$set_up$mode]}))"
  done
done
