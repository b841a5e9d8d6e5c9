"""A watchdog for Faust's table recovery.

Twice in about fifty runs of the 1 -> 2 -> 3 -> 2 workers test, a worker given a changelog
partition by a rebalance sought it to the start and then received no changelog record for
minutes: recovery never finished, so its source partitions never resumed (the records were not
lost, only stuck). The cause is not found yet; the fetcher was still polling the partition,
which fits records consumed by the fetcher and dropped before they reached recovery. Seeking the
partition again to the last applied offset re-reads whatever was dropped. Re-reading is
harmless: recovery skips offsets it has applied. Each kick logs the fetch state, to find the
cause next time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from faust.types import TP
from mode import Service

log = logging.getLogger(__name__)


class RecoveryWatchdog(Service):
    """Re-seeks an active changelog partition that has sat below its highwater with no record
    for ``stall_after`` seconds while recovery runs."""

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

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a watchdog must not take the worker down
                log.exception("recovery watchdog: check failed")

    async def check(self) -> None:
        recovery = self.app.tables.recovery
        started = recovery._recovery_started_at
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
                recovery._active_events_received_at.get(tp, started),
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
            consumer._read_offset.get(tp),
            tp in consumer._get_active_partitions(),
        )
        self.kicks += 1
        await consumer.seek_wait({tp: max(offset, 0)})


def install(app: Any, **kwargs: Any) -> RecoveryWatchdog:
    """Attach the watchdog to ``app`` (before the worker starts it)."""
    watchdog = RecoveryWatchdog(app, **kwargs)
    app.add_dependency(watchdog)
    return watchdog
