#!/usr/bin/env bash
# Node benchmark, side by side: our node, the Python SDK node and the Rust SDK node
# (iicp-client 0.7.109, see docs/interop.md), each serving with
# --skip-registration behind the SAME `iicp stub-model` backend, loaded in turn by
# `iicp bench` with identical settings. Writes the comparison table into
# docs/PERFORMANCE.md between the bench-peers markers (a rerun replaces it).
#
#   scripts/bench-peers.sh [--duration 10s] [--no-write]
#
# Runs per node: HTTP keep-alive at 64 concurrent; native CALLs at 64 concurrent on one
# multiplexed connection and on 8; HTTP sequential (1 worker: per-task overhead).
# Every node gets max_concurrent 256 and its per-origin task rate limit off
# (IICP_TASK_RATE_LIMIT=0 for the peers), so admission limits do not decide the result.
# Our node is the `bench_node` example of iicp-node (BackendHandler over the stub).
# Env: CARGO_TARGET_DIR (default ~/.cache/iicp-rs-target), BENCH_PAYLOAD (256).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
duration=10s
write=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --no-write) write=0; shift ;;
    *) echo "usage: scripts/bench-peers.sh [--duration 10s] [--no-write]" >&2; exit 2 ;;
  esac
done
payload=${BENCH_PAYLOAD:-256}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/iicp-rs-target}

echo "== peers" >&2
eval "$(scripts/peers env)"
py_node="$(dirname "${IICP_PEER_PYTHON:?the Python peer SDK is not installed}")/iicp-node"
rs_node="${IICP_RUST_SDK_BIN:?the Rust peer SDK is not installed}"

echo "== building (release)" >&2
cargo build --release --locked -p iicp-cli -p iicp-node --bin iicp --example bench_node >&2
work=$(mktemp -d /tmp/iicp-bench-peers.XXXXXX)
# private copies: a concurrent rebuild must not swap the binaries mid-run
cp "$CARGO_TARGET_DIR/release/iicp" "$CARGO_TARGET_DIR/release/examples/bench_node" "$work/"
iicp="$work/iicp"

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

stub_port=$(free_port)
"$iicp" stub-model --port "$stub_port" >"$work/stub.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$stub_port/v1/models"

peer_env=(env IICP_AUTO_UPDATE=0 IICP_AUTO_DETECT_NAT=0 IICP_TUNNEL=0 IICP_TASK_RATE_LIMIT=0)
names=(); ports=(); procs=()
start_node() { # name port cmd...
  local name=$1 port=$2; shift 2
  mkdir -p "$work/home-$name"
  HOME="$work/home-$name" IICP_HOME="$work/home-$name/.iicp" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name"); ports+=("$port"); procs+=($!)
  wait_http "http://127.0.0.1:$port/iicp/health"
}

port=$(free_port)
start_node "iicp-rs" "$port" "$work/bench_node" "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256
# the same node on one runtime thread (`iicp --worker-threads 1`), for comparison only
port=$(free_port)
start_node "iicp-rs-1t" "$port" "$work/bench_node" "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256 1024 1
port=$(free_port)
start_node "rust-sdk" "$port" "${peer_env[@]}" "$rs_node" serve --skip-registration \
  --host 127.0.0.1 --port "$port" --backend-url "http://127.0.0.1:$stub_port" --model stub-model \
  --max-concurrent 256 --no-auto-detect-nat --no-tunnel
port=$(free_port)
start_node "python-sdk" "$port" "${peer_env[@]}" "$py_node" serve --skip-registration \
  --host 127.0.0.1 --port "$port" --backend-url "http://127.0.0.1:$stub_port" --model stub-model \
  --max-concurrent 256 --no-auto-detect-nat --no-tunnel
stub_pid=${pids[0]}

# one task through each node first: the stub must answer what each node sends
for i in "${!names[@]}"; do
  "$iicp" -q bench --target "http://127.0.0.1:${ports[$i]}" -c 1 -n 3 --warmup 0s >/dev/null
done

runs=(
  "http64|HTTP keep-alive, 64 concurrent|http|-c 64"
  "native64|native, 64 concurrent, 1 connection|iicp|-c 64 --connections 1"
  "native64x8|native, 64 concurrent, 8 connections|iicp|-c 64 --connections 8"
  "http1|HTTP keep-alive, sequential (1 worker)|http|-c 1"
)
results="$work/results.jsonl"
: >"$results"
for run in "${runs[@]}"; do
  IFS='|' read -r key label scheme flags <<<"$run"
  for i in "${!names[@]}"; do
    name=${names[$i]}
    echo "== $name: $label" >&2
    # shellcheck disable=SC2086
    if "$iicp" -q bench --target "$scheme://127.0.0.1:${ports[$i]}" $flags -d "$duration" \
        --payload-bytes "$payload" --watch-pid "${procs[$i]}" --watch-pid "$stub_pid" --json \
        >"$work/$name-$key.json" 2>"$work/$name-$key.err"; then
      jq -c --arg node "$name" --arg run "$key" --arg title "$label" \
        '{node:$node, run:$run, title:$title, r:.}' "$work/$name-$key.json" >>"$results"
    else
      echo "   failed: $(tail -n 1 "$work/$name-$key.err")" >&2
      jq -nc --arg node "$name" --arg run "$key" --arg title "$label" \
        --arg err "$(tail -n 1 "$work/$name-$key.err")" '{node:$node, run:$run, title:$title, error:$err}' >>"$results"
    fi
  done
