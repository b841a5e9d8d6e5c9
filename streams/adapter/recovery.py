"""Two watchdogs that keep a worker making progress whatever Faust's call order does.

``LivenessGuard`` watches every assigned source partition (see ``streams.core.liveness`` for the
rules): one with records past its committed offset that has not moved for
``VIGIL_STALL_TIMEOUT`` is logged with its whole fetch state, counted, and reported by
``/readyz``; a hold whose condition no longer holds is released, and a partition that nothing
holds and nothing of which is in flight is resumed and sought to its committed offset.

``RecoveryWatchdog`` watches Faust's table recovery. Twice in about fifty runs of the
1 -> 2 -> 3 -> 2 workers test, a worker given a changelog partition by a rebalance sought it to
the start and then received no changelog record for minutes: recovery never finished, so its
source partitions never resumed. Seeking the partition again to the last applied offset
re-reads whatever was dropped; re-reading is harmless (recovery skips offsets it has applied).
Each kick logs the fetch state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from faust.types import TP
from mode import Service

from streams.adapter.app import settled
from streams.core.backpressure import PAUSE_REASONS, AgentGates
from streams.core.liveness import PartitionView, StallDetector
from streams.core.scheduler import KeyOrderedScheduler
from streams.observability import metrics

log = logging.getLogger(__name__)


class Watchdog(Service):
    """Runs ``check()`` every ``interval`` seconds; a failing check is logged, never raised:
    a watchdog must not take the worker down."""

    interval: float = 5.0
    what = "watchdog"

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("%s: check failed", self.what)

    async def check(self) -> None:
        raise NotImplementedError


class RecoveryWatchdog(Watchdog):
    """Re-seeks an active changelog partition that has sat below its highwater with no record
    for ``stall_after`` seconds while recovery runs."""

    what = "recovery watchdog"

    def __init__(
        self,
        app: Any,
        *,
        stall_after: float = 30.0,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self.stall_after = stall_after
        self.interval = interval
        self.clock = clock
        self._kicked_at: dict[TP, float] = {}
        self.kicks = 0
        super().__init__(**kwargs)

    async def check(self) -> None:
        recovery = self.app.tables.recovery
        started = recovery._recovery_started_at  # noqa: SLF001
        if not recovery.in_recovery or started is None:
            self._kicked_at.clear()
            return
        now = self.clock()
        for tp in list(recovery.active_tps):
            offset = recovery.active_offsets.get(tp)
            highwater = recovery.active_highwaters.get(tp)
            if offset is None or highwater is None or offset >= highwater:
                continue
            quiet_since = max(
                started,
                recovery._active_events_received_at.get(tp, started),  # noqa: SLF001
                self._kicked_at.get(tp, started),
            )
            if now - quiet_since < self.stall_after:
                continue
            await self._kick(tp, offset, highwater, now - quiet_since)
            self._kicked_at[tp] = now

    async def _kick(self, tp: TP, offset: int, highwater: int, quiet: float) -> None:
        consumer = self.app.consumer
        position: Any
        try:
            position = await consumer.position(tp)
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            position = repr(exc)
        log.warning(
            "recovery of %s stalled at offset %d of %d (no record for %.0fs; fetch position %s, "
            "read offset %s, fetching %s): seeking it again",
            tp,
            offset,
            highwater,
            quiet,
            position,
            consumer._read_offset.get(tp),  # noqa: SLF001
            tp in consumer._get_active_partitions(),  # noqa: SLF001
        )
        self.kicks += 1
        metrics.PARTITION_RECOVERIES.labels("-", "changelog_sought").inc()
        await consumer.seek_wait({tp: max(offset, 0)})


def install(app: Any, **kwargs: Any) -> RecoveryWatchdog:
    """Attach the watchdog to ``app`` (before the worker starts it)."""
    watchdog = RecoveryWatchdog(app, **kwargs)
    app.add_dependency(watchdog)
    return watchdog


@dataclass(frozen=True)
class WatchedSource:
    """One agent's source topic, with what decides whether its holds are still valid."""

    agent: str
    topic: str
    scheduler: KeyOrderedScheduler[Any]
    gates: AgentGates


