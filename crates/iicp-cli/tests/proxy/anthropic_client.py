"""Drives `iicp proxy` with the official `anthropic` Python library (tests/proxy_clients.rs).

usage: anthropic_client.py CASE BASE_URL API_KEY [MODEL]
Prints one JSON object: what the library returned or raised.
"""
import json
import sys
import time

import anthropic

case, base, key = sys.argv[1:4]
model = sys.argv[4] if len(sys.argv) > 4 else "iicp"
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=30)
user = [{"role": "user", "content": "hello proxy"}]


def out(**kw):
    print(json.dumps(kw), flush=True)


try:
    if case == "message":
        raw = client.messages.with_raw_response.create(model=model, max_tokens=64, system="be brief", messages=user)
        m = raw.parse()
        out(text="".join(b.text for b in m.content if b.type == "text"), model=m.model, id=m.id,
            type=m.type, role=m.role, stop_reason=m.stop_reason,
            input_tokens=m.usage.input_tokens, output_tokens=m.usage.output_tokens,
            headers={k.lower(): v for k, v in raw.headers.items()})
    elif case == "stream":
        events = []
        text = ""
        with client.messages.stream(model=model, max_tokens=64, messages=user) as s:
            for ev in s:
                events.append(ev.type)
            final = s.get_final_message()
            text = "".join(b.text for b in final.content if b.type == "text")
        out(text=text, events=events, stop_reason=final.stop_reason, output_tokens=final.usage.output_tokens)
    elif case == "timed":
        t0 = time.monotonic()
        at, text = [], ""
        with client.messages.stream(model=model, max_tokens=64, messages=user) as s:
            for t in s.text_stream:
                if t:
                    at.append(time.monotonic() - t0)
                    text += t
        out(text=text, at=at)
    elif case == "too_large":
        big = [{"role": "user", "content": "x" * 8192}]
        client.messages.create(model=model, max_tokens=16, messages=big)
        out(answered=True)
    elif case == "image":
        msg = [{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        ]}]
        m = client.messages.create(model=model, max_tokens=32, messages=msg)
        out(text=m.content[0].text)
    elif case == "tools":
        tools = [{"name": "lookup", "description": "look a word up",
                  "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
        msgs = [{"role": "user", "content": "weather in Berlin"}]
        first = client.messages.create(model=model, max_tokens=64, messages=msgs, tools=tools)
        uses = [b for b in first.content if b.type == "tool_use"]
        msgs.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
        msgs.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": uses[0].id if uses else "none", "content": "sunny, 21 C"}]})
        second = client.messages.create(model=model, max_tokens=64, messages=msgs, tools=tools)
        out(stop_reason=first.stop_reason, uses=[{"id": u.id, "name": u.name, "input": u.input} for u in uses],
            text="".join(b.text for b in second.content if b.type == "text"))
    elif case == "models":
        out(ids=[m.id for m in client.models.list()])
    else:
        raise SystemExit("unknown case " + case)
except anthropic.APIStatusError as e:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", {}) if isinstance(body, dict) else {}
    out(error=type(e).__name__, status=e.status_code, type=err.get("type"), code=err.get("code"),
        message=err.get("message"), server=e.response.headers.get("server"))
