"""Which input offset is safe to commit while records finish out of order.

Faust's own bookkeeping commits past a slow record at the head of a partition once later
records are acked (faust-streaming #606), so Vigil tracks every record it starts itself and
commits only up to the lowest unfinished offset of each partition.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from streams.core.records import TP


class PartitionProgress:
    """Offsets of one partition in fetch order; the head is the lowest unfinished one."""

    __slots__ = ("_done", "_next", "_pending")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None

    @property
    def last_seen(self) -> int | None:
        """The highest offset tracked so far (None before the first)."""
        if self._pending:
            return self._pending[-1]
        return self._next - 1 if self._next is not None else None

    def track(self, offset: int) -> bool:
        """False for an offset at or below one already seen (a re-fetch of in-flight or done work)."""
        last = self.last_seen
        if last is not None and offset <= last:
            return False
        self._pending.append(offset)
        return True

    def done(self, offset: int) -> None:
        self._done.add(offset)
        pending = self._pending
        while pending and pending[0] in self._done:
            head = pending.popleft()
            self._done.discard(head)
            self._next = head + 1

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._done)

    def committable(self) -> int | None:
        """The next offset a restarted consumer must read; None if nothing was tracked yet."""
        return self._pending[0] if self._pending else self._next


class OffsetTracker:
    """Per-partition progress of one agent's source topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._parts: dict[TP, PartitionProgress] = {}

    def track(self, tp: TP, offset: int) -> bool:
        progress = self._parts.get(tp)
        if progress is None:
            progress = self._parts[tp] = PartitionProgress()
        return progress.track(offset)

    def done(self, tp: TP, offset: int) -> None:
        progress = self._parts.get(tp)
        if progress is not None:  # forgotten on revoke: the new owner re-reads it
            progress.done(offset)

    def committable(self, tp: TP) -> int | None:
        progress = self._parts.get(tp)
        return progress.committable() if progress is not None else None

    def progress(self, tp: TP) -> tuple[int | None, int | None]:
        """(last offset seen, committable offset) of ``tp``: it changes whenever ``tp`` moves."""
        progress = self._parts.get(tp)
        return (progress.last_seen, progress.committable()) if progress is not None else (None, None)

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def partitions(self) -> list[TP]:
        return list(self._parts)

    def in_flight(self) -> int:
        return sum(p.in_flight for p in self._parts.values())
