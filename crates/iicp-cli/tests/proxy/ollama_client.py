"""Drives `iicp proxy` with the official `ollama` Python library (tests/proxy_clients.rs).

usage: ollama_client.py CASE BASE_URL API_KEY [MODEL]
The host comes from OLLAMA_HOST (as users set it) when BASE_URL is "env".
Prints one JSON object: what the library returned or raised.
"""
import json
import sys
import time

import ollama

case, base, key = sys.argv[1:4]
model = sys.argv[4] if len(sys.argv) > 4 else "iicp"
headers = {"Authorization": "Bearer " + key}
client = ollama.Client(headers=headers) if base == "env" else ollama.Client(host=base, headers=headers)
user = [{"role": "user", "content": "hello proxy"}]


def out(**kw):
    print(json.dumps(kw), flush=True)


try:
    if case == "chat":
        r = client.chat(model=model, messages=user, stream=False, options={"temperature": 0.1})
        out(text=r.message.content, role=r.message.role, done=r.done, done_reason=r.done_reason,
            model=r.model, eval_count=r.eval_count)
    elif case == "stream":
        parts = list(client.chat(model=model, messages=user, stream=True))
        out(text="".join(p.message.content or "" for p in parts), lines=len(parts),
            done=[p.done for p in parts], done_reason=parts[-1].done_reason)
    elif case == "generate":
        r = client.generate(model=model, prompt="hello generate", stream=False)
        s = list(client.generate(model=model, prompt="hello generate", stream=True))
        out(text=r.response, done=r.done, streamed="".join(p.response for p in s), lines=len(s))
    elif case == "timed":
        t0 = time.monotonic()
        at, text = [], ""
        for p in client.chat(model=model, messages=user, stream=True):
            if p.message.content:
                at.append(time.monotonic() - t0)
                text += p.message.content
        out(text=text, at=at)
    elif case == "show":
        r = client.show(model)
        out(details=r.details is not None)
    elif case == "image":
        r = client.chat(model=model, stream=False, messages=[
            {"role": "user", "content": "describe", "images": ["iVBORw0KGgo="]}])
        out(text=r.message.content)
    elif case == "tools":
        tools = [{"type": "function", "function": {
            "name": "lookup", "description": "look a word up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
        msgs = [{"role": "user", "content": "weather in Berlin"}]
        first = client.chat(model=model, messages=msgs, tools=tools, stream=False)
        calls = [{"name": c.function.name, "arguments": dict(c.function.arguments)} for c in first.message.tool_calls or []]
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
        msgs.append({"role": "tool", "content": "sunny, 21 C"})
        second = client.chat(model=model, messages=msgs, tools=tools, stream=False)
        out(calls=calls, text=second.message.content)
    elif case == "models":
        tags = client.list()
        names = [m.model for m in tags.models]
        show = client.show(names[0]) if names else None
        out(names=names, show_details=show is not None and show.details is not None,
            version=client._request_raw("GET", "/api/version").json().get("version"))
    else:
        raise SystemExit("unknown case " + case)
except ollama.ResponseError as e:
    out(error=type(e).__name__, status=e.status_code, message=e.error)
