"""Vigil's pytest plugin (entry point ``pytest11``: loaded by any pytest run where Vigil is
installed): the ``agent_harness`` fixture.

    async def test_reply(agent_harness) -> None:
        h = agent_harness(support, llm=ScriptedLLM(["Hi!"]))
        out = await h.send(ChatMessageReceivedV2(...), subject="c1")
        assert out.outcome == "ok"

The fixture is a factory of ``streams.testing.AgentHarness`` (same arguments), so one test can
run several agents, or one agent twice with different settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from streams.testing import AgentHarness


class HarnessFactory(Protocol):
    def __call__(self, agent: Any, /, **options: Any) -> AgentHarness: ...


@pytest.fixture
def agent_harness() -> HarnessFactory:
    """``agent_harness(agent, llm=..., resources=..., settings=..., runtime=..., partitions=...,
    instant_retries=..., timeout=...)``: an in-memory ``AgentHarness`` running the production
    dispatcher (see ``streams.testing``)."""
    from streams.testing import AgentHarness  # imported when used: plugins load with every run

    def make(agent: Any, /, **options: Any) -> AgentHarness:
        return AgentHarness(agent, **options)

    return make
