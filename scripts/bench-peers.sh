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
# multiplexed connection and on 8; HTTP sequential (1 worker: per-task overhead). The
# whole set is repeated RUNS times (default 3) and every figure is reported as a range
# over the repetitions, with the load average read before each one and the machine
# (CPU model and cores from /proc/cpuinfo). Then, per node, a fixed number of tasks
# (SYSCALL_TASKS, default 2000) at 64 concurrent over HTTP and over one native
# connection counts the node's context switches (/proc/PID/task/*/status) and, in a
# second pass under `strace -c -f -p PID`, its system calls: per task, machine
# independent. The Python SDK node is left out of those passes (SYSCALL_PYTHON=1 adds
# it; at ~35 tasks/s it takes minutes).
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
runs_n=${RUNS:-3}
syscall_tasks=${SYSCALL_TASKS:-2000}
command -v strace >/dev/null || { echo "bench-peers: strace is needed for the system-call counts" >&2; exit 1; }
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
# the same node with one runtime worker per core (`iicp --worker-threads N`, the default
# before ADR 0021), for comparison only
cores=$(nproc)
port=$(free_port)
start_node "iicp-rs-${cores}t" "$port" "$work/bench_node" "$port" "http://127.0.0.1:$stub_port/v1" stub-model 256 1024 "$cores"
port=$(free_port)
peer_node_args "$port" "$stub_port"
start_node "rust-sdk" "$port" "${peer_env[@]}" "$rs_node" "${peer_args[@]}"
port=$(free_port)
peer_node_args "$port" "$stub_port"
start_node "python-sdk" "$port" "${peer_env[@]}" "$py_node" "${peer_args[@]}"
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
# read before any measured run (the label in the section says "before")
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
loads=()
for rep in $(seq 1 "$runs_n"); do
  loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")
  echo "== repetition $rep of $runs_n (load average before it: ${loads[-1]})" >&2
  for run in "${runs[@]}"; do
    IFS='|' read -r key label scheme flags <<<"$run"
    for i in "${!names[@]}"; do
      name=${names[$i]}
      out="$work/$name-$key-$rep"
      echo "== $name: $label" >&2
      # shellcheck disable=SC2086
      if "$iicp" -q bench --target "$scheme://127.0.0.1:${ports[$i]}" $flags -d "$duration" \
          --payload-bytes "$payload" --watch-pid "${procs[$i]}" --watch-pid "$stub_pid" --json \
          >"$out.json" 2>"$out.err"; then
        jq -c --arg node "$name" --arg run "$key" --arg title "$label" --argjson rep "$rep" \
          '{node:$node, run:$run, title:$title, rep:$rep, r:.}' "$out.json" >>"$results"
      else
        echo "   failed: $(tail -n 1 "$out.err")" >&2
        jq -nc --arg node "$name" --arg run "$key" --arg title "$label" --argjson rep "$rep" \
          --arg err "$(tail -n 1 "$out.err")" '{node:$node, run:$run, title:$title, rep:$rep, error:$err}' >>"$results"
      fi
    done
  done
done

# ---- machine-independent figures: context switches and system calls per task -----
ctxsw() { # pid: voluntary + involuntary context switches of all its threads
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {n += $2} END {print n + 0}'
}
sys_runs=(
  "http64|HTTP keep-alive, 64 concurrent|http|-c 64"
  "native64|native, 64 concurrent, 1 connection|iicp|-c 64 --connections 1"
)
sysres="$work/syscalls.tsv"
: >"$sysres"
for run in "${sys_runs[@]}"; do
  IFS='|' read -r key label scheme flags <<<"$run"
  for i in "${!names[@]}"; do
    name=${names[$i]}
    [ "$name" = python-sdk ] && [ "${SYSCALL_PYTHON:-0}" != 1 ] && continue
    pid=${procs[$i]}
    target="$scheme://127.0.0.1:${ports[$i]}"
    echo "== $name: $label, $syscall_tasks tasks: context switches, then system calls (strace)" >&2
    c0=$(ctxsw "$pid")
    # shellcheck disable=SC2086
    "$iicp" -q bench --target "$target" $flags -n "$syscall_tasks" --warmup 0s \
      --payload-bytes "$payload" >/dev/null 2>&1 || { echo "   failed" >&2; continue; }
    c1=$(ctxsw "$pid")
    strace -c -f -p "$pid" -o "$work/strace-$name-$key.txt" 2>"$work/strace-$name-$key.err" &
    spid=$!
    # wait until every thread is attached
    for _ in $(seq 1 50); do
      [ "$(grep -c attached "$work/strace-$name-$key.err" 2>/dev/null)" -ge "$(ls /proc/"$pid"/task | wc -l)" ] && break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    "$iicp" -q bench --target "$target" $flags -n "$syscall_tasks" --warmup 0s \
      --payload-bytes "$payload" >/dev/null 2>&1 || echo "   failed under strace" >&2
    kill -INT "$spid"
    wait "$spid" 2>/dev/null || true
    calls=$(awk '$NF == "total" {print $4}' "$work/strace-$name-$key.txt")
    top=$(awk 'NR > 2 && $1 ~ /^[0-9.]+$/ && $NF != "total" {print $NF "=" $4}' "$work/strace-$name-$key.txt" |
      sort -t= -k2 -nr | head -n 4 | tr '\n' ' ')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$name" "$syscall_tasks" "$((c1 - c0))" "${calls:-0}" "$top" >>"$sysres"
  done
