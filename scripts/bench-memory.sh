#!/usr/bin/env bash
# Memory of a node: idle RSS (our bench node, `iicp serve`, and the Python and Rust SDK
# nodes for scale), the cost of 10 000 idle native connections, and RSS over a soak at
# full load (64 concurrent HTTP tasks against the zero-delay `iicp stub-model`).
# Writes the results into docs/PERFORMANCE.md between the bench-memory markers.
#
#   scripts/bench-memory.sh [--soak 600s] [--connections 10000] [--no-write]
#
# Env: CARGO_TARGET_DIR (default ~/.cache/iicp-rs-target).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
soak=600s
conns=10000
write=1
while [ $# -gt 0 ]; do
  case "$1" in
    --soak) soak=$2; shift 2 ;;
    --connections) conns=$2; shift 2 ;;
    --no-write) write=0; shift ;;
    *) echo "usage: scripts/bench-memory.sh [--soak 600s] [--connections 10000] [--no-write]" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/iicp-rs-target}
ulimit -n "$((conns * 2 + 1024))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building (release)" >&2
cargo build --release --locked -p iicp-cli -p iicp-node -p iicp-transport \
  --bin iicp --example bench_node --example idle_conns >&2
work=$(mktemp -d /tmp/iicp-bench-memory.XXXXXX)
cp "$CARGO_TARGET_DIR/release/iicp" "$CARGO_TARGET_DIR/release/examples/bench_node" \
  "$CARGO_TARGET_DIR/release/examples/idle_conns" "$work/"
iicp="$work/iicp"

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

stub_port=$(free_port)
"$iicp" stub-model --port "$stub_port" >"$work/stub.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$stub_port/v1/models"

# ---- idle RSS ----------------------------------------------------------------------
idle_rows=()
idle() { # name port cmd...
  local name=$1 port=$2; shift 2
  mkdir -p "$work/home-$name"
  HOME="$work/home-$name" IICP_HOME="$work/home-$name/.iicp" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_http "http://127.0.0.1:$port/iicp/health"
  sleep 3
  local before; before=$(rss_kib "$pid")
  "$iicp" -q bench --target "http://127.0.0.1:$port" -c 1 -n 100 --warmup 0s >/dev/null 2>&1 || true
  sleep 3
  local after; after=$(rss_kib "$pid")
  idle_rows+=("| $name | $(mib "$before") | $(mib "$after") |")
  kill "$pid" 2>/dev/null || true
}
port=$(free_port)
idle "iicp-rs bench node" "$port" "$work/bench_node" "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256
port=$(free_port)
idle "iicp-rs \`iicp serve\`" "$port" "$iicp" serve --skip-registration --host 127.0.0.1 --port "$port" \
  --backend-url "http://127.0.0.1:$stub_port/v1" --model stub-model --no-auto-detect-nat
if eval "$(scripts/peers env 2>/dev/null)" 2>/dev/null && [ -n "${IICP_RUST_SDK_BIN:-}" ]; then
  peer_env=(env IICP_AUTO_UPDATE=0 IICP_AUTO_DETECT_NAT=0 IICP_TUNNEL=0)
  port=$(free_port)
  idle "Rust SDK node 0.7.109" "$port" "${peer_env[@]}" "$IICP_RUST_SDK_BIN" serve --skip-registration \
    --host 127.0.0.1 --port "$port" --backend-url "http://127.0.0.1:$stub_port" --model stub-model \
    --no-auto-detect-nat --no-tunnel
  port=$(free_port)
  idle "Python SDK node 0.7.109" "$port" "${peer_env[@]}" "$(dirname "$IICP_PEER_PYTHON")/iicp-node" serve \
    --skip-registration --host 127.0.0.1 --port "$port" --backend-url "http://127.0.0.1:$stub_port" \
    --model stub-model --no-auto-detect-nat --no-tunnel
fi

# ---- idle native connections ---------------------------------------------------------
port=$(free_port)
"$work/bench_node" "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256 $((conns + 1024)) >"$work/node.log" 2>&1 &
node_pid=$!
pids+=("$node_pid")
wait_http "http://127.0.0.1:$port/iicp/health"
sleep 2
echo "== $conns idle native connections" >&2
conn_json=$("$work/idle_conns" "127.0.0.1:$port" "$conns" "$node_pid" 0)
echo "$conn_json" >&2
kill "$node_pid" 2>/dev/null || true
sleep 1

