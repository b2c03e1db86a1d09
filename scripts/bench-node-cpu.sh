#!/usr/bin/env bash
# Our node's CPU per task split into user and system time, with its minor page faults
# and system calls — the split `bench-peers` does not show. Runs the `bench_node`
# example behind `iicp stub-model`, warms it for 3 s, then reads /proc/PID/stat
# (utime, stime, minflt) before and after `iicp bench` at 64 concurrent for DURATION,
# RUNS times with a fresh node each time.
#
#   scripts/bench-node-cpu.sh [--runs 3] [--duration 8s] [--scheme http|iicp] [--connections N]
#
# utime and stime are in clock ticks (10 ms): over a few hundred thousand tasks the
# resolution is well under 0.1 µs per task. Env: CARGO_TARGET_DIR (default
# ~/.cache/iicp-rs-target).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
duration=8s
scheme=http
connections=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --scheme) scheme=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    *) echo "usage: scripts/bench-node-cpu.sh [--runs N] [--duration 8s] [--scheme http|iicp] [--connections N]" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/iicp-rs-target}
cargo build --release --locked -p iicp-cli -p iicp-node --bin iicp --example bench_node >&2
bin=$CARGO_TARGET_DIR/release

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

stub_port=$(free_port)
"$bin/iicp" stub-model --port "$stub_port" >/dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$stub_port/v1/models"

ticks=$(getconf CLK_TCK)
conn_args=()
[ -n "$connections" ] && conn_args=(--connections "$connections")
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "run | tasks | user µs/task | system µs/task | CPU µs/task | minor faults/task | system calls/task"
for run in $(seq 1 "$runs"); do
  port=$(free_port)
  "$bin/examples/bench_node" "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256 1024 >/dev/null 2>&1 &
  node=$!
  pids+=("$node")
  wait_http "http://127.0.0.1:$port/iicp/health"
  "$bin/iicp" -q bench --target "$scheme://127.0.0.1:$port" -c 64 "${conn_args[@]}" -d 3s >/dev/null 2>&1
  # /proc/PID/stat fields 10 (minflt), 14 (utime), 15 (stime); the name (field 2) has no spaces
  read -r -a before < "/proc/$node/stat"
  out=$("$bin/iicp" -q bench --target "$scheme://127.0.0.1:$port" -c 64 "${conn_args[@]}" -d "$duration" 2>&1)
  read -r -a after < "/proc/$node/stat"
  tasks=$(grep -oE '[0-9]+ ok' <<<"$out" | head -1 | cut -d' ' -f1)
  # a second, fixed-size pass under strace for the system calls
  strace -c -U name,calls -f -p "$node" -o "/tmp/bench-node-cpu.strace.$node" 2>/dev/null &
  tracer=$!
  sleep 0.5
  "$bin/iicp" -q bench --target "$scheme://127.0.0.1:$port" -c 64 "${conn_args[@]}" -n 2000 --warmup 0s >/dev/null 2>&1
  kill -INT "$tracer" 2>/dev/null || true
  wait "$tracer" 2>/dev/null || true
  calls=$(awk '$1 == "total" {print $2}' "/tmp/bench-node-cpu.strace.$node" 2>/dev/null || echo "?")
  rm -f "/tmp/bench-node-cpu.strace.$node"
  kill "$node" 2>/dev/null || true
  wait "$node" 2>/dev/null || true
  python3 - "$run" "$tasks" "$ticks" "$calls" "${before[9]}" "${after[9]}" "${before[13]}" "${after[13]}" "${before[14]}" "${after[14]}" <<'PY'
import sys
run, tasks, ticks, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
mf0, mf1, u0, u1, s0, s1 = map(int, sys.argv[5:11])
us = lambda t: (t * 1e6 / ticks) / tasks
per_call = f"{int(calls) / 2000:.2f}" if calls.isdigit() else "?"
print(f"{run} | {tasks} | {us(u1 - u0):.1f} | {us(s1 - s0):.1f} | {us(u1 - u0 + s1 - s0):.1f} | {(mf1 - mf0) / tasks:.3f} | {per_call}")
PY
done