done
echo "== stub model requests by path" >&2
kill "$stub_pid" 2>/dev/null || true
sleep 0.5
cat "$work/stub.log" >&2

# ---- the table -----------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
cores=$(grep -c '^processor' /proc/cpuinfo)
mem=$(free -g | awk '/^Mem:/ {print $2}')
rustv=$(rustc --version | cut -d' ' -f2)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# edits under docs/ (this script writes one) do not change what was measured
dirty=$(git diff --quiet HEAD -- . ':!docs' 2>/dev/null || echo "+uncommitted changes")
pyv=$("$IICP_PEER_PYTHON" -c 'import importlib.metadata as m; print(m.version("iicp-client"))')
rsv=$("$rs_node" --version 2>/dev/null | awk '{print $NF}')
when=$(date -u '+%Y-%m-%d %H:%M UTC')
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
host=$(hostname)

table=$(jq -rs '
  def f0: (. * 1 | round | tostring);
  def us: if . >= 1000 then ((. / 10 | round) / 100 | tostring) + " ms" else ((. | round) | tostring) + " µs" end;
  def cpu: (. * 1000 | round);
  def mib: if . == null then "-" else ((. / 1048576 * 10 | round) / 10 | tostring) + " MiB" end;
  def range(f): (map(f) | if length == 0 then "-" elif min == max then (min | tostring) else "\(min)–\(max)" end);
  # numbers in, "min–max" out (min and max taken on the numbers, not on their text)
  def urange: (if length == 0 then "-" elif min == max then (min | us) else "\(min | us) – \(max | us)" end);
  def node: (.r.watched | map(select(.pid != null)) | .[0]);
  (map(select(.node == "iicp-rs" and .r != null)) | map({key: "\(.run)/\(.rep)", value: .r.throughput_rps}) | from_entries) as $ours
  | (map(select(.node == "iicp-rs" and .r != null)) | map({key: "\(.run)/\(.rep)", value: (node | .cpu_seconds_per_1000)}) | from_entries) as $ourcpu
  | "| run | node | tasks/s: best (range) | ours ÷ theirs (range) | p50 (range) | p99 (range) | errors | node CPU per task, µs (range) | our node CPU ÷ theirs (range) | node RSS (max) | bench CPU per task, µs (range) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
    (to_entries | map(.value + {i: .key}) | group_by(.run + "/" + .node) | sort_by(.[0].i) | .[]
      | . as $g | ($g | map(select(.r != null))) as $ok | $g[0] as $h
      | if ($ok | length) == 0 then
          "| \($h.title) | \($h.node) | failed: \($g[0].error) | | | | | | | | |"
        else
          ($ok | map(.r.throughput_rps)) as $tps
          | ($ok | map(select(.r.throughput_rps > 0 and ($ours["\(.run)/\(.rep)"] != null)) | ($ours["\(.run)/\(.rep)"] / .r.throughput_rps * 10 | round / 10))) as $ratios
          | ($ok | map(select((node | .cpu_seconds_per_1000) > 0 and ($ourcpu["\(.run)/\(.rep)"] != null)) | ($ourcpu["\(.run)/\(.rep)"] / (node | .cpu_seconds_per_1000) * 1000 | round / 1000))) as $cpuratios
          | "| \($h.title) | \($h.node) | \($tps | max | f0) (\($tps | min | f0)–\($tps | max | f0), \($ok | length) runs) | "
            + (if ($h.node | startswith("iicp-rs")) or ($ratios | length) == 0 then "—"
               elif ($ratios | min) == ($ratios | max) then "\($ratios | min)×"
               else "\($ratios | min)–\($ratios | max)×" end)
            + " | \($ok | map(.r.latency.p50_us) | urange) | \($ok | map(.r.latency.p99_us) | urange)"
            + " | \($ok | map(.r.errors) | add) | \($ok | range(node | .cpu_seconds_per_1000 | cpu))"
            + (if ($h.node | startswith("iicp-rs")) or ($cpuratios | length) == 0 then " | —"
               elif ($cpuratios | min) == ($cpuratios | max) then " | \($cpuratios | min)"
               else " | \($cpuratios | min)–\($cpuratios | max)" end)
            + " | \($ok | map(node | .rss_bytes) | max | mib) | \($ok | range(.r.generator.cpu_seconds_per_1000 | cpu)) |"
        end)
' "$results")

# per repetition: our node's CPU per task against the Rust SDK node's, split into user
# and system time
rep_table=$(jq -rs '
  def node: (.r.watched | map(select(.pid != null)) | .[0]);
  def us: (. * 10000 | round / 10);
  def split: (node | if .user_seconds_per_1000 == null then "\(.cpu_seconds_per_1000 | us)"
    else "\(.cpu_seconds_per_1000 | us) (\(.user_seconds_per_1000 | us) + \(.system_seconds_per_1000 | us))" end);
  "| run | repetition | ours: node CPU per task, µs (user + system) | Rust SDK node: the same | ours ÷ theirs |",
  "|---|---|---|---|---|",
  (to_entries | map(.value + {i: .key})
    | map(select(.r != null and (.node == "iicp-rs" or .node == "rust-sdk")))
    | group_by(.run) | sort_by(.[0].i) | .[]
    | group_by(.rep) | sort_by(.[0].rep) | .[]
    | (map(select(.node == "iicp-rs")) | .[0]) as $o
    | (map(select(.node == "rust-sdk")) | .[0]) as $t
    | select($o != null and $t != null and ($t | node | .cpu_seconds_per_1000) > 0)
    | (($o | node | .cpu_seconds_per_1000) / ($t | node | .cpu_seconds_per_1000) * 1000 | round / 1000) as $ratio
    | "| \($o.title) | \($o.rep) | \($o | split) | \($t | split) | "
      + (if $ratio <= 0.2 then "**\($ratio)**" else "\($ratio)" end) + " |")
' "$results")

sys_table=$(
  echo "| run | node | tasks | context switches per task | system calls per task | most frequent calls (count) |"
  echo "|---|---|---|---|---|---|"
  while IFS=$'\t' read -r label name n cs calls top; do
    echo "| $label | $name | $n | $(awk -v a="$cs" -v n="$n" 'BEGIN {printf "%.2f", a / n}') | $(awk -v a="$calls" -v n="$n" 'BEGIN {printf "%.2f", a / n}') | $top|"
  done <"$sysres"
)
loads_list=$(printf '%s; ' "${loads[@]}")

section=$(cat <<EOF
<!-- bench-peers:begin (generated by scripts/bench-peers.sh; a rerun replaces this section) -->
## Node throughput and per-task overhead against the Python and Rust SDK nodes

All three nodes ran at the same time on this machine, each with \`--skip-registration\`
(ours: the \`bench_node\` example), \`max_concurrent\` 256 and no per-origin rate limit,
behind the same \`iicp stub-model\` backend (zero delay, fixed small completion), and were
loaded one after the other by \`iicp bench\` with identical settings: ${duration} measured
after a 1 s warm-up, the whole set repeated ${runs_n} times (each figure is the range over
the repetitions; "ours ÷ theirs" is computed within each repetition), ${payload}-byte chat payloads, plaintext tasks (no IICP-CX), a fresh
UUID task id per task. "ours ÷ theirs" is our node's throughput (\`iicp-rs\`, default
runtime: the cores less one worker thread, ADR 0021 — on two cores a single-threaded
runtime) divided by that node's in the same run; \`iicp-rs-${cores}t\` is the same node with
one runtime worker per core (\`iicp --worker-threads ${cores}\`, the default before ADR 0021),
shown for comparison. CPU per task is user + system time of the node process (and of the
load generator) over the measured window divided by the tasks served (10 ms tick
resolution); RSS is at the end of the run; "our node CPU ÷ theirs" is \`iicp-rs\`'s CPU per task divided by
that node's, within each repetition.

\`\`\`
scripts/bench-peers.sh --duration ${duration}
\`\`\`

Machine: ${cpu}, ${cores} vCPU (/proc/cpuinfo), ${mem} GiB, host ${host}, Linux $(uname -r);
load average before the first run ${load_start}, before each repetition ${loads_list%; },
after the last ${load_end} (other work shares these cores). Versions: iicp-rs ${rev}${dirty:+ (${dirty})},
Rust ${rustv}; Python SDK iicp-client ${pyv} (\`iicp-node serve\`); Rust SDK iicp-client
${rsv} (\`iicp-node serve\`). Measured ${when}.

${table}

The load generator, the stub and the three nodes share the same 2 cores, so a node's
throughput at 64 concurrent is bounded by the CPU the whole chain needs per task
(generator + node + stub, two loopback TCP hops); "node CPU per task" is the number that
compares the nodes' own cost.

Each repetition, our node's CPU per task against the Rust SDK node's, split into user
and system time (/proc/PID/stat utime and stime; bold: at most ⅕, issue 22's target at
64 concurrent):

${rep_table}

Machine-independent figures, per node and ${syscall_tasks} tasks at 64 concurrent
(\`iicp bench -n ${syscall_tasks} --warmup 0s\`): context switches of all the node's threads
(from /proc/PID/task/*/status, a pass without tracing) and its system calls (a second
pass under \`strace -c -f -p PID\`; tracing slows the node, which lets more replies share
a write, so read it as an upper bound on what the node needs), each divided by the tasks.
A node that forwards to an HTTP backend needs at least 4 calls per task (read the request,
write to the backend, read its answer, write the reply).

${sys_table}
<!-- bench-peers:end -->
EOF
)

echo "$section"
if [ "$write" = 1 ]; then
  write_section "$repo/docs/PERFORMANCE.md" bench-peers "$section"
  echo "bench-peers: wrote docs/PERFORMANCE.md" >&2
fi
