"""A local OpenAI-compatible server for tests and the demo, so litellm's real HTTP path runs.

Replies are deterministic functions of the request: the same prompt gives the same text.
With ``tools`` in the request and no tool result yet, it answers with a tool call. Latency,
HTTP 429/500 and hangs (client timeouts) can be injected by flags or at run time through
``POST /_control``, as rates or exactly (the next N requests, or every request for one model);
``GET /_stats`` counts requests by outcome and by requested model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
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


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """The deterministic reply to a chat-completions request body."""
    messages = body.get("messages") or []
    digest = _digest(messages)
    last_user = next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    tools = body.get("tools") or []
    prompt_tokens = sum(len(_text_of(m).split()) for m in messages)
    if tools and (not messages or messages[-1].get("role") != "tool"):
        fn = tools[0].get("function", {})
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{digest}",
                    "type": "function",
                    "function": {
                        "name": fn.get("name", "tool"),
                        "arguments": json.dumps({"query": last_user}),
                    },
                }
            ],
        }
        finish = "tool_calls"
        completion_tokens = 8
    else:
        text = f"[fake-llm {digest}] You said: {last_user}"
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
