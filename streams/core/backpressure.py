"""Gates: conditions under which an agent must stop taking new records without losing any.

A gate (an open LLM circuit, a spent token budget, a lagging downstream group) is *blocked* or
not. While any gate of an agent is blocked, its scheduler starts no new record and fetching of
its topic pauses; nothing is dead-lettered. A handler that runs into a gate raises ``Blocked``:
the dispatcher waits until the gate clears (or until ``retry_at`` for a gate that only blocks
one subject) and runs the record again without counting an attempt.

Resources (``Runtime.provide``) take part by implementing ``gates_for(agent)``; contexts bind
them per call through ``bind(agent, subject)`` (see ``streams.core.context``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from schemas import VigilError


@runtime_checkable
class Gate(Protocol):
    #: label value of ``vigil_paused_partitions{reason}``: circuit_open, budget, downstream_lag, rate_limit
    reason: str

    def blocked(self) -> bool: ...

    async def wait_unblocked(self) -> None: ...


@runtime_checkable
class GateProvider(Protocol):
    def gates_for(self, agent: str) -> list[Gate]: ...


#: label values of ``vigil_paused_partitions{reason}``
PAUSE_REASONS = ("in_flight", "circuit_open", "budget", "downstream_lag", "rate_limit")


class Blocked(VigilError):
    """Not a failure of the record: the agent (``gate``) or this subject (``retry_at``, a
    ``time.monotonic()`` instant) may not proceed yet."""

    reason = "blocked"
    retriable = True

    def __init__(self, message: str, *, gate: Gate | None = None, retry_at: float | None = None) -> None:
        super().__init__(message)
        self.gate = gate
        self.retry_at = retry_at

    async def wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait_unblocked()
        elif self.retry_at is not None:
            await asyncio.sleep(max(0.0, self.retry_at - time.monotonic()))
        else:
            await asyncio.sleep(1.0)


class ManualGate:
    """A gate flipped by code: tests, and the building block of the others."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._clear = asyncio.Event()
        self._clear.set()

    def block(self) -> None:
        self._clear.clear()

    def unblock(self) -> None:
        self._clear.set()

    def blocked(self) -> bool:
        return not self._clear.is_set()

    async def wait_unblocked(self) -> None:
        await self._clear.wait()


class HysteresisGate(ManualGate):
    """Blocks when a reading (a downstream group's lag) rises above ``high`` and clears only
    when it falls below ``low``, so the agent does not flap around one threshold."""

    def __init__(self, reason: str, high: float, low: float, read: Callable[[], float | None]) -> None:
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got low={low} high={high}")
        super().__init__(reason)
        self.high = high
        self.low = low
        self._read = read

    def refresh(self) -> None:
        value = self._read()
        if value is None:
            return  # no reading yet (or the lag monitor failed): keep the last decision
        if value > self.high:
            self.block()
        elif value < self.low:
            self.unblock()


class AgentGates:
    """The gates of one agent. A record starts only through ``admit`` (it waits while any gate
    is blocked); ``watch`` reports the set of blocking reasons whenever it changes, so the
    worker can hold fetching of the agent's topic per reason."""

    def __init__(self, gates: list[Gate], *, interval: float = 0.1) -> None:
        self.gates = gates
        self.interval = interval

    def blocking(self) -> set[str]:
        return {g.reason for g in self.gates if g.blocked()}

    async def admit(self) -> None:
        while True:
            gate = next((g for g in self.gates if g.blocked()), None)
            if gate is None:
                return
            await gate.wait_unblocked()

    async def watch(self, on_change: Callable[[set[str], set[str]], None]) -> None:
        """Calls ``on_change(now_blocking, no_longer_blocking)`` on every change; runs until
        cancelled. Readings (lag) are refreshed here, on the same tick."""
        current: set[str] = set()
        while True:
            for gate in self.gates:
                if isinstance(gate, HysteresisGate):
                    gate.refresh()
            now = self.blocking()
            if now != current:
                on_change(now - current, current - now)
                current = now
            await asyncio.sleep(self.interval)
