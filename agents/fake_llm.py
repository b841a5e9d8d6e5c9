"""A local OpenAI-compatible server for tests and the demo, so litellm's real HTTP path runs.

Replies are deterministic functions of the request: the same prompt gives the same text.

Tools: a request that offers ``tools`` gets tool calls, one reply at a time, then a final text
that quotes the tool results it got (``... | tool results: name: content; ...``), so a test can
see a result flow back. The plan is read from the last user message: ``[tools: a, b+c, a]``
asks for ``a``, then ``b`` and ``c`` together in one reply, then ``a`` again (a name that is not
offered is still called, with ``{}``: the caller's unknown-tool path); ``[tools: none]`` asks
for none; without a directive every offered tool is called once, in order. Which call comes
next is the number of assistant tool-call messages since that user message. Arguments are
synthesised from each tool's JSON schema, required properties only (every property when the
schema lists none): strings are the last user text (``enum``: its first value), integers and
numbers 1, booleans true, arrays one item, nested objects and ``$ref``s recursively. Call ids
are ``call_<digest of the messages>_<n>``. Latency,
HTTP 429/500 and hangs (client timeouts) can be injected by flags or at run time through
``POST /_control``, as rates or exactly (the next N requests, or every request for one model);
``GET /_stats`` counts requests by outcome and by requested model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from aiohttp import web


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0  # share of requests answered with ``error_status``
    error_status: int = 500
    timeout_rate: float = 0.0  # share of requests that hang for ``hang_seconds`` then close
    hang_seconds: float = 60.0
    seed: int = 0
    fail_next: int = 0  # the next N requests are answered with ``error_status`` (then counts down)
    hang_next: int = 0  # the next N requests hang like ``timeout_rate`` ones
    fail_models: str = ""  # comma-separated request ``model`` values always answered with ``error_status``


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


TOOLS_DIRECTIVE = re.compile(r"\[tools:([^\]]*)\]", re.IGNORECASE)


def tool_plan(last_user: str, tools: list[dict[str, Any]]) -> list[list[str]]:
    """The tool names to call, one list per reply (see the module docstring)."""
    match = TOOLS_DIRECTIVE.search(last_user)
    if match is None:
        return [[str(t.get("function", {}).get("name", "tool"))] for t in tools]
    body = match.group(1).strip()
    if body.lower() in ("", "none"):
        return []
    return [[n.strip() for n in item.split("+") if n.strip()] for item in body.split(",") if item.strip()]


def synthesise(schema: dict[str, Any], text: str, defs: dict[str, Any], depth: int = 0) -> Any:
    """A value that fits ``schema`` (ignoring constraints such as patterns or lengths)."""
    if depth > 8:
        return None
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return synthesise(target, text, defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if o.get("type") != "null"]
        if options:
            return synthesise(options[0], text, defs, depth + 1)
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties") or {}
        names = schema.get("required", list(props))
        return {n: synthesise(props.get(n, {}), text, defs, depth + 1) for n in names}
    if kind == "array":
        return [synthesise(schema.get("items") or {}, text, defs, depth + 1)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def _tool_arguments(name: str, tools: list[dict[str, Any]], text: str) -> dict[str, Any]:
    fn = next((t.get("function", {}) for t in tools if t.get("function", {}).get("name") == name), None)
    if fn is None:
        return {}
    params: dict[str, Any] = fn.get("parameters") or {"type": "object", "properties": {}}
    args = synthesise(params, text, params.get("$defs") or params.get("definitions") or {})
    return args if isinstance(args, dict) else {}


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """The deterministic reply to a chat-completions request body."""
    messages = body.get("messages") or []
    digest = _digest(messages)
    last_index = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), -1)
    last_user = _text_of(messages[last_index]) if last_index >= 0 else ""
    since = messages[last_index + 1 :]
    tools = body.get("tools") or []
    prompt_tokens = sum(len(_text_of(m).split()) for m in messages)
    plan = tool_plan(last_user, tools) if tools else []
    made = sum(1 for m in since if m.get("role") == "assistant" and m.get("tool_calls"))
    if made < len(plan):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{digest}_{n}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": json.dumps(_tool_arguments(name, tools, last_user)),
                    },
                }
                for n, name in enumerate(plan[made])
            ],
        }
        finish = "tool_calls"
        completion_tokens = 8 * len(plan[made])
    else:
        text = f"[fake-llm {digest}] You said: {last_user}"
        names = {
            c.get("id"): c.get("function", {}).get("name", "")
            for m in since
            for c in (m.get("tool_calls") or [])
        }
        results = [
            f"{names.get(m.get('tool_call_id'), '?')}: {_text_of(m)}"
            for m in since
            if m.get("role") == "tool"
        ]
        if results:
            text += " | tool results: " + "; ".join(results)
        message = {"role": "assistant", "content": text}
        finish = "stop"
        completion_tokens = len(text.split())
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class FakeLLM:
    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.stats: dict[str, int] = {"received": 0, "ok": 0, "error": 0, "timeout": 0, "bad_request": 0}
        self.by_model: dict[str, int] = {}  # requests received per requested model
        self.arrived = asyncio.Event()  # set by every request: in-process tests await it

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/_control", self.control)
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats["received"] += 1
        self.arrived.set()
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("body must be an object with a 'messages' list")
        except ValueError as exc:
            self.stats["bad_request"] += 1
            return web.json_response(
                {"error": {"message": str(exc), "type": "invalid_request_error"}}, status=400
            )
        f = self.faults
        model = str(body.get("model", ""))
        self.by_model[model] = self.by_model.get(model, 0) + 1
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        roll = self._rng.random()
        hang = f.hang_next > 0 or roll < f.timeout_rate
        failing_models = {m.strip() for m in f.fail_models.split(",") if m.strip()}
        fail = f.fail_next > 0 or model in failing_models or roll < f.timeout_rate + f.error_rate
        if f.hang_next > 0:
            f.hang_next -= 1
        elif f.fail_next > 0:
            f.fail_next -= 1
        if hang:
            self.stats["timeout"] += 1
            await asyncio.sleep(f.hang_seconds)
            raise web.HTTPGatewayTimeout()
        if fail:
            self.stats["error"] += 1
            kind = "rate_limit_error" if f.error_status == 429 else "server_error"
            return web.json_response(
                {"error": {"message": f"injected {f.error_status}", "type": kind}},
                status=f.error_status,
                headers={"retry-after": "0"} if f.error_status == 429 else None,
            )
        self.stats["ok"] += 1
        return web.json_response(completion(body))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json()
        known = {f.name for f in fields(Faults)}
        unknown = set(body) - known
        if unknown:
            return web.json_response({"error": f"unknown fault settings: {sorted(unknown)}"}, status=400)
        for k, v in body.items():
            setattr(self.faults, k, type(getattr(self.faults, k))(v))
        if "seed" in body:
            self._rng = random.Random(self.faults.seed)
        return web.json_response(asdict(self.faults))

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "by_model": self.by_model})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def serve(host: str, port: int, faults: Faults) -> None:
    web.run_app(FakeLLM(faults).app(), host=host, port=port, print=None, access_log=None)
