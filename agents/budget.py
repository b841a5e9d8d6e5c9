"""LLM budgets of one agent: the agent-wide token rate (in memory) and each entity's token and
cost budget (durable, in the entity's journal meta).

**Agent budget** (``TokenBudget``): tokens per fixed window aligned to ``time.monotonic()``,
charged after each call (one call may overshoot; the next is refused). It is a worker-level
rate, so it lives in memory: a spent agent budget is a backpressure gate (reason ``budget``) and
the runtime pauses the agent until the window rolls over.

**Entity budget** (``EntityBudget``): tokens and US dollars per entity (subject) per fixed
window aligned to the wall clock (``time.time()``, so windows mean the same after a restart).
Its counts live in a plain dict, ``journal.meta["budget"]`` inside a handler: the entity's meta
is written with each journaled step and survives failed attempts, restarts and rebalances
(``streams.core.journal``). Each call *reserves* before it starts (its prompt estimate plus its
``max_tokens``, and the cost of that many tokens) and is refused if the reservation would not
fit beside what is already spent and held, so concurrent calls of one entity
(``asyncio.gather``) cannot overshoot; after the call the hold is replaced by the real usage and
cost. A hold is made durable before the request goes out, so a call lost to a crash still
counts for the rest of its window (the provider probably billed it); a call that fails releases
its hold.

Over budget, the entity's call either waits (``Blocked`` with ``retry_at``, the window's end on
the monotonic clock: the dispatcher holds only that subject's lane and runs the event again;
every other entity flows) or, with action ``park``, raises ``BudgetExceeded`` (reason
``budget``, not retriable): the dispatcher dead-letters the event at once with reason ``budget``;
an agent declared with ``on_dead_letter="park"`` also parks the subject, so its later events go
to the DLQ as ``parked`` until ``vigil dlq release SUBJECT``; without it, each later event of
the entity is dead-lettered with reason ``budget`` while the window lasts. A call whose own
reservation exceeds the budget can never run and raises ``BudgetExceeded`` whatever the action.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from schemas import VigilError
from streams.core.backpressure import Blocked
from streams.observability.metrics import BUDGET_REJECTIONS

_MARGIN = 0.001  # seconds

BudgetAction = Literal["wait", "park"]


class BudgetExceeded(VigilError):
    """An entity's LLM budget is spent and its agent parks instead of waiting (or one call
    could never fit the budget): dead-lettered at once with reason ``budget``."""

    reason = "budget"
    retriable = False


class TokenBudget:
    """The agent-wide token budget per window, in memory; a backpressure ``Gate``."""

    reason = "budget"

    def __init__(
        self, agent: str, *, agent_tokens: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``agent_tokens`` of 0 means unlimited; ``clock`` must tick with ``time.monotonic()``
        outside tests (the gate's wait uses it)."""
        if window <= 0 or agent_tokens < 0:
            raise ValueError("window must be > 0 and agent_tokens >= 0")
        self.agent = agent
        self.agent_tokens = agent_tokens
        self.window = window
        self._clock = clock
        self._index = self._window_index()
        self._used = 0

    def check(self) -> None:
        """Raise ``Blocked`` (with this gate) if the agent's budget is spent."""
        if self.blocked():
            BUDGET_REJECTIONS.labels(self.agent, "agent").inc()
            raise Blocked(
                f"token budget of agent {self.agent!r} spent ({self._used}/{self.agent_tokens})", gate=self
            )

    def charge(self, tokens: int) -> None:
        self._roll()
        self._used += tokens

    def used(self) -> int:
        """Tokens charged to the agent in the current window."""
        self._roll()
        return self._used

    def resets_at(self) -> float:
        """The clock instant the current window ends."""
        return (self._index + 1) * self.window

    # -- Gate -------------------------------------------------------------------------------
    def blocked(self) -> bool:
        self._roll()
        return bool(self.agent_tokens) and self._used >= self.agent_tokens

    async def wait_unblocked(self) -> None:
        # One timer to the window's end; the margin covers loop timers firing within the clock
        # resolution of their deadline, so the window has rolled over when this returns.
        if self.blocked():
            await asyncio.sleep(max(0.0, self.resets_at() - self._clock()) + _MARGIN)

    def _window_index(self) -> int:
        return int(self._clock() // self.window)

    def _roll(self) -> None:
        index = self._window_index()
        if index != self._index:
            self._index = index
            self._used = 0


@dataclass(frozen=True)
class EntityLimits:
    """One agent's per-entity budget: 0 means unlimited."""

    tokens: int = 0
    cost_usd: float = 0.0
    window: float = 3600.0
    action: BudgetAction = "wait"

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.cost_usd)


