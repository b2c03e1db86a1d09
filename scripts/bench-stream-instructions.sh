#!/usr/bin/env bash
# User-space instructions our node spends per streamed chunk, counted by valgrind's
# callgrind: deterministic for the same binary and inputs, unlike the CPU times of
# `iicp bench-stream` on a shared 2-core VM, so it is the number to compare before and
# after a change to the streaming path.
#
#   scripts/bench-stream-instructions.sh [--tasks N] [--plaintext] [IICP_BINARY]
#
# `iicp bench-stream` runs under callgrind (one output per thread) twice per transport,
# with answers of 32 and of 64 chunks from the unpaced stub; the node thread of the
# CPU measurement served 20 + N tasks of each size, so the difference of its counts
# divided by 32 × (20 + N) is the count per chunk, everything per task cancelled out.
# Kernel work (the socket calls) is not counted. Caveats: valgrind's CPU has no SHA
# extensions, so under IICP-CX the per-chunk key derivation (HKDF-SHA-256) runs the
# portable code, and `rep movsb` copies count one instruction per byte.
# Env: CARGO_TARGET_DIR (default ~/.cache/iicp-rs-target).
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=40
extra=()
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) tasks=$2; shift 2 ;;
    --plaintext) extra+=(--plaintext); shift ;;
    -*) echo "usage: scripts/bench-stream-instructions.sh [--tasks N] [--plaintext] [IICP_BINARY]" >&2; exit 2 ;;
    *) bin=$1; shift ;;
  esac
done
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/iicp-rs-target}
if [ -z "$bin" ]; then
  cargo build --release --locked -p iicp-cli --bin iicp >&2
  bin=$CARGO_TARGET_DIR/release/iicp
fi
work=$(mktemp -d /tmp/iicp-stream-instr.XXXXXX)
trap 'rm -rf "$work"' EXIT

# count TRANSPORT TOKENS: instructions of the node thread that served the CPU pass
count() {
  local dir="$work/$1-$2" best=0 n f
  mkdir -p "$dir"
  (cd "$dir" && timeout 900 valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$dir/cg.%p" "$bin" bench-stream --rounds 1 --cpu-tasks "$tasks" \
    --tokens "$2" --transport "$1" ${extra[@]+"${extra[@]}"} >"$dir/out.txt" 2>&1) \
    || { echo "bench-stream failed: $(tail -5 "$dir/out.txt")" >&2; exit 1; }
  # the node threads are the ones that ran the lifecycle pipeline; the CPU pass's node
  # is the busier of the two
  for f in "$dir"/cg.*-*; do
    grep -q "iicp_node::pipeline::drive" "$f" || continue
    n=$(awk '/^summary:/ {print $2}' "$f")
    [ "${n:-0}" -gt "$best" ] && best=$n
  done
  echo "$best"
}

for transport in http native; do
  a=$(count "$transport" 32)
  b=$(count "$transport" 64)
  echo "$transport: $(( (b - a) / (32 * (20 + tasks)) )) instructions per chunk (${extra[*]:-IICP-CX})"
done
