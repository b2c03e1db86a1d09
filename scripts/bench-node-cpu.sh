#!/usr/bin/env bash
# Our node's CPU per task split into user and system time, with its minor page faults
# and system calls. Runs the `bench_node` example behind `iicp stub-model`, warms it for
# 3 s, then measures `iicp bench --watch-pid NODE` at 64 concurrent for DURATION (and the
# node's minor faults from /proc/PID/stat), then 2 000 tasks under `strace -c`; RUNS
# times with a fresh node each time.
#
#   scripts/bench-node-cpu.sh [--runs 3] [--duration 8s] [--scheme http|iicp] [--connections N]
#
# User and system time come in clock ticks (10 ms): over a few hundred thousand tasks
# the resolution is well under 0.1 µs per task. Env: CARGO_TARGET_DIR (default
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
  # the load tool reads the node's user and system time (--watch-pid); the minor
  # faults are field 10 of /proc/PID/stat (the name, field 2, has no spaces)
  read -r -a before < "/proc/$node/stat"
  report=$("$bin/iicp" -q bench --target "$scheme://127.0.0.1:$port" -c 64 "${conn_args[@]}" \
    -d "$duration" --watch-pid "$node" --json 2>/dev/null)
  read -r -a after < "/proc/$node/stat"
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
  jq -r --arg run "$run" --arg faults "$((after[9] - before[9]))" --arg calls "$calls" '
    .watched[0] as $w | .requests as $n
    | def us: . * 10000 | round / 10;
    "\($run) | \($n) | \($w.user_seconds_per_1000 | us) | \($w.system_seconds_per_1000 | us) | \($w.cpu_seconds_per_1000 | us) | \(($faults | tonumber) / $n * 1000 | round / 1000) | \(if ($calls | test("^[0-9]+$")) then (($calls | tonumber) / 2000 * 100 | round / 100) else "?" end)"
  ' <<<"$report"
done