# ---- soak --------------------------------------------------------------------------
port=$(free_port)
"$work/bench_node" "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256 >"$work/soak-node.log" 2>&1 &
node_pid=$!
pids+=("$node_pid")
wait_http "http://127.0.0.1:$port/iicp/health"
echo "== soak: $soak at 64 concurrent" >&2
"$iicp" -q bench --target "http://127.0.0.1:$port" -c 64 -d "$soak" --warmup 0s --json \
  >"$work/soak.json" 2>"$work/soak.err" &
bench_pid=$!
pids+=("$bench_pid")
series="$work/rss.tsv"
: >"$series"
t0=$(date +%s)
while kill -0 "$bench_pid" 2>/dev/null; do
  echo -e "$(( $(date +%s) - t0 ))\t$(rss_kib "$node_pid")" >>"$series"
  sleep 10
done
wait "$bench_pid" || true
soak_stats=$(python3 - "$series" "$work/soak.json" <<'PY'
import json, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
bench = json.load(open(sys.argv[2]))
steady = [r for r in rows if r[0] >= 60] or rows
xs = [r[0] / 60 for r in steady]; ys = [r[1] / 1024 for r in steady]
n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
var = sum((x - mx) ** 2 for x in xs)
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
first = [r[1] / 1024 for r in steady[: max(1, n // 4)]]
last = [r[1] / 1024 for r in steady[-max(1, n // 4):]]
print(json.dumps({
  "rps": round(bench["throughput_rps"]),
  "errors": bench["errors"],
  "samples": len(rows),
  "min": round(min(ys), 1), "max": round(max(ys), 1),
  "first_quarter_mean": round(sum(first) / len(first), 1),
  "last_quarter_mean": round(sum(last) / len(last), 1),
  "slope_mib_per_min": round(slope, 3),
  "series": [[r[0], round(r[1] / 1024, 1)] for r in rows],
}))
PY
)
echo "$soak_stats" >&2

when=$(date -u '+%Y-%m-%d %H:%M UTC')
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
load=$(cut -d' ' -f1-3 /proc/loadavg)
conn_row=$(echo "$conn_json" | jq -r '"| \(.connections) | \(.open) | \((.rss_before_bytes/1048576*10|round)/10) MiB | \((.rss_after_bytes/1048576*10|round)/10) MiB | \(((.rss_after_bytes-.rss_before_bytes)/1048576*10|round)/10) MiB | \((.per_connection_bytes/1024*10|round)/10) KiB |"')
soak_row=$(echo "$soak_stats" | jq -r '"| \(.rps) | \(.errors) | \(.samples) | \(.min) MiB | \(.max) MiB | \(.first_quarter_mean) MiB | \(.last_quarter_mean) MiB | \(.slope_mib_per_min) MiB/min |"')
series_line=$(echo "$soak_stats" | jq -r '[.series[] | "\(.[0])s \(.[1])"] | join(", ")')

section=$(cat <<EOF
<!-- bench-memory:begin (generated by scripts/bench-memory.sh; a rerun replaces this section) -->
## Memory: idle, idle connections, soak

\`\`\`
scripts/bench-memory.sh --soak ${soak} --connections ${conns}
\`\`\`

Measured ${when} at iicp-rs ${rev}; load average before the run ${load}. RSS is
\`VmRSS\` from \`/proc\`. Every node serves the same \`iicp stub-model\` backend.

**Idle node** (3 s after start, and 3 s after 100 sequential tasks):

| node | idle RSS | after 100 tasks |
|---|---|---|
$(printf '%s\n' "${idle_rows[@]}")

**Idle native connections** on our bench node (each opened, handshaken with INIT/ACK and
one PING, then left idle; the \`idle_conns\` example of iicp-transport):

| connections | still open | node RSS before | after | added | per connection |
|---|---|---|---|---|---|
${conn_row}

**Soak**: ${soak} of \`iicp bench -c 64\` (HTTP keep-alive) against our bench node, RSS
sampled every 10 s; the slope is a least-squares fit over the samples after the first
minute.

| tasks/s | errors | samples | min RSS | max RSS | first-quarter mean | last-quarter mean | slope |
|---|---|---|---|---|---|---|---|
${soak_row}

RSS samples (seconds since start, MiB): ${series_line}.
<!-- bench-memory:end -->
EOF
)
echo "$section"
if [ "$write" = 1 ]; then
  write_section "$repo/docs/PERFORMANCE.md" bench-memory "$section"
  echo "bench-memory: wrote docs/PERFORMANCE.md" >&2
fi
