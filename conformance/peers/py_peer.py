#!/usr/bin/env python3
"""Drives the Python IICP SDK (iicp-client 0.7.109) as a real peer for our interop tests.

Our own harness (not SDK code): it imports the SDK and exercises it against our servers,
or runs a tiny OpenAI-compatible stub behind an SDK node. Run it with the interop venv's
python (scripts/peers prints IICP_PEER_PYTHON). Output is one JSON object per line.

  py_peer.py tcp-client HOST PORT N       IicpTcpClient: handshake, ping, N calls, close
  py_peer.py stub-openai PORT             OpenAI-compatible stub (echoes the last user message)
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


def main():
    cmd = sys.argv[1]
    if cmd == "tcp-client":
        asyncio.run(tcp_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif cmd == "stub-openai":
        srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Stub)
        emit(event="listening", port=srv.server_address[1])
        srv.serve_forever()
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
