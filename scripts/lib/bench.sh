# Shared by the benchmark scripts (sourced, not run): the processes they start are
# killed on exit, free loopback ports, waiting for an HTTP endpoint, and the PERFORMANCE.md
# section writer.

pids=()
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap bench_cleanup EXIT

# peer_node_args PORT STUB_PORT: how the benchmarks run a peer SDK's node (Python or
# Rust `iicp-node`): no registration, no NAT work or auto-update, no per-origin rate
# limit, max_concurrent 256, behind the stub model on STUB_PORT. Sets the arrays
# `peer_env` (the `env` command before the binary) and `peer_args` (after it).
peer_node_args() {
  peer_env=(env IICP_AUTO_UPDATE=0 IICP_AUTO_DETECT_NAT=0 IICP_TUNNEL=0 IICP_TASK_RATE_LIMIT=0)
  peer_args=(serve --skip-registration --host 127.0.0.1 --port "$1"
    --backend-url "http://127.0.0.1:$2" --model stub-model --max-concurrent 256
    --no-auto-detect-nat --no-tunnel)
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$(basename "$0"): $1 did not come up" >&2
  return 1
}

# write_section FILE MARKER TEXT: replaces <!-- MARKER:begin … MARKER:end --> in FILE
# with TEXT (which carries the markers), or appends TEXT.
write_section() {
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
path, marker, section = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path, encoding="utf-8").read()
pat = re.compile(r"<!-- %s:begin.*?<!-- %s:end -->" % (re.escape(marker), re.escape(marker)), re.S)
text = pat.sub(lambda _: section, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w", encoding="utf-8").write(text)
PY
}
