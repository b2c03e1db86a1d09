#!/usr/bin/env python3
"""Drives the Python IICP SDK (iicp-client 0.7.109) as a real peer for our interop tests.

Our own harness (not SDK code): it imports the SDK and exercises it against our servers,
or runs a tiny OpenAI-compatible stub behind an SDK node. Run it with the interop venv's
python (scripts/peers prints IICP_PEER_PYTHON). Output is one JSON object per line.

  py_peer.py tcp-client HOST PORT N       IicpTcpClient: handshake, ping, N calls, close
  py_peer.py tcp-stream HOST PORT TASK_ID PROMPT
                                          IicpTcpClient: handshake, stream_call() (the SDK's
                                          lifecycle client, which validates every frame), then
                                          a base call() on the same connection
  py_peer.py tcp-discover HOST PORT INTENT
                                          IicpTcpClient: handshake, one discover(), close
  py_peer.py stub-openai PORT             OpenAI-compatible stub (echoes the last user message)
  py_peer.py node serve [FLAGS...]        the SDK's `iicp-node` CLI with its loopback-registration
                                          skip disabled (for loopback testbeds only);
                                          IICP_PEER_HEARTBEAT_S shortens its 30 s heartbeat;
                                          IICP_PEER_NO_CX=1 makes it keyless (no cx_public_key)
  py_peer.py discover DIR_URL             IicpClient.discover_async (plain GET /v1/discover)
  py_peer.py submit                       client harness of the conformance runner
                                          (iicp-conformance --client-cmd): one
                                          IicpClient.submit_async to the directory in
                                          IICP_CONFORMANCE_DIRECTORY for the intent in
                                          IICP_CONFORMANCE_INTENT (plain discovery,
                                          directory order, plaintext to keyless nodes),
                                          node_token from IICP_CONFORMANCE_NODE_TOKEN
  py_peer.py manifest-sign FILE          the SDK's load_and_sign_policy_manifest with a fresh
                                          operator key: prints {"manifest": signed}
  py_peer.py manifest-verify              reads a signed manifest (JSON) on stdin; checks it
                                          with the SDK's canonical_manifest and Ed25519
                                          (cryptography): prints {"ok", "canonical_sha256"}
  py_peer.py chat DIR_URL PROMPT [--sdk-qos]
                                          IicpClient.chat_async with ticketed dispatch
                                          (route_discovery_mode=ticketed: tickets are verified);
                                          --sdk-qos keeps the SDK's default qos (interactive)

The client subcommands replace the SDK's discovery SSRF filter, which drops loopback
endpoints, so that a loopback mesh works; they send qos=best-effort (a fresh mesh has no
task history for interactive gating).
"""
import asyncio
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INTENT = "urn:iicp:intent:llm:chat:v1"


def emit(**kv):
    print(json.dumps(kv), flush=True)


async def tcp_client(host, port, n):
    from iicp_client.iicp_tcp import IicpTcpClient

    async with IicpTcpClient(host, port, timeout_s=10) as c:
        await c.handshake()
        emit(event="handshake", peer_node_id=c.peer_node_id, framing=c.framing_version)
        echo = await c.ping(b"py-echo")
        emit(event="pong", echo=echo.decode() if isinstance(echo, (bytes, bytearray)) else str(echo))
        for i in range(n):
            t0 = time.perf_counter()
            r = await c.call(INTENT, {"messages": [{"role": "user", "content": f"py native #{i}"}]},
                             session_id=f"s{i}", call_id=f"c{i}")
            emit(event="call", i=i, ms=(time.perf_counter() - t0) * 1000, result=r)
    emit(event="closed")


async def tcp_stream(host, port, task_id, prompt):
    from iicp_client.iicp_tcp import IicpTcpClient

    payload = {"messages": [{"role": "user", "content": prompt}]}
    async with IicpTcpClient(host, port, timeout_s=10) as c:
        await c.handshake()
        t0 = time.perf_counter()
        async for frame in c.stream_call(INTENT, payload, task_id=task_id, call_id="py-attempt-1"):
            emit(event="frame", ms=(time.perf_counter() - t0) * 1000, frame=frame)
        r = await c.call(INTENT, payload, session_id="base-1", call_id="base-1")
        emit(event="call", result=r)
    emit(event="closed")


async def tcp_discover(host, port, intent):
    from iicp_client.iicp_tcp import IicpTcpClient

    async with IicpTcpClient(host, port, timeout_s=10) as c:
        await c.handshake()
        emit(event="handshake", peer_node_id=c.peer_node_id, framing=c.framing_version)
        t0 = time.perf_counter()
        nodes = await c.discover(intent)
        emit(event="discover", ms=(time.perf_counter() - t0) * 1000, nodes=nodes)
    emit(event="closed")


class Stub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            return self._send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})
        if path == "/api/tags":
            return self._send(200, {"models": [{"name": "stub-model", "model": "stub-model"}]})
        return self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        req = json.loads(raw or b"{}")
        msgs = req.get("messages") or []
        last = next((m.get("content", "") for m in reversed(msgs) if m.get("role") == "user"), "")
        text = f"STUB: {last}"
        self._send(200, {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model") or "stub-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        })

    def log_message(self, fmt, *args):
        pass


def allow_loopback_nodes():
    """Loopback testbeds only: the SDK's discovery filter drops 127.0.0.1 endpoints."""
    import os
    os.environ["IICP_PROXY_ALLOW_LOOPBACK_NODES"] = "1"
    import iicp_client.client as client_mod
    client_mod._is_ssrf_safe = lambda url: url.startswith(("http://", "https://"))


