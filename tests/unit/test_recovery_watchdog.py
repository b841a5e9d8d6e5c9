"""The recovery watchdog re-seeks a changelog partition whose recovery has stalled, and leaves
alone one that is complete, receiving records, or was kicked recently."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.recovery import RecoveryWatchdog

STUCK = TP("vigil-probe-state-changelog", 4)
DONE = TP("vigil-probe-state-changelog", 1)
FLOWING = TP("vigil-probe-state-changelog", 2)


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[dict[TP, int]] = []
        self._read_offset: dict[TP, int | None] = {}

    async def position(self, tp: TP) -> int:
        return 92

    def _get_active_partitions(self) -> set[TP]:
        return {STUCK, FLOWING}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeks.append(offsets)


def app_in_recovery() -> Any:
    recovery = SimpleNamespace(
        in_recovery=True,
        _recovery_started_at=0.0,
        active_tps={STUCK, DONE, FLOWING},
        active_offsets={STUCK: -1, DONE: 127, FLOWING: 50},
        active_highwaters={STUCK: 91, DONE: 127, FLOWING: 400},
        _active_events_received_at={FLOWING: 0.0},
    )
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery), consumer=FakeConsumer())


async def test_a_stalled_partition_is_sought_again_from_its_last_applied_offset() -> None:
    now = [0.0]
    app = app_in_recovery()
    watchdog = RecoveryWatchdog(app, stall_after=30.0, clock=lambda: now[0])
    recovery, consumer = app.tables.recovery, app.consumer

    now[0] = 29.0
    recovery._active_events_received_at[FLOWING] = 28.0
    await watchdog.check()
    assert consumer.seeks == [], "kicked before the stall deadline"

    now[0] = 31.0
    recovery._active_events_received_at[FLOWING] = 30.5
    await watchdog.check()
    assert consumer.seeks == [{STUCK: 0}], "only the stalled partition, from its start (offset -1)"

    now[0] = 50.0
    recovery._active_events_received_at[FLOWING] = 49.0
    await watchdog.check()
    assert consumer.seeks == [{STUCK: 0}], "kicked again before another stall_after passed"

    recovery.active_offsets[STUCK] = 40  # the re-seek brought records, then it stalled again
    recovery._active_events_received_at[STUCK] = 52.0
    now[0] = 83.0
    recovery._active_events_received_at[FLOWING] = 82.0
    await watchdog.check()
    assert consumer.seeks == [{STUCK: 0}, {STUCK: 40}]
    assert watchdog.kicks == 2


async def test_nothing_happens_outside_recovery() -> None:
    now = [1000.0]
    app = app_in_recovery()
    app.tables.recovery.in_recovery = False
    watchdog = RecoveryWatchdog(app, stall_after=30.0, clock=lambda: now[0])
    await watchdog.check()
    assert app.consumer.seeks == []
