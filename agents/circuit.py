"""A circuit breaker per agent around its LLM calls, and a backpressure gate.

closed -> open after ``failures`` consecutive failed calls; open for ``reset_timeout`` seconds
(a loop timer, so the state gauge flips on time); then half-open, where exactly one probe call
may run: its success closes the circuit, its failure opens it again.

Hand-written (about 100 lines) because the maintained libraries do not fit: pybreaker is
thread-based and lets every caller through while half-open; purgatory and aiobreaker move to
half-open lazily on the next call, let concurrent calls through as probes, and offer nothing to
await. The runtime needs an awaitable "may proceed again" (``streams.core.backpressure.Gate``) and
a single probe so a still-broken provider sees one request per ``reset_timeout``, not a burst.
"""

from __future__ import annotations

import asyncio
from enum import IntEnum

from streams.core.backpressure import Blocked
from streams.observability.metrics import CIRCUIT_STATE


class CircuitState(IntEnum):
    """Values of ``vigil_llm_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Callers use it as: ``probe = admit()`` (raises ``Blocked``), then exactly one of
    ``succeeded(probe)``, ``failed(probe)`` or ``abandoned(probe)`` (cancelled, or an outcome that
    says nothing about the provider's health)."""

    reason = "circuit_open"

    def __init__(self, agent: str, *, failures: int, reset_timeout: float) -> None:
        if failures < 1 or reset_timeout <= 0:
            raise ValueError("failures must be >= 1 and reset_timeout > 0")
        self.agent = agent
        self.failures = failures
        self.reset_timeout = reset_timeout
        self.state = CircuitState.CLOSED
        self._consecutive = 0
        self._probing = False
        self._timer: asyncio.TimerHandle | None = None
        self._clear = asyncio.Event()  # set while a call may be admitted
        self._clear.set()
        CIRCUIT_STATE.labels(agent).set(self.state)

    # -- Gate -------------------------------------------------------------------------------
    def blocked(self) -> bool:
        """True while open, and while half-open with the probe in flight."""
        return not self._clear.is_set()

    async def wait_unblocked(self) -> None:
        await self._clear.wait()

    # -- calls ------------------------------------------------------------------------------
    def admit(self) -> bool:
        """Let a call through or raise ``Blocked(gate=self)``; True if the call is the probe."""
        if self.state is CircuitState.OPEN or self._probing:
            raise Blocked(f"LLM circuit of agent {self.agent!r} is {self.state.name.lower()}", gate=self)
        if self.state is CircuitState.HALF_OPEN:
            self._probing = True
            self._clear.clear()
            return True
        return False

    def succeeded(self, probe: bool) -> None:
        if self.state is CircuitState.CLOSED:
            self._consecutive = 0
        elif probe:
            self._set(CircuitState.CLOSED)
        # open, or a late call admitted before the circuit opened: only the probe decides

    def failed(self, probe: bool) -> None:
        if self.state is CircuitState.CLOSED:
            self._consecutive += 1
            if self._consecutive >= self.failures:
                self._open()
        elif probe:
            self._open()

    def abandoned(self, probe: bool) -> None:
        if probe and self._probing:
            self._probing = False
            self._clear.set()  # the next call becomes the probe

    # -- transitions ------------------------------------------------------------------------
    def _open(self) -> None:
        self._set(CircuitState.OPEN)
        self._timer = asyncio.get_running_loop().call_later(self.reset_timeout, self._half_open)

    def _half_open(self) -> None:
        self._timer = None
        if self.state is CircuitState.OPEN:
            self._set(CircuitState.HALF_OPEN)

    def _set(self, state: CircuitState) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = state
        self._consecutive = 0
        self._probing = False
        if state is CircuitState.OPEN:
            self._clear.clear()
        else:
            self._clear.set()
        CIRCUIT_STATE.labels(self.agent).set(state)
