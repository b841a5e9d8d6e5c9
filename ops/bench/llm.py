"""(vi) CPU per LLM call: Vigil's client vs litellm's Router vs bare ``litellm.acompletion`` vs a
raw aiohttp POST, all against the same fake OpenAI-compatible server (no latency).

CPU is ``time.process_time`` of this process (every thread, litellm's included) divided by
the calls made; the server runs in another process and is not counted. The clients take turns
in several rounds so that load from elsewhere on the machine falls on all of them alike.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ops.bench.context import say
from ops.bench.procs import VIGIL, base_env, free_port, healthz
from ops.bench.records import BenchError

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MODEL = "openai/fake"
API_KEY = "sk-local"
MESSAGES = [
    {"role": "system", "content": "You are a concise, friendly support agent."},
    {"role": "user", "content": "[web] ann: my order has not arrived, what can I do?"},
]

Call = Callable[[], Awaitable[str]]


async def _clients(api_base: str, session: aiohttp.ClientSession) -> dict[str, Call]:
    import litellm
    from litellm import Router  # type: ignore[attr-defined]

    from agents.llm import LLMClient
    from streams.core.settings import Settings

    settings = Settings(llm_model=MODEL, llm_api_base=api_base, llm_api_key=API_KEY, _env_file=None)
    client = LLMClient(settings)
    bind = getattr(client, "bind", None)
    vigil: Any = bind("bench", "subject-1") if callable(bind) else client
    router = Router(
        model_list=[
            {
                "model_name": "default",
                "litellm_params": {"model": MODEL, "api_base": api_base, "api_key": API_KEY},
            }
        ],
        num_retries=settings.llm_num_retries,
        timeout=settings.llm_timeout,
    )

    async def vigil_client() -> str:
        reply = await vigil.complete(MESSAGES)
        return str(reply.text)

    async def litellm_router() -> str:
        response = await router.acompletion(model="default", messages=MESSAGES)
        return str(response.choices[0].message.content)

    async def litellm_acompletion() -> str:
        response = await litellm.acompletion(
            model=MODEL, api_base=api_base, api_key=API_KEY, messages=MESSAGES
        )
        return str(response.choices[0].message.content)

    async def aiohttp_post() -> str:
        async with session.post(
            f"{api_base}/chat/completions",
            json={"model": "fake", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            resp.raise_for_status()
            body = await resp.json()
        return str(body["choices"][0]["message"]["content"])

    return {
        "vigil_client": vigil_client,
        "litellm_router": litellm_router,
        "litellm_acompletion": litellm_acompletion,
        "aiohttp_post": aiohttp_post,
    }


async def cpu_per_call(api_base: str, calls: int, rounds: int = 3, warmup: int = 20) -> dict[str, float]:
    """ms of CPU per call for each client, sequential calls."""
    async with aiohttp.ClientSession() as session:
        clients = await _clients(api_base, session)
        for call in clients.values():
            for _ in range(warmup):
                assert await call(), "empty reply from the fake LLM"
        cpu = dict.fromkeys(clients, 0.0)
        for _ in range(rounds):
            for name, call in clients.items():
                started = time.process_time()
                for _ in range(calls):
                    await call()
                cpu[name] += time.process_time() - started
    return {name: total * 1000 / (calls * rounds) for name, total in cpu.items()}


async def measure(bench: Any) -> dict[str, Any]:
    """vi_llm: the fake LLM in its own process, every client against it."""
    port = free_port()
    server = bench.spawn("fake-llm", [*VIGIL, "fake-llm", "--port", str(port)], base_env())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        server.check()
        try:
            await asyncio.to_thread(healthz, url)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"fake LLM did not answer:\n{server.tail()}") from None
            await asyncio.sleep(0.2)
    calls = bench.sizes.llm_calls
    say(f"vi_llm: {calls} x 3 calls per client against the fake LLM")
    try:
        ms = await cpu_per_call(f"{url}/v1", calls)
    finally:
        server.stop()
    result: dict[str, Any] = {"calls_per_client": calls * 3}
    result.update({f"{name}_cpu_ms": round(v, 3) for name, v in ms.items()})
    result["vigil_vs_litellm"] = round(ms["vigil_client"] / ms["litellm_acompletion"], 3)
    result["router_vs_litellm"] = round(ms["litellm_router"] / ms["litellm_acompletion"], 3)
    result["vigil_vs_router"] = round(ms["vigil_client"] / ms["litellm_router"], 3)
    result["litellm_vs_aiohttp"] = round(ms["litellm_acompletion"] / ms["aiohttp_post"], 3)
    result["vigil_vs_aiohttp"] = round(ms["vigil_client"] / ms["aiohttp_post"], 3)
    say(f"vi_llm: {result}")
    return result