class LivenessGuard(Watchdog):
    """Every ``interval`` seconds: a view of each assigned source partition, the stalled ones
    logged and acted on (``streams.core.liveness``)."""

    what = "liveness guard"

    def __init__(
        self,
        app: Any,
        *,
        stall_after: float = 30.0,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self.detector = StallDetector(stall_after)
        self.interval = interval if interval is not None else min(5.0, stall_after / 3)
        self.clock = clock
        #: the partitions found stalled by the last check (``/readyz`` reports them)
        self.stalled: list[PartitionView] = []
        self._logged_at: dict[tuple[str, str, int], float] = {}
        #: (committed, highwater) at which a caught-up partition was last re-read
        self._probed: dict[tuple[str, str, int], tuple[int | None, int | None]] = {}
        super().__init__(**kwargs)

    @property
    def sources(self) -> list[WatchedSource]:
        return list(self.app.watched_sources)

    def stalled_reason(self) -> str | None:
        if not self.stalled:
            return None
        return "stalled partitions: " + ", ".join(
            f"{v.topic}[{v.partition}] ({v.verdict()})" for v in self.stalled
        )

    async def check(self) -> None:
        views = await self.views() if settled(self.app) else []
        now = self.clock()
        stalled = []
        for found in self.detector.stalled(views, now):
            view = replace(
                found,
                position=await self._position(self.app.vigil_consumer, TP(found.topic, found.partition)),
            )
            if view.caught_up and view.verdict() == "recover":
                await self._probe(view, now)
            else:
                stalled.append(view)
        self.stalled = stalled
        for source in self.sources:
            metrics.STALLED_PARTITIONS.labels(source.agent).set(
                sum(1 for v in self.stalled if v.agent == source.agent)
            )
        for view in self.stalled:
            await self._act(view, now)

    async def views(self) -> list[PartitionView]:
        consumer = self.app.vigil_consumer
        assigned = consumer.assignment()
        out: list[PartitionView] = []
        for source in self.sources:
            tps = sorted(tp for tp in assigned if tp.topic == source.topic)
            if not tps:
                continue
            highwaters = await consumer.highwaters(*tps)
            held = consumer.held_reasons(source.topic)
            valid = frozenset(r for r in held if self._hold_valid(source, r))
            for tp in tps:
                active, paused = consumer.fetch_state(tp)
                out.append(
                    PartitionView(
                        agent=source.agent,
                        topic=tp.topic,
                        partition=tp.partition,
                        highwater=highwaters.get(tp),
                        committed=consumer._committed_offset.get(tp),  # noqa: SLF001
                        position=None,  # asked of stalled partitions only (check)
                        progress=source.scheduler.tracker.progress(tp),
                        buffered=source.scheduler.buffered_of(tp),
                        running=len(source.scheduler.running([tp])),
                        active=active,
                        paused=paused,
                        flow_active=consumer.flow_active,
                        held=held,
                        held_valid=valid,
                    )
                )
        return out

    @staticmethod
    async def _position(consumer: Any, tp: TP) -> int | None:
        try:
            position = await asyncio.wait_for(consumer.position(tp), 1.0)
        except Exception:  # noqa: BLE001 - diagnostics only (awaiting a reset, or revoked)
            return None
        return int(position) if position is not None else None

    @staticmethod
    def _hold_valid(source: WatchedSource, reason: str) -> bool:
        if reason == "in_flight":
            return not source.scheduler.below_low_mark
        if reason in PAUSE_REASONS:
            return any(g.blocked() for g in source.gates.gates if g.reason == reason)
        return True  # a reason this guard does not know: assume it holds

    async def _probe(self, view: PartitionView, now: float) -> None:
        """Re-read a caught-up partition once per (committed, highwater): records come back if
        they had been consumed without reaching the agent; markers bring nothing."""
        key = view.key
        offsets = (view.committed, view.highwater)
        if self._probed.get(key) == offsets:
            return  # probed already at these offsets and nothing came: idle
        self._probed[key] = offsets
        log.info(
            "liveness guard: %s[%d] is read up to its highwater %s but committed at %s; re-reading it "
            "once from the committed offset (only transaction markers, or records that never reached the agent)",
            view.topic,
            view.partition,
            view.highwater,
            view.committed,
        )
        await self._reread(view, "probed")
        self.detector.restart(view, now)

    async def _reread(self, view: PartitionView, action: str) -> None:
        """Resume the partition and seek it to its committed offset (the start if it has none);
        its tracker starts afresh so the re-read offsets are taken, not refused as re-fetches."""
        source = self._source(view)
        tp = TP(view.topic, view.partition)
        source.scheduler.tracker.forget([tp])
        await self.app.vigil_consumer.refetch(tp, view.committed if view.committed is not None else 0)
        metrics.PARTITION_RECOVERIES.labels(view.agent, action).inc()

    def _source(self, view: PartitionView) -> WatchedSource:
        return next(s for s in self.sources if s.agent == view.agent)

    async def _act(self, view: PartitionView, now: float) -> None:
        verdict = view.verdict()
        key = view.key
        if verdict != "waiting" or now - self._logged_at.get(key, float("-inf")) >= self.detector.stall_after:
            self._logged_at[key] = now
            log.warning(
                "partition stalled for %.0fs+ (%s): %s",
                self.detector.stall_after,
                verdict,
                view.describe(),
            )
        if verdict == "waiting":
            return
        source = self._source(view)
        consumer = self.app.vigil_consumer
        for reason in sorted(view.held - view.held_valid):
            log.warning(
                "liveness guard: releasing hold %r of %s: its condition no longer holds", reason, view.topic
            )
            consumer.release(view.topic, reason)
            if reason == "in_flight":
                source.scheduler.paused = False
            metrics.PARTITION_RECOVERIES.labels(view.agent, "released").inc()
        if verdict == "recover":
            log.warning(
                "liveness guard: resuming %s[%d] and seeking it to its committed offset %s",
                view.topic,
                view.partition,
                view.committed,
            )
            await self._reread(view, "resumed")
        self.detector.restart(view, now)


def install_guard(app: Any, **kwargs: Any) -> LivenessGuard:
    """Attach the liveness guard to ``app`` (before the worker starts it)."""
    guard = LivenessGuard(app, **kwargs)
    app.add_dependency(guard)
    return guard
