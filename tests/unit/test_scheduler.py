"""The key-ordered scheduler and the offset tracker without a broker."""

from __future__ import annotations

import asyncio
import random

import pytest
from faust.types import TP

from streams.core.offsets import OffsetTracker, PartitionProgress
from streams.core.scheduler import KeyOrderedScheduler

P0 = TP("t", 0)
P1 = TP("t", 1)


def test_committable_offset_never_passes_an_unfinished_record() -> None:
    p = PartitionProgress()
    assert p.committable() is None
    for o in (10, 11, 12, 14):  # 13 is a gap (e.g. a transaction marker)
        assert p.track(o)
    p.done(11)
    p.done(12)
    assert p.committable() == 10  # the slow head holds the commit back (faust #606)
    p.done(10)
    assert p.committable() == 14
    p.done(14)
    assert p.committable() == 15
    assert not p.track(12)  # a re-fetch of finished work is refused


async def test_one_subject_at_a_time_in_offset_order_and_bounded_concurrency() -> None:
    rng = random.Random(3)
    running: set[str] = set()
    peak = 0
    seen: dict[str, list[int]] = {}

    async def process(items: list[tuple[str, int]]) -> None:
        nonlocal peak
        [key] = {k for k, _ in items}  # a batch holds one lane
        assert key not in running, "two records of one subject ran at once"
        running.add(key)
        peak = max(peak, len(running))
        await asyncio.sleep(rng.random() / 500)
        seen.setdefault(key, []).extend(n for _, n in items)
        running.discard(key)

    tracker = OffsetTracker("t")
    sched: KeyOrderedScheduler[tuple[str, int]] = KeyOrderedScheduler(
        process, tracker, concurrency=8, max_buffered=10_000
    )
    sched.start()
    offsets = {P0: 0, P1: 0}
    for n in range(50):
        for k in range(20):
            tp = P0 if k % 2 else P1
            assert sched.submit(tp, offsets[tp], f"k{k}", (f"k{k}", n))
            offsets[tp] += 1
    await asyncio.wait_for(sched.wait_idle(), 10)
    await sched.stop()
    assert all(v == list(range(50)) for v in seen.values()) and len(seen) == 20
    assert peak == 8
    assert tracker.committable(P0) == 500 and tracker.committable(P1) == 500


async def test_buffer_limit_pauses_and_draining_resumes() -> None:
    gate = asyncio.Event()
    events: list[str] = []

    async def process(_: list[int]) -> None:
        await gate.wait()

    sched: KeyOrderedScheduler[int] = KeyOrderedScheduler(
        process,
        OffsetTracker("t"),
        concurrency=2,
        max_buffered=10,
        on_pause=lambda: events.append("pause"),
        on_resume=lambda: events.append("resume"),
    )
    sched.start()
    for o in range(12):
        sched.submit(P0, o, o % 3, o)
    assert events == ["pause"] and sched.paused
    gate.set()
    await asyncio.wait_for(sched.wait_idle(), 10)
    await sched.stop()
    assert events == ["pause", "resume"]


async def test_drain_finishes_running_drops_queued_and_cancels_after_grace() -> None:
    slow = asyncio.Event()
    finished: list[int] = []

    async def process(batch: list[int]) -> None:
        if 0 in batch:
            await slow.wait()  # never set: outlives the grace period
        else:
            await asyncio.sleep(0.01)
        finished.extend(batch)

    tracker = OffsetTracker("t")
    sched: KeyOrderedScheduler[int] = KeyOrderedScheduler(process, tracker, concurrency=4, max_buffered=100)
    sched.start()
    sched.submit(P0, 0, "a", 0)  # stuck
    sched.submit(P0, 1, "b", 1)  # finishes during the drain
    await asyncio.sleep(0)  # both batches start
    sched.submit(P0, 2, "a", 2)  # queued behind the stuck one: dropped
    cancelled = await sched.drain(None, grace=0.3)
    assert cancelled == 1
    assert finished == [1]
    assert tracker.committable(P0) == 0  # nothing committed past the cancelled head
    assert sched.buffered == 0
    await sched.stop()


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"max_buffered": 0}])
def test_limits_must_be_positive(bad: dict[str, int]) -> None:
    kwargs = {"concurrency": 1, "max_buffered": 1, **bad}

    async def process(_: int) -> None: ...

    with pytest.raises(ValueError, match=">= 1"):
        KeyOrderedScheduler(process, OffsetTracker("t"), **kwargs)