done
echo "== stub model requests by path" >&2
kill "$stub_pid" 2>/dev/null || true
sleep 0.5
cat "$work/stub.log" >&2

# ---- the table -----------------------------------------------------------------
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
mem=$(free -g | awk '/^Mem:/ {print $2}')
rustv=$(rustc --version | cut -d' ' -f2)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git diff --quiet 2>/dev/null || echo "+uncommitted changes")
pyv=$("$IICP_PEER_PYTHON" -c 'import importlib.metadata as m; print(m.version("iicp-client"))')
rsv=$("$rs_node" --version 2>/dev/null | awk '{print $NF}')
when=$(date -u '+%Y-%m-%d %H:%M UTC')
load=$(cut -d' ' -f1-3 /proc/loadavg)

table=$(jq -rs '
  def f0: (. * 1 | round | tostring);
  def us: if . >= 1000 then ((. / 10 | round) / 100 | tostring) + " ms" else ((. | round) | tostring) + " µs" end;
  def cpu: (.cpu_seconds_per_1000 * 1000 | round | tostring) + " µs";
  def mib: if . == null then "-" else ((. / 1048576 * 10 | round) / 10 | tostring) + " MiB" end;
  (map(select(.node == "iicp-rs" and .r != null)) | map({key: .run, value: .r.throughput_rps}) | from_entries) as $ours
  | "| run | node | tasks/s | ours ÷ theirs | p50 | p90 | p99 | max | errors | node CPU per task | node RSS | bench CPU per task |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    (.[] | if .r == null then
        "| \(.title) | \(.node) | failed: \(.error) | | | | | | | | | |"
      else
        .r as $r | ($r.watched | map(select(.pid != null)) | .[0]) as $n
        | "| \(.title) | \(.node) | \($r.throughput_rps | f0) | "
          + (if (.node | startswith("iicp-rs")) or $r.throughput_rps == 0 then "—" else (($ours[.run] // 0) / $r.throughput_rps * 10 | round / 10 | tostring) + "×" end)
          + " | \($r.latency.p50_us | us) | \($r.latency.p90_us | us) | \($r.latency.p99_us | us) | \($r.latency.max_us | us) | \($r.errors)"
          + " | \($n | cpu) | \($n.rss_bytes | mib) | \($r.generator | cpu) |"
      end)
' "$results")

section=$(cat <<EOF
<!-- bench-peers:begin (generated by scripts/bench-peers.sh; a rerun replaces this section) -->
## Node throughput and per-task overhead against the Python and Rust SDK nodes

All three nodes ran at the same time on this machine, each with \`--skip-registration\`
(ours: the \`bench_node\` example), \`max_concurrent\` 256 and no per-origin rate limit,
behind the same \`iicp stub-model\` backend (zero delay, fixed small completion), and were
loaded one after the other by \`iicp bench\` with identical settings: ${duration} measured
after a 1 s warm-up, ${payload}-byte chat payloads, plaintext tasks (no IICP-CX), a fresh
UUID task id per task. "ours ÷ theirs" is our node's throughput (\`iicp-rs\`, default
runtime: one worker thread per core) divided by that node's in the same run;
\`iicp-rs-1t\` is the same node on one runtime thread (\`iicp --worker-threads 1\`),
shown for comparison. CPU per task is user + system time of the node process (and of the
load generator) over the measured window divided by the tasks served (10 ms tick
resolution); RSS is at the end of the run.

\`\`\`
scripts/bench-peers.sh --duration ${duration}
\`\`\`

Machine: ${cpu}, $(nproc) vCPU, ${mem} GiB, Linux $(uname -r); load average before the
run ${load} (other work shares these cores). Versions: iicp-rs ${rev}${dirty:+ (${dirty})},
Rust ${rustv}; Python SDK iicp-client ${pyv} (\`iicp-node serve\`); Rust SDK iicp-client
${rsv} (\`iicp-node serve\`). Measured ${when}.

${table}

The load generator, the stub and the three nodes share the same 2 cores, so a node's
throughput at 64 concurrent is bounded by the CPU the whole chain needs per task
(generator + node + stub, two loopback TCP hops); "node CPU per task" is the number that
compares the nodes' own cost.
<!-- bench-peers:end -->
EOF
)

echo "$section"
if [ "$write" = 1 ]; then
  write_section "$repo/docs/PERFORMANCE.md" bench-peers "$section"
  echo "bench-peers: wrote docs/PERFORMANCE.md" >&2
fi
