"""The LLM client over litellm's real HTTP path, against the fake server in-process."""

from __future__ import annotations

import pytest

from agents.fake_llm import FakeLLM, completion
from agents.llm import LLMClient, LLMError
from streams import Settings


def client(base: str, **kw: object) -> LLMClient:
    return LLMClient(Settings(llm_model="openai/anything", llm_api_base=base, _env_file=None, **kw))  # type: ignore[call-arg]


def test_replies_are_deterministic_functions_of_the_prompt() -> None:
    a = completion({"messages": [{"role": "user", "content": "hello"}]})
    b = completion({"messages": [{"role": "user", "content": "hello"}]})
    c = completion({"messages": [{"role": "user", "content": "hello!"}]})
    assert a["choices"] == b["choices"] != c["choices"]
    assert "You said: hello" in a["choices"][0]["message"]["content"]


async def test_completion_through_litellm(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    reply = await client(base).complete([{"role": "user", "content": "where is my order?"}])
    assert "You said: where is my order?" in reply.text
    assert reply.prompt_tokens == 4 and reply.completion_tokens > 0
    assert fake.stats["ok"] == 1


async def test_tool_calls(server: tuple[FakeLLM, str]) -> None:
    _, base = server
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    reply = await client(base).complete([{"role": "user", "content": "order 42"}], tools=tools)
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "lookup_order"
    assert '"order 42"' in reply.tool_calls[0]["arguments"]


async def test_router_retries_then_typed_error(server: tuple[FakeLLM, str]) -> None:
    fake, base = server
    fake.faults.error_rate = 1.0
    fake.faults.error_status = 500
    with pytest.raises(LLMError) as info:
        await client(base, llm_num_retries=2).complete([{"role": "user", "content": "x"}])
    assert info.value.retriable is True
    assert fake.stats["error"] == 3  # first try + 2 retries by litellm's Router


async def test_injected_latency(server: tuple[FakeLLM, str]) -> None:
    import time

    fake, base = server
    fake.faults.latency_ms = 200
    t0 = time.perf_counter()
    await client(base).complete([{"role": "user", "content": "slow"}])
    assert time.perf_counter() - t0 >= 0.2
