"""Which source partitions are stalled, and what may be done about each.

A partition is *stalled* when records past its committed offset exist (highwater > committed)
and it has made no progress (no record fetched, none finished) for ``stall_after`` seconds.
That is a symptom, not a diagnosis: a slow handler, an open LLM circuit or a lagging downstream
group stall a partition on purpose. So each stalled partition also gets a verdict:

- ``waiting``: a reason still holds (records of it in flight, or a hold whose condition is
  still true): report it, do nothing;
- ``release``: holds whose condition no longer holds (a buffer already below its low mark, a
  closed circuit) are to be released;
- ``recover``: nothing holds it and nothing of it is in flight, yet it does not move: resume it
  and seek it to its committed offset, so whatever path lost it (a swallowed resume, records
  dropped between a fetch and the scheduler) is read again. Re-reading is harmless: finished
  records are absorbed by the handled ids in their entity's state.

A partition whose fetcher is already at the highwater (``caught_up``) is not reported at once:
in a topic written with transactions the offsets past the last record are commit markers, so
an idle partition stays "behind" by them for good. The guard re-reads it from the committed
offset once, quietly (a *probe*); if that brings no record and neither offset moves, it is
idle, not stalled.

Pure logic, no Kafka client: ``streams.adapter.recovery.LivenessGuard`` gathers the views and acts.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["waiting", "release", "recover"]
#: what must change for a partition to count as moving: (last seen, committable), committed
Marker = tuple[tuple[int | None, int | None], int | None]


@dataclass(frozen=True)
class PartitionView:
    """What one check sees of one assigned source partition; logged whole when it stalls."""

    agent: str
    topic: str
    partition: int
    #: broker's end of the partition (last stable offset in exactly_once)
    highwater: int | None
    #: the group's committed offset as this worker last committed or read it
    committed: int | None
    #: the fetcher's position (None if unknown; the guard asks it of stalled partitions only)
    position: int | None
    #: (last offset handed to the scheduler, committable offset): changes whenever it moves
    progress: tuple[int | None, int | None]
    #: records of this partition in the scheduler (queued or running)
    buffered: int
    running: int
    #: fetching as the consumer sees it
    active: bool
    paused: bool
    flow_active: bool
    #: reasons holding the agent's topic, and which of them still have a true condition
    held: frozenset[str] = field(default_factory=frozenset)
    held_valid: frozenset[str] = field(default_factory=frozenset)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.agent, self.topic, self.partition)

    @property
    def behind(self) -> bool:
        """Records past the committed offset exist (a partition never committed counts)."""
        if self.highwater is None:
            return False
        start = self.committed if self.committed is not None and self.committed >= 0 else 0
        return self.highwater > start

    @property
    def caught_up(self) -> bool:
        """The fetcher has read up to the highwater: what lies past the committed offset may be
        only transaction markers (which no consumer receives), or records consumed without
        reaching the agent. Only a re-read from the committed offset tells them apart."""
        return self.position is not None and self.highwater is not None and self.position >= self.highwater

    def verdict(self) -> Verdict:
        if self.buffered or self.running or self.held_valid:
            return "waiting"
        if self.held:
            return "release"
        return "recover"

    def describe(self) -> str:
        held = ",".join(sorted(self.held)) or "-"
        valid = ",".join(sorted(self.held_valid)) or "-"
        return (
            f"{self.topic}[{self.partition}] agent={self.agent} highwater={self.highwater} "
            f"committed={self.committed} position={self.position} last_seen={self.progress[0]} "
            f"committable={self.progress[1]} buffered={self.buffered} running={self.running} "
            f"active={self.active} paused={self.paused} flow_active={self.flow_active} "
            f"held={held} held_valid={valid}"
        )


class StallDetector:
    """Remembers since when each partition has not moved; stateless about Kafka."""

    def __init__(self, stall_after: float) -> None:
        if stall_after <= 0:
            raise ValueError("stall_after must be > 0")
        self.stall_after = stall_after
        self._since: dict[Hashable, tuple[Marker, float]] = {}

    def stalled(self, views: Iterable[PartitionView], now: float) -> list[PartitionView]:
        """The views that are behind and have shown the same progress for ``stall_after``."""
        out: list[PartitionView] = []
        seen: set[Hashable] = set()
        for view in views:
            seen.add(view.key)
            marker = (view.progress, view.committed)
            last = self._since.get(view.key)
            if not view.behind or last is None or last[0] != marker:
                self._since[view.key] = (marker, now)
                continue
            if now - last[1] >= self.stall_after:
                out.append(view)
        for key in [k for k in self._since if k not in seen]:
            del self._since[key]  # revoked: a new owner starts its own clock
        return out

    def restart(self, view: PartitionView, now: float) -> None:
        """After acting on a partition, give it a full ``stall_after`` again."""
        self._since[view.key] = ((view.progress, view.committed), now)
