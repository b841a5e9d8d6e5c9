"""``vigil worker --exit-when-idle SECONDS``: drain the backlog, commit, exit 0.

``IdleExit`` is a service of the app. Every ``interval`` seconds it looks at each assigned
source partition (fetch position, highwater, committed offset, the agent's scheduler and
offset tracker) and asks ``streams.core.idle.IdleDetector`` whether the worker is done. Once
it is, it commits (and waits until the committed offsets cover every handled record), then
stops the worker exactly as a first SIGTERM does: fetching stops, the schedulers are drained,
offsets are committed again, tables are closed, and ``Worker.execute_from_commandline`` exits
with status 0. A SIGTERM or SIGINT that arrives after that exits at once (nothing is lost: the
offsets were committed first).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from faust.types import TP
from mode import Service

from streams.adapter.app import settled
from streams.core.idle import Decision, IdleDetector, PartitionIdleView

log = logging.getLogger(__name__)


class IdleExit(Service):
    """Stops ``worker`` once its app has been idle for ``quiet_for`` seconds."""

    def __init__(
        self,
        app: Any,
        worker: Any,
        *,
        quiet_for: float,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        more: Sequence[Any] = (),
        **kwargs: Any,
    ) -> None:
        self.app = app
        #: every app of the worker (one per agent): the worker is idle once all of them are
        self.apps = (app, *more)
        self.worker = worker
        self.detector = IdleDetector(quiet_for)
        self.interval = interval if interval is not None else min(1.0, quiet_for / 4)
        self.clock = clock
        #: the last decision (for logs and tests)
        self.decision: Decision = "busy"
        #: set once the worker was asked to stop
        self.exiting = False
        super().__init__(**kwargs)

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop and not self.exiting:
            await self.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("exit-when-idle: check failed")

    async def check(self) -> None:
        now = self.clock()
        decision = await self._decide(now, ask_broker=False)
        if decision in ("commit", "idle"):
            # The fetcher's highwaters may be stale (a held topic is not fetched): ask the broker.
            decision = await self._decide(now, ask_broker=True)
        if decision == "commit":
            for app in self.apps:
                await app.vigil_consumer.commit()
            decision = await self._decide(now, ask_broker=True)
        self.decision = decision
        if decision != "idle" or self.exiting:
            return
        if self.worker._signal_stop_time:  # noqa: SLF001 - a signal is already stopping it
            return
        self.exiting = True
        log.info(
            "exit-when-idle: no record for %.1fs and every assigned source partition (%d) read to its "
            "end and committed; stopping the worker",
            self.detector.quiet_for_s(now),
            self.detector.partitions,
        )
        self.worker._schedule_shutdown(signal.SIGTERM)  # noqa: SLF001 - the first SIGTERM's graceful stop

    async def _decide(self, now: float, *, ask_broker: bool) -> Decision:
        ready = all(settled(app) for app in self.apps)
        views = await self.views(ask_broker=ask_broker) if ready else None
        return self.detector.check(views, now)

    async def views(self, *, ask_broker: bool = False) -> list[PartitionIdleView]:
        """A view of every assigned source partition (none with an empty assignment). The
        highwaters are those of the fetcher's last responses, or with ``ask_broker`` the
        broker's end offsets (a round trip on the consumer thread, up to a fetch wait)."""
        out: list[PartitionIdleView] = []
        for app in self.apps:
            out.extend(await self._app_views(app, ask_broker=ask_broker))
        return out

    async def _app_views(self, app: Any, *, ask_broker: bool) -> list[PartitionIdleView]:
        consumer = app.vigil_consumer
        assigned = consumer.assignment()
        out: list[PartitionIdleView] = []
        for source in app.watched_sources:
            tps = sorted(tp for tp in assigned if tp.topic == source.topic)
            if not tps:
                continue
            highwaters = (
                await consumer.highwaters(*tps) if ask_broker else self._fetched_highwaters(consumer, tps)
            )
            scheduler = source.scheduler
            for tp in tps:
                out.append(
                    PartitionIdleView(
                        topic=tp.topic,
                        partition=tp.partition,
                        highwater=highwaters.get(tp),
                        position=await self._position(consumer, tp),
                        committed=consumer._committed_offset.get(tp),  # noqa: SLF001
                        progress=scheduler.tracker.progress(tp),
                        in_scheduler=scheduler.buffered_of(tp),
                    )
                )
        return out

    @staticmethod
    def _fetched_highwaters(consumer: Any, tps: list[TP]) -> dict[TP, int | None]:
        out: dict[TP, int | None] = {}
        for tp in tps:
            try:
                out[tp] = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not fetched yet: unknown
                out[tp] = None
        return out

    @staticmethod
    async def _position(consumer: Any, tp: TP) -> int | None:
        try:
            position = await asyncio.wait_for(consumer.position(tp), 1.0)
        except Exception:  # noqa: BLE001 - awaiting an offset reset, or revoked: not idle yet
            return None
        return int(position) if position is not None else None


def install(app: Any, worker: Any, quiet_for: float, more: Sequence[Any] = ()) -> IdleExit:
    """Attach the idle exit to ``app`` (before ``worker`` starts it); ``more``: the worker's
    other apps (one per agent), which must be idle too."""
    service = IdleExit(app, worker, quiet_for=quiet_for, more=more, beacon=app.beacon)
    app.add_dependency(service)
    return service
