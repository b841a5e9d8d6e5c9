"""Token budgets of one agent: for the whole agent and for each entity (subject), per window.

Windows are fixed and aligned to the clock (``[k * window, (k + 1) * window)`` of
``time.monotonic()``): simple to reason about, and every entity's count expires at the same
instant, so the per-entity table holds only the entities seen in the current window and is
dropped whole when it rolls over. Tokens (prompt + completion) are charged after a call, so one
call may overshoot a budget; the next call is refused.

A spent agent budget is a backpressure gate (reason ``budget``): the runtime pauses the agent
until the window rolls over. A spent entity budget only delays that subject: ``Blocked`` carries
``retry_at``, the instant its window resets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streams.core.backpressure import Blocked
from streams.observability.metrics import BUDGET_REJECTIONS

_MARGIN = 0.001  # seconds


class TokenBudget:
    reason = "budget"

    def __init__(
        self,
        agent: str,
        *,
        agent_tokens: int,
        entity_tokens: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``agent_tokens`` / ``entity_tokens`` of 0 mean unlimited; ``clock`` must tick with
        ``time.monotonic()`` outside tests (``Blocked.retry_at`` and the gate's wait use it)."""
        if window <= 0 or agent_tokens < 0 or entity_tokens < 0:
            raise ValueError("window must be > 0 and token limits >= 0")
        self.agent = agent
        self.agent_tokens = agent_tokens
        self.entity_tokens = entity_tokens
        self.window = window
        self._clock = clock
        self._index = self._window_index()
        self._agent_used = 0
        self._entity_used: dict[str, int] = {}

    # -- accounting -------------------------------------------------------------------------
    def check(self, subject: str | None) -> None:
        """Raise ``Blocked`` if a call for ``subject`` (None: no entity) must not start now."""
        self._roll()
        if self.agent_tokens and self._agent_used >= self.agent_tokens:
            BUDGET_REJECTIONS.labels(self.agent, "agent").inc()
            raise Blocked(
                f"token budget of agent {self.agent!r} spent ({self._agent_used}/{self.agent_tokens})",
                gate=self,
            )
        if subject is not None and self.entity_tokens:
            used = self._entity_used.get(subject, 0)
            if used >= self.entity_tokens:
                BUDGET_REJECTIONS.labels(self.agent, "entity").inc()
                raise Blocked(
                    f"token budget of {subject!r} in agent {self.agent!r} spent ({used}/{self.entity_tokens})",
                    retry_at=self.resets_at(),
                )

    def charge(self, subject: str | None, tokens: int) -> None:
        self._roll()
        self._agent_used += tokens
        if subject is not None and self.entity_tokens:
            self._entity_used[subject] = self._entity_used.get(subject, 0) + tokens

    def used(self, subject: str | None = None) -> int:
        """Tokens charged in the current window to the agent, or to ``subject``."""
        self._roll()
        return self._agent_used if subject is None else self._entity_used.get(subject, 0)

    @property
    def tracked_entities(self) -> int:
        return len(self._entity_used)

    def resets_at(self) -> float:
        """The clock instant the current window ends."""
        return (self._index + 1) * self.window

    # -- Gate -------------------------------------------------------------------------------
    def blocked(self) -> bool:
        self._roll()
        return bool(self.agent_tokens) and self._agent_used >= self.agent_tokens

    async def wait_unblocked(self) -> None:
        # One timer to the window's end; the margin covers loop timers firing within the clock
        # resolution of their deadline, so the window has rolled over when this returns.
        if self.blocked():
            await asyncio.sleep(max(0.0, self.resets_at() - self._clock()) + _MARGIN)

    # -- windows ----------------------------------------------------------------------------
    def _window_index(self) -> int:
        return int(self._clock() // self.window)

    def _roll(self) -> None:
        index = self._window_index()
        if index != self._index:
            self._index = index
            self._agent_used = 0
            self._entity_used.clear()  # every entity's window expired with the agent's
