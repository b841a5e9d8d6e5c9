"""Token budgets per agent and per entity: fixed windows driven by an injected clock, the agent
gate, the entity's retry instant, the rejection counter and the bound on per-entity memory."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from agents.budget import TokenBudget
from streams.core.backpressure import Blocked, Gate
from streams.observability.metrics import REGISTRY


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rejections(agent: str, scope: str) -> float:
    return (
        REGISTRY.get_sample_value("vigil_llm_budget_rejections_total", {"agent": agent, "scope": scope})
        or 0.0
    )


def budget(clock: Clock, *, agent_tokens: int = 0, entity_tokens: int = 0, window: float = 60) -> TokenBudget:
    return TokenBudget(
        f"a-{uuid.uuid4().hex[:8]}",
        agent_tokens=agent_tokens,
        entity_tokens=entity_tokens,
        window=window,
        clock=clock,
    )


def test_agent_budget_blocks_the_agent_until_the_window_rolls_over() -> None:
    clock = Clock(1000.0)  # window [960, 1020)
    b = budget(clock, agent_tokens=100)
    assert isinstance(b, Gate) and b.reason == "budget"
    b.check("e1")
    b.charge("e1", 60)
    b.check("e2")
    b.charge("e2", 50)  # one call may overshoot; the next is refused
    assert b.blocked() and b.used() == 110
    with pytest.raises(Blocked) as info:
        b.check("e3")
    assert info.value.gate is b and info.value.retry_at is None
    assert rejections(b.agent, "agent") == 1 and rejections(b.agent, "entity") == 0
    clock.now = 1019.999
    assert b.blocked()
    clock.now = 1020.0
    assert not b.blocked() and b.used() == 0
    b.check("e3")


def test_entity_budget_delays_only_that_subject_until_its_window_resets() -> None:
    clock = Clock(130.0)  # window [120, 180)
    b = budget(clock, agent_tokens=1000, entity_tokens=30)
    b.charge("hot", 30)
    b.charge("cold", 10)
    with pytest.raises(Blocked) as info:
        b.check("hot")
    assert info.value.gate is None and info.value.retry_at == 180.0
    assert rejections(b.agent, "entity") == 1 and rejections(b.agent, "agent") == 0
    b.check("cold")
    b.check(None)  # a call without a subject has no entity budget
    assert not b.blocked()  # the agent keeps running
    clock.now = 180.0
    b.check("hot")
    assert b.used("hot") == 0


def test_entity_memory_is_dropped_with_the_window() -> None:
    clock = Clock(0.0)
    b = budget(clock, entity_tokens=5, window=10)
    for i in range(1000):
        b.charge(f"e{i}", 1)
    assert b.tracked_entities == 1000
    clock.now = 10.0
    b.charge("late", 1)
    assert b.tracked_entities == 1 and b.used("e1") == 0 and b.used("late") == 1


def test_zero_means_unlimited_and_tracks_nothing_per_entity() -> None:
    clock = Clock()
    b = budget(clock)
    b.charge("e", 10**9)
    b.check("e")
    assert not b.blocked() and b.tracked_entities == 0


async def test_gate_wait_returns_when_the_window_rolls_over() -> None:
    b = TokenBudget("a-" + uuid.uuid4().hex[:8], agent_tokens=1, entity_tokens=0, window=0.2)
    b.charge(None, 1)
    assert b.blocked()
    resets = b.resets_at()
    await asyncio.wait_for(b.wait_unblocked(), timeout=5)
    assert time.monotonic() >= resets and not b.blocked()


def test_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        TokenBudget("x", agent_tokens=0, entity_tokens=0, window=0)
    with pytest.raises(ValueError):
        TokenBudget("x", agent_tokens=-1, entity_tokens=0, window=1)
