#!/usr/bin/env bash
# User-space instructions per task of our node (the bench_node example, one runtime
# thread, behind `iicp stub-model`), counted by valgrind's callgrind: deterministic for
# the same binary and inputs, unlike timings on a shared 2-core VM, so it is the number
# to compare before and after a change to the task path.
#
#   scripts/bench-instructions.sh [--tasks N] [BENCH_NODE_BINARY]
#
# The node runs under callgrind twice per transport, for N and 2N tasks (8 concurrent,
# fresh task ids, plaintext, 256-byte payloads); the difference divided by N is the
# per-task count, start-up and shutdown cancelled out. Kernel work (the socket calls) is
# not counted. Caveats: valgrind's CPU has no SHA extensions, so SHA-256 runs the
# portable code (about 17k instructions per task here that real hardware does in
# hardware), and `rep movsb` copies count one instruction per byte.
# Env: CARGO_TARGET_DIR (default ~/.cache/iicp-rs-target).
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=3000
node_bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) tasks=$2; shift 2 ;;
    -*) echo "usage: scripts/bench-instructions.sh [--tasks N] [BENCH_NODE_BINARY]" >&2; exit 2 ;;
    *) node_bin=$1; shift ;;
  esac
done
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/iicp-rs-target}
cargo build --release --locked -p iicp-cli -p iicp-node --bin iicp --example bench_node >&2
work=$(mktemp -d /tmp/iicp-bench-instr.XXXXXX)
cp "$CARGO_TARGET_DIR/release/iicp" "$work/"
cp "${node_bin:-$CARGO_TARGET_DIR/release/examples/bench_node}" "$work/bench_node"

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

stub_port=$(free_port)
"$work/iicp" stub-model --port "$stub_port" >"$work/stub.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$stub_port/v1/models"

# count SCHEME N: total instructions of a node that served N tasks over SCHEME
count() {
  local scheme=$1 n=$2 port out
  port=$(free_port)
  out="$work/cg-$scheme-$n.out"
  timeout 600 valgrind --tool=callgrind --callgrind-out-file="$out" "$work/bench_node" \
    "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256 1024 1 >/dev/null 2>"$work/vg.log" &
  local vg=$!
  wait_http "http://127.0.0.1:$port/iicp/health"
  timeout 600 "$work/iicp" -q bench --target "$scheme://127.0.0.1:$port" -c 8 -n "$n" \
    --warmup 0s --timeout 60s >"$work/bench-$scheme-$n.txt" 2>&1
  kill -TERM "$vg"
  wait "$vg" 2>/dev/null || true
  grep -q "$n ok, 0 errors" "$work/bench-$scheme-$n.txt" \
    || { echo "bench failed: $(cat "$work/bench-$scheme-$n.txt")" >&2; exit 1; }
  awk '/^summary:/ {print $2}' "$out"
}

for scheme in http iicp; do
  a=$(count "$scheme" "$tasks")
  b=$(count "$scheme" $((2 * tasks)))
  echo "$scheme: $(( (b - a) / tasks )) instructions per task (user space, $tasks tasks)"
done
rm -rf "$work"
