"""The per-agent LLM circuit breaker: its state machine, its gate, its gauge. Timing uses short
real timeouts on the event loop's clock and waits on conditions with deadlines."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agents.circuit import CircuitBreaker, CircuitState
from streams.core.backpressure import Blocked, Gate
from streams.observability.metrics import REGISTRY

RESET = 0.2


def gauge(agent: str) -> float | None:
    return REGISTRY.get_sample_value("vigil_llm_circuit_state", {"agent": agent})


def breaker(failures: int = 3, reset: float = RESET) -> CircuitBreaker:
    return CircuitBreaker(f"a-{uuid.uuid4().hex[:8]}", failures=failures, reset_timeout=reset)


def fail(c: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        c.failed(c.admit())


async def test_opens_after_n_consecutive_failures_only() -> None:
    c = breaker(failures=3)
    assert isinstance(c, Gate) and c.reason == "circuit_open"
    assert gauge(c.agent) == 0
    fail(c, 2)
    c.succeeded(c.admit())  # a success resets the count
    fail(c, 2)
    assert c.state is CircuitState.CLOSED and not c.blocked()
    fail(c, 1)
    assert c.state is CircuitState.OPEN and c.blocked() and gauge(c.agent) == 2
    with pytest.raises(Blocked) as info:
        c.admit()
    assert info.value.gate is c and info.value.retry_at is None


async def test_open_for_reset_timeout_then_half_open() -> None:
    loop = asyncio.get_running_loop()
    c = breaker(failures=1)
    fail(c, 1)
    opened = loop.time()
    await asyncio.wait_for(c.wait_unblocked(), timeout=5)
    assert loop.time() - opened >= RESET * 0.99
    assert c.state is CircuitState.HALF_OPEN and gauge(c.agent) == 1 and not c.blocked()


async def test_exactly_one_probe_and_its_success_closes() -> None:
    c = breaker(failures=1)
    fail(c, 1)
    await asyncio.wait_for(c.wait_unblocked(), timeout=5)
    assert c.admit() is True  # the probe
    assert c.blocked()  # others wait while it runs
    with pytest.raises(Blocked):
        c.admit()
    waiter = asyncio.create_task(c.wait_unblocked())
    await asyncio.sleep(0)  # let the waiter start waiting (a yield, not a timed sleep)
    assert not waiter.done()
    c.succeeded(True)
    await asyncio.wait_for(waiter, timeout=5)
    assert c.state is CircuitState.CLOSED and gauge(c.agent) == 0
    assert c.admit() is False  # closed: plain calls again


async def test_probe_failure_reopens_for_another_timeout() -> None:
    loop = asyncio.get_running_loop()
    c = breaker(failures=2)
    fail(c, 2)
    await asyncio.wait_for(c.wait_unblocked(), timeout=5)
    c.failed(c.admit())
    reopened = loop.time()
    assert c.state is CircuitState.OPEN and gauge(c.agent) == 2 and c.blocked()
    await asyncio.wait_for(c.wait_unblocked(), timeout=5)
    assert loop.time() - reopened >= RESET * 0.99
    assert c.state is CircuitState.HALF_OPEN


async def test_abandoned_probe_lets_the_next_call_probe() -> None:
    c = breaker(failures=1)
    fail(c, 1)
    await asyncio.wait_for(c.wait_unblocked(), timeout=5)
    c.abandoned(c.admit())  # cancelled, or an outcome that says nothing about the provider
    assert c.state is CircuitState.HALF_OPEN and not c.blocked()
    assert c.admit() is True


async def test_late_results_of_calls_admitted_before_opening_do_not_decide() -> None:
    c = breaker(failures=1)
    early = c.admit()  # admitted while closed, still running
    fail(c, 1)
    c.succeeded(early)  # success while open: stays open
    assert c.state is CircuitState.OPEN
    await asyncio.wait_for(c.wait_unblocked(), timeout=5)
    probe = c.admit()
    c.failed(early)  # a non-probe failure while half-open: ignored
    assert c.state is CircuitState.HALF_OPEN and c.blocked()
    c.succeeded(probe)
    assert c.state is CircuitState.CLOSED


def test_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failures=0, reset_timeout=1)
    with pytest.raises(ValueError):
        CircuitBreaker("x", failures=1, reset_timeout=0)
