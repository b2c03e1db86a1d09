"""Drives `iicp proxy` with the official `openai` Python library (tests/proxy_clients.rs).

usage: openai_client.py CASE BASE_URL API_KEY [MODEL]
Prints one JSON object: what the library returned or raised.
"""
import json
import sys
import time

import openai

case, base, key = sys.argv[1:4]
model = sys.argv[4] if len(sys.argv) > 4 else "iicp"
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
user = [{"role": "user", "content": "hello proxy"}]


def out(**kw):
    print(json.dumps(kw), flush=True)


try:
    if case == "chat":
        raw = client.chat.completions.with_raw_response.create(model=model, messages=user, temperature=0.2, max_tokens=64)
        c = raw.parse()
        out(text=c.choices[0].message.content, model=c.model, id=c.id, object=c.object,
            finish=c.choices[0].finish_reason, total_tokens=c.usage.total_tokens,
            headers={k.lower(): v for k, v in raw.headers.items()})
    elif case == "stream":
        chunks = list(client.chat.completions.create(model=model, messages=user, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        usage = [ch.usage.total_tokens for ch in chunks if ch.usage is not None]
        out(text=text, chunks=len(chunks), finish=finish, usage=usage,
            roles=[ch.choices[0].delta.role for ch in chunks if ch.choices and ch.choices[0].delta.role])
    elif case == "stream_plain":
        chunks = list(client.chat.completions.create(model=model, messages=user, stream=True))
        out(text="".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
            usage=[ch.usage for ch in chunks if getattr(ch, "usage", None) is not None])
    elif case == "timed":
        # arrival time of each content chunk, relative to the request
        t0 = time.monotonic()
        at, text = [], ""
        for ch in client.chat.completions.create(model=model, messages=user, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                at.append(time.monotonic() - t0)
                text += ch.choices[0].delta.content
        out(text=text, at=at)
    elif case == "cancel":
        # read three content chunks, then hang up
        s = client.chat.completions.create(model=model, messages=user, stream=True)
        got = 0
        for ch in s:
            if ch.choices and ch.choices[0].delta.content:
                got += 1
                if got == 3:
                    break
        s.close()
        out(read=got)
    elif case == "busy":
        # one stream holds the proxy's only slot while a second chat is asked
        s = client.chat.completions.create(model=model, messages=user, stream=True)
        first = next(iter(s))
        try:
            client.chat.completions.create(model=model, messages=user)
            out(second="answered")
        finally:
            s.close()
    elif case == "too_large":
        big = [{"role": "user", "content": "x" * 8192}]
        client.chat.completions.create(model=model, messages=big)
        out(answered=True)
    elif case == "retrieve":
        m = client.models.retrieve(model)
        out(id=m.id)
    elif case == "image":
        msg = [{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]
        c = client.chat.completions.create(model=model, messages=msg)
        out(text=c.choices[0].message.content)
    elif case in ("tools", "tools_stream"):
        # a tool call round trip: the model calls the tool, the caller answers it, the
        # model answers with the tool's result
        tools = [{"type": "function", "function": {
            "name": "lookup", "description": "look a word up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
        msgs = [{"role": "user", "content": "weather in Berlin"}]
        if case == "tools":
            first = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice="auto")
            msg, finish = first.choices[0].message, first.choices[0].finish_reason
            calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in msg.tool_calls or []]
        else:
            acc, finish = {}, None
            for ch in client.chat.completions.create(model=model, messages=msgs, tools=tools, stream=True):
                if not ch.choices:
                    continue
                for d in ch.choices[0].delta.tool_calls or []:
                    slot = acc.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                    slot["id"] = d.id or slot["id"]
                    if d.function:
                        slot["name"] += d.function.name or ""
                        slot["arguments"] += d.function.arguments or ""
                finish = ch.choices[0].finish_reason or finish
            calls = [acc[i] for i in sorted(acc)]
        msgs.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
        msgs.append({"role": "tool", "tool_call_id": calls[0]["id"] if calls else "none", "content": "sunny, 21 C"})
        second = client.chat.completions.create(model=model, messages=msgs, tools=tools)
        out(calls=calls, finish=finish, text=second.choices[0].message.content)
    elif case == "models":
        ids = [m.id for m in client.models.list()]
        one = client.models.retrieve(ids[0]) if ids else None
        out(ids=ids, retrieved=one.id if one else None, owned_by=one.owned_by if one else None)
    else:
        raise SystemExit("unknown case " + case)
except openai.APIStatusError as e:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    out(error=type(e).__name__, status=e.status_code, code=err.get("code"), type=err.get("type"),
        message=err.get("message"), retry_after=e.response.headers.get("retry-after"),
        server=e.response.headers.get("server"))
