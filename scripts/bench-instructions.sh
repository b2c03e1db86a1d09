#!/usr/bin/env bash
# User-space instructions per task of our node (the bench_node example, one runtime
# thread, behind `iicp stub-model`), counted by valgrind's callgrind: deterministic for
# the same binary and inputs, unlike timings on a shared 2-core VM, so it is the number
# to compare before and after a change to the task path.
#
#   scripts/bench-instructions.sh [--tasks N] [--rust-sdk [--peer-tasks M]] [BENCH_NODE_BINARY]
#
# --rust-sdk also counts the Rust SDK node (`iicp-node serve`, installed by
# scripts/peers, run as scripts/bench-peers.sh runs it) the same way, for M and 2M tasks
# (default 500: it runs several times more instructions per task, and valgrind is slow),
# and prints ours ÷ theirs: a machine-independent companion to bench-peers' CPU ratio.
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
peer_tasks=500
rust_sdk=0
node_bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) tasks=$2; shift 2 ;;
    --rust-sdk) rust_sdk=1; shift ;;
    --peer-tasks) peer_tasks=$2; shift 2 ;;
    -*) echo "usage: scripts/bench-instructions.sh [--tasks N] [--rust-sdk [--peer-tasks M]] [BENCH_NODE_BINARY]" >&2; exit 2 ;;
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

# count NODE SCHEME N: total instructions of NODE (ours or rust-sdk) that served N
# tasks over SCHEME
count() {
  local node=$1 scheme=$2 n=$3 port out vg
  port=$(free_port)
  out="$work/cg-$node-$scheme-$n.out"
  if [ "$node" = ours ]; then
    timeout 1200 valgrind --tool=callgrind --callgrind-out-file="$out" "$work/bench_node" \
      "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256 1024 1 >/dev/null 2>"$work/vg.log" &
  else
    mkdir -p "$work/home"
    peer_node_args "$port" "$stub_port"
    HOME="$work/home" IICP_HOME="$work/home/.iicp" "${peer_env[@]}" \
      timeout 1200 valgrind --tool=callgrind --callgrind-out-file="$out" "$IICP_RUST_SDK_BIN" \
      "${peer_args[@]}" >/dev/null 2>"$work/vg.log" &
  fi
  vg=$!
  # start-up under valgrind is slow
  wait_http "http://127.0.0.1:$port/iicp/health" || wait_http "http://127.0.0.1:$port/iicp/health"
  timeout 1200 "$work/iicp" -q bench --target "$scheme://127.0.0.1:$port" -c 8 -n "$n" \
    --warmup 0s --timeout 120s >"$work/bench-$node-$scheme-$n.txt" 2>&1
  kill -TERM "$vg"
  wait "$vg" 2>/dev/null || true
  grep -q "$n ok, 0 errors" "$work/bench-$node-$scheme-$n.txt" \
    || { echo "bench failed: $(cat "$work/bench-$node-$scheme-$n.txt")" >&2; exit 1; }
  awk '/^summary:/ {print $2}' "$out"
}

# per_task NODE SCHEME N: the difference between 2N and N tasks, divided by N
per_task() {
  local a b
  a=$(count "$1" "$2" "$3")
  b=$(count "$1" "$2" $((2 * $3)))
  echo $(( (b - a) / $3 ))
}

if [ "$rust_sdk" = 1 ]; then
  eval "$(scripts/peers env)"
  : "${IICP_RUST_SDK_BIN:?the Rust peer SDK is not installed}"
fi
for scheme in http iicp; do
  ours=$(per_task ours "$scheme" "$tasks")
  echo "$scheme: $ours instructions per task (user space, $tasks tasks)"
  if [ "$rust_sdk" = 1 ]; then
    theirs=$(per_task rust-sdk "$scheme" "$peer_tasks")
    echo "$scheme: rust-sdk $theirs instructions per task (user space, $peer_tasks tasks); ours ÷ theirs $(python3 -c "print(f'{$ours / $theirs:.3f}')")"
  fi
done
rm -rf "$work"
