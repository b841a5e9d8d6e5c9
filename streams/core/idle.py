"""When a worker started with ``--exit-when-idle SECONDS`` has nothing left to do.

A worker is *idle* when, for every source partition assigned to it:

- the fetcher has read up to the broker's end (fetch position >= highwater; in exactly_once
  mode the last stable offset), so no record is waiting in Kafka;
- none of its records is queued or running in the agent's scheduler;
- everything it finished is committed (the group's committed offset is at the tracker's
  committable offset, which is the highwater once every record of a non-transactional topic
  is handled; a topic written with transactions ends in commit markers that no consumer
  receives, which is why the rule compares with what was handled, not with the highwater);

and nothing has moved (assignment, fetch positions, records handed to or finished by the
schedulers) for ``quiet_for`` seconds. A worker whose assignment is empty (more workers than
partitions) is idle once it has been quiet that long. While the worker is rebalancing,
recovering tables or not yet assigned it is never idle, and the quiet clock starts afresh.

Pure logic, no Kafka client: ``streams.adapter.idle.IdleExit`` gathers the views, commits and
stops the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: ``busy``: records are left to read or run; ``quiet``: drained, not yet quiet for long enough;
#: ``commit``: drained and quiet, but finished records are not committed yet; ``idle``: exit
Decision = Literal["busy", "quiet", "commit", "idle"]


@dataclass(frozen=True)
class PartitionIdleView:
    """What one check sees of one assigned source partition."""

    topic: str
    partition: int
    #: the broker's end of the partition (None if unknown)
    highwater: int | None
    #: the fetcher's position (None if unknown, e.g. still awaiting an offset reset)
    position: int | None
    #: the group's committed offset as this worker last committed or read it
    committed: int | None
    #: (last offset handed to the scheduler, committable offset); (None, None) if none yet
    progress: tuple[int | None, int | None]
    #: records of this partition queued or running in the scheduler
    in_scheduler: int

    @property
    def drained(self) -> bool:
        """Nothing of this partition is left in Kafka or in the scheduler."""
        return (
            self.position is not None
            and self.highwater is not None
            and self.position >= self.highwater
            and self.in_scheduler == 0
        )

    @property
    def committed_all(self) -> bool:
        """Every record handled by this worker is covered by the committed offset."""
        committable = self.progress[1]
        if committable is None:
            return True  # nothing handled here: nothing to commit
        return self.committed is not None and self.committed >= committable

    @property
    def marker(self) -> tuple[str, int, int | None, tuple[int | None, int | None], int]:
        """Changes whenever the partition moves (a fetch, a record started or finished)."""
        return (self.topic, self.partition, self.position, self.progress, self.in_scheduler)


class IdleDetector:
    """Feed it one ``check`` per interval; it says whether the worker may exit."""

    def __init__(self, quiet_for: float) -> None:
        if quiet_for <= 0:
            raise ValueError("quiet_for must be > 0")
        self.quiet_for = quiet_for
        self._marker: frozenset[tuple[object, ...]] | None = None
        self._quiet_since: float | None = None
        #: source partitions seen by the last check
        self.partitions = 0

    def restart(self) -> None:
        """Something happened (a rebalance, a stop): the quiet clock starts again at the next
        settled check."""
        self._marker = None
        self._quiet_since = None

    def quiet_for_s(self, now: float) -> float:
        return 0.0 if self._quiet_since is None else now - self._quiet_since

    def check(self, views: Sequence[PartitionIdleView] | None, now: float) -> Decision:
        """``views`` of every assigned source partition, or None while the worker is not
        settled (rebalancing, recovering, stopping)."""
        if views is None:
            self.restart()
            return "busy"
        self.partitions = len(views)
        marker = frozenset(v.marker for v in views)
        if marker != self._marker or self._quiet_since is None:
            self._marker = marker
            self._quiet_since = now
        if not all(v.drained for v in views):
            return "busy"
        if now - self._quiet_since < self.quiet_for:
            return "quiet"
        if not all(v.committed_all for v in views):
            return "commit"
        return "idle"