def sdk_client(dir_url, mode):
    from iicp_client import IicpClient
    from iicp_client.types import ClientConfig
    allow_loopback_nodes()
    return IicpClient(ClientConfig(directory_url=dir_url, tls_verify=False, route_discovery_mode=mode))


async def discover(dir_url):
    from iicp_client.types import DiscoverOptions
    nl = await sdk_client(dir_url, "legacy").discover_async(INTENT, DiscoverOptions(qos="best-effort"))
    for n in nl.nodes:
        emit(event="node", node_id=n.node_id, endpoint=n.endpoint, models=n.models,
             transport_endpoint=getattr(n, "transport_endpoint", None),
             cx_key=bool(getattr(n, "cx_public_key", None)), score=getattr(n, "score", None))
    emit(event="discovered", count=len(nl.nodes))


async def chat(dir_url, prompt, sdk_qos=False):
    from iicp_client.types import ChatMessage, ChatOptions
    cl = sdk_client(dir_url, "ticketed")
    opts = ChatOptions(timeout_ms=30_000) if sdk_qos else ChatOptions(timeout_ms=30_000, qos="best-effort")
    t0 = time.perf_counter()
    r = await cl.chat_async([ChatMessage(role="user", content=prompt)], opts)
    emit(event="chat", ms=(time.perf_counter() - t0) * 1000, node_id=r.iicp_node_id,
         model=r.model, reply=r.choices[0].message.content)


async def submit():
    """One task through the SDK's full pipeline, for the conformance runner's scripted
    directory and nodes (keyless, on loopback)."""
    import os
    os.environ["IICP_CX_ALLOW_PLAINTEXT"] = "1"
    allow_loopback_nodes()
    from iicp_client import IicpClient
    from iicp_client.types import ClientConfig, TaskConstraints, TaskRequest
    cfg = ClientConfig(
        directory_url=os.environ["IICP_CONFORMANCE_DIRECTORY"],
        route_discovery_mode="legacy",
        routing_strategy="deterministic",
        node_token=os.environ.get("IICP_CONFORMANCE_NODE_TOKEN") or None,
    )
    req = TaskRequest(
        intent=os.environ["IICP_CONFORMANCE_INTENT"],
        payload={"messages": [{"role": "user", "content": "conformance"}]},
        constraints=TaskConstraints(timeout_ms=10_000, qos="best-effort"),
    )
    try:
        r = await IicpClient(cfg).submit_async(req)
        emit(event="submitted", task_id=r.task_id, status=str(getattr(r, "status", "")))
    except Exception as e:  # the runner reads the requests its servers saw, not this
        emit(event="error", type=type(e).__name__, code=str(getattr(e, "code", "")), message=str(e))


def node(args):
    """The SDK node CLI, with only its loopback/private-endpoint registration skip disabled."""
    import os
    import iicp_client.cli as cli
    import iicp_client.node as node_mod
    cli.endpoint_is_local_or_private = lambda endpoint: False
    # Tests only: a shorter heartbeat period than the SDK's fixed 30 s.
    if os.environ.get("IICP_PEER_HEARTBEAT_S"):
        node_mod._HEARTBEAT_INTERVAL = float(os.environ["IICP_PEER_HEARTBEAT_S"])
    # Tests only: a keyless node, through the SDK's own fallback when its IICP-CX key
    # cannot be loaded (it then registers without cx_public_key).
    if os.environ.get("IICP_PEER_NO_CX") == "1":
        import iicp_client._confidentiality as conf

        def no_key(*_args, **_kwargs):
            raise RuntimeError("IICP_PEER_NO_CX=1")
        conf.load_or_create_node_cx_key = no_key
    sys.argv = ["iicp-node", *args]
    sys.exit(cli.main())


def manifest_sign(path):
    from iicp_client.identity import OperatorIdentity
    from iicp_client.policy_manifest import load_and_sign_policy_manifest

    op = OperatorIdentity.generate(display_name="interop")
    emit(manifest=load_and_sign_policy_manifest(path, op))


def manifest_verify():
    import base64
    import hashlib
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from iicp_client.policy_manifest import canonical_manifest

    manifest = json.load(sys.stdin)
    canon = canonical_manifest(manifest)
    sig = manifest["signature"]
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
    try:
        key.verify(base64.b64decode(sig["signature"]), canon)
        ok = True
    except Exception:  # noqa: BLE001 - any failure is a failed verification
        ok = False
    emit(ok=ok, canonical_sha256=hashlib.sha256(canon).hexdigest())


def main():
    cmd = sys.argv[1]
    if cmd == "tcp-client":
        asyncio.run(tcp_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif cmd == "tcp-discover":
        asyncio.run(tcp_discover(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    elif cmd == "tcp-stream":
        asyncio.run(tcp_stream(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    elif cmd == "stub-openai":
        srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Stub)
        emit(event="listening", port=srv.server_address[1])
        srv.serve_forever()
    elif cmd == "node":
        node(sys.argv[2:])
    elif cmd == "discover":
        asyncio.run(discover(sys.argv[2]))
    elif cmd == "submit":
        asyncio.run(submit())
    elif cmd == "chat":
        asyncio.run(chat(sys.argv[2], sys.argv[3], "--sdk-qos" in sys.argv[4:]))
    elif cmd == "manifest-sign":
        manifest_sign(sys.argv[2])
    elif cmd == "manifest-verify":
        manifest_verify()
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
