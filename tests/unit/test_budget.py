"""LLM budgets: the agent-wide token gate (fixed windows on an injected clock, the rejection
counter), and the entity budget over its state dict: reservations that keep concurrent calls
from overshooting, settling to the real usage, wall-clock windows, wait versus park."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from agents.budget import BudgetExceeded, EntityBudget, EntityLimits, TokenBudget
from streams.core.backpressure import Blocked, Gate
from streams.core.retry import Retry
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


def agent_budget(clock: Clock, *, agent_tokens: int = 0, window: float = 60) -> TokenBudget:
    return TokenBudget(f"a-{uuid.uuid4().hex[:8]}", agent_tokens=agent_tokens, window=window, clock=clock)


def entity(
    clock: Clock, state: dict[str, Any] | None = None, subject: str = "e1", **limits: Any
) -> EntityBudget:
    limits.setdefault("window", 60.0)
    return EntityBudget(
        f"a-{uuid.uuid4().hex[:8]}",
        subject,
        EntityLimits(**limits),
        {} if state is None else state,
        clock=clock,
    )


# -- agent ----------------------------------------------------------------------------------
def test_agent_budget_blocks_the_agent_until_the_window_rolls_over() -> None:
    clock = Clock(1000.0)  # window [960, 1020)
    b = agent_budget(clock, agent_tokens=100)
    assert isinstance(b, Gate) and b.reason == "budget"
    b.check()
    b.charge(60)
    b.check()
    b.charge(50)  # one call may overshoot; the next is refused
    assert b.blocked() and b.used() == 110
    with pytest.raises(Blocked) as info:
        b.check()
    assert info.value.gate is b and info.value.retry_at is None
    assert rejections(b.agent, "agent") == 1 and rejections(b.agent, "entity") == 0
    clock.now = 1019.999
    assert b.blocked()
    clock.now = 1020.0
    assert not b.blocked() and b.used() == 0
    b.check()


def test_zero_means_unlimited() -> None:
    b = agent_budget(Clock())
    b.charge(10**9)
    b.check()
    assert not b.blocked()
    assert not EntityLimits().enabled and EntityLimits(cost_usd=0.5).enabled


async def test_gate_wait_returns_when_the_window_rolls_over() -> None:
    b = TokenBudget("a-" + uuid.uuid4().hex[:8], agent_tokens=1, window=0.2)
    b.charge(1)
    assert b.blocked()
    resets = b.resets_at()
    await asyncio.wait_for(b.wait_unblocked(), timeout=5)
    assert time.monotonic() >= resets and not b.blocked()


def test_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        TokenBudget("x", agent_tokens=0, window=0)
    with pytest.raises(ValueError):
        TokenBudget("x", agent_tokens=-1, window=1)


# -- entity ---------------------------------------------------------------------------------
def test_reservations_keep_concurrent_calls_within_the_budget() -> None:
    clock = Clock(130.0)  # window [120, 180)
    b = entity(clock, tokens=100)
    first = b.reserve(40, 0.0)
    second = b.reserve(40, 0.0)  # both in flight: 80 held
    with pytest.raises(Blocked) as info:
        b.reserve(40, 0.0)  # would make 120 with nothing spent yet
    assert info.value.gate is None
    assert rejections(b.agent, "entity") == 1
    assert b.held() == (80, 0.0) and b.spent() == (0, 0.0)
    b.settle(first, 15, 0.0)  # the real usage replaces the hold
    b.release(second)  # a call that failed uses nothing
    assert b.held() == (0, 0.0) and b.spent() == (15, 0.0)
    b.settle(b.reserve(85, 0.0), 85, 0.0)  # exactly the budget
    with pytest.raises(Blocked):
        b.reserve(1, 0.0)


def test_blocked_waits_until_the_wall_clock_window_ends() -> None:
    clock = Clock(130.0)  # window [120, 180): 50 s left
    b = entity(clock, tokens=10)
    b.settle(b.reserve(10, 0.0), 10, 0.0)
    assert b.resets_at() == 180.0
    before = time.monotonic()
    with pytest.raises(Blocked) as info:
        b.reserve(1, 0.0)
    assert info.value.retry_at is not None
    assert before + 50 <= info.value.retry_at <= time.monotonic() + 50.1  # monotonic, for the dispatcher
    clock.now = 180.0  # the next window: everything is available again
    assert b.spent() == (0, 0.0)
    b.reserve(10, 0.0)


def test_cost_budget_in_dollars() -> None:
    b = entity(Clock(), cost_usd=0.01)
    b.settle(b.reserve(1000, 0.004), 900, 0.0036)
    b.reserve(10, 0.006)  # 0.0036 + 0.006 <= 0.01
    with pytest.raises(Blocked):
        b.reserve(10, 0.0005)
    assert b.spent() == (900, pytest.approx(0.0036))


def test_park_action_raises_a_non_retriable_budget_error() -> None:
    b = entity(Clock(), tokens=10, action="park")
    b.settle(b.reserve(10, 0.0), 10, 0.0)
    with pytest.raises(BudgetExceeded) as info:
        b.reserve(1, 0.0)
    assert info.value.reason == "budget" and info.value.retriable is False
    assert not Retry(max_attempts=5).should_retry(info.value)  # dead-lettered at once


def test_a_call_that_can_never_fit_is_refused_whatever_the_action() -> None:
    with pytest.raises(BudgetExceeded, match="can never fit"):
        entity(Clock(), tokens=100, action="wait").reserve(101, 0.0)
    with pytest.raises(BudgetExceeded, match="can never fit"):
        entity(Clock(), cost_usd=0.01).reserve(1, 0.02)


def test_state_is_plain_json_and_a_restored_copy_goes_on_from_it() -> None:
    """What a restart sees: the dict as the journal meta stored it. A hold written before a
    crash (its call never settled) still counts until the window ends."""
    clock = Clock(130.0)
    state: dict[str, Any] = {}
    b = entity(clock, state, tokens=100)
    b.settle(b.reserve(50, 0.0), 30, 0.0)
    b.reserve(40, 0.0)  # in flight when the process dies
    restored = json.loads(json.dumps(state))
    again = entity(clock, restored, tokens=100)
    assert again.spent() == (30, 0.0) and again.held() == (40, 0.0)
    with pytest.raises(Blocked):
        again.reserve(31, 0.0)
    clock.now = 180.0  # the lost hold expires with its window
    assert again.held() == (0, 0.0)
    again.reserve(100, 0.0)