class EntityBudget:
    """One entity's budget over ``state``, a JSON-able dict it keeps up to date (the journal
    meta's ``"budget"`` entry): ``{"w": window index, "tokens": spent, "cost": spent USD,
    "held": {hold id: [tokens, cost]}}``. The caller makes ``state`` durable."""

    def __init__(
        self,
        agent: str,
        subject: str,
        limits: EntityLimits,
        state: MutableMapping[str, Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.subject = subject
        self.limits = limits
        self.state = state
        self._clock = clock

    # -- reading ----------------------------------------------------------------------------
    def spent(self) -> tuple[int, float]:
        """Tokens and USD charged in the current window, holds excluded."""
        self._roll()
        return int(self.state["tokens"]), float(self.state["cost"])

    def held(self) -> tuple[int, float]:
        """Tokens and USD reserved by calls in flight (or lost to a crash) in this window."""
        self._roll()
        holds = self.state["held"].values()
        return sum(int(h[0]) for h in holds), sum(float(h[1]) for h in holds)

    def resets_at(self) -> float:
        """The wall-clock instant (``time.time()``) the current window ends."""
        self._roll()
        return (int(self.state["w"]) + 1) * self.limits.window

    # -- a call -----------------------------------------------------------------------------
    def reserve(self, tokens: int, cost_usd: float) -> str:
        """Hold ``tokens`` and ``cost_usd`` for a call about to start, or refuse it (see the
        module docstring); returns the hold's id for ``settle`` or ``release``."""
        limits = self.limits
        if (limits.tokens and tokens > limits.tokens) or (limits.cost_usd and cost_usd > limits.cost_usd):
            BUDGET_REJECTIONS.labels(self.agent, "entity").inc()
            raise BudgetExceeded(
                f"an LLM call reserving {tokens} tokens / ${cost_usd:.6f} can never fit the budget of "
                f"{self.subject!r} in agent {self.agent!r} ({limits.tokens} tokens / ${limits.cost_usd} "
                "per window): lower its max_tokens or raise the budget"
            )
        spent_tokens, spent_cost = self.spent()
        held_tokens, held_cost = self.held()
        over_tokens = limits.tokens and spent_tokens + held_tokens + tokens > limits.tokens
        over_cost = limits.cost_usd and spent_cost + held_cost + cost_usd > limits.cost_usd
        if over_tokens or over_cost:
            BUDGET_REJECTIONS.labels(self.agent, "entity").inc()
            message = (
                f"LLM budget of {self.subject!r} in agent {self.agent!r} spent: {spent_tokens} tokens "
                f"+ {held_tokens} held / {limits.tokens}, ${spent_cost:.6f} + ${held_cost:.6f} held / "
                f"${limits.cost_usd} (this call needs {tokens} tokens, ${cost_usd:.6f})"
            )
            if limits.action == "park":
                raise BudgetExceeded(message)
            wait = max(0.0, self.resets_at() - self._clock())
            raise Blocked(message, retry_at=time.monotonic() + wait + _MARGIN)
        hold = uuid.uuid4().hex[:12]
        self.state["held"][hold] = [tokens, cost_usd]
        return hold

    def settle(self, hold: str, tokens: int, cost_usd: float) -> None:
        """Replace the call's hold by what it really used."""
        self._roll()
        self.state["held"].pop(hold, None)
        self.state["tokens"] = int(self.state["tokens"]) + tokens
        self.state["cost"] = float(self.state["cost"]) + cost_usd

    def release(self, hold: str) -> None:
        """The call failed before it used anything: drop its hold."""
        self._roll()
        self.state["held"].pop(hold, None)

    # -- windows ----------------------------------------------------------------------------
    def _roll(self) -> None:
        index = int(self._clock() // self.limits.window)
        if self.state.get("w") != index:
            # A new window: spending and holds of the old one (calls lost to a crash) expire.
            self.state.clear()
            self.state.update({"w": index, "tokens": 0, "cost": 0.0, "held": {}})
