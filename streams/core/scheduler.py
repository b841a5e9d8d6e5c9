"""Key-ordered concurrency: many subjects in flight, each subject strictly one at a time.

Faust runs one record per partition at a time, and ``concurrency=N`` on a Faust agent breaks
per-key order. Here every record joins the lane of its (partition, key); a fixed pool of
``concurrency`` workers takes lanes round-robin from a ready queue, so at most one record of a
lane runs at once and lanes run in offset order. Progress goes to an ``OffsetTracker`` so the
commit never passes an unfinished record. Buffered records above ``max_buffered`` pause
fetching (``on_pause``); below half of it fetching resumes (``on_resume``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streams.core.offsets import OffsetTracker
from streams.core.records import TP

log = logging.getLogger(__name__)

T = TypeVar("T")
LaneKey = tuple[TP, Hashable]


@dataclass(eq=False)
class Job(Generic[T]):
    tp: TP
    offset: int
    key: Hashable
    item: T
    task: asyncio.Task[Any] | None = field(default=None, repr=False)

    @property
    def lane(self) -> LaneKey:
        return (self.tp, self.key)


class KeyOrderedScheduler(Generic[T]):
    def __init__(
        self,
        process: Callable[[T], Awaitable[object]],
        tracker: OffsetTracker,
        *,
        concurrency: int,
        max_buffered: int,
        on_pause: Callable[[], None] = lambda: None,
        on_resume: Callable[[], None] = lambda: None,
        admit: Callable[[], Awaitable[None]] | None = None,
        name: str = "scheduler",
    ) -> None:
        if concurrency < 1 or max_buffered < 1:
            raise ValueError("concurrency and max_buffered must be >= 1")
        self._process = process
        self.tracker = tracker
        self.concurrency = concurrency
        self.max_buffered = max_buffered
        self._on_pause = on_pause
        self._on_resume = on_resume
        #: awaited before a record starts: an open circuit or spent budget holds new starts
        self._admit = admit
        self.name = name
        self._lanes: dict[LaneKey, deque[Job[T]]] = {}
        self._ready: asyncio.Queue[LaneKey] = asyncio.Queue()
        self._running: dict[LaneKey, Job[T]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()
        self.buffered = 0
        self.paused = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"{self.name}-worker-{i}") for i in range(self.concurrency)
        ]

    async def stop(self) -> None:
        """Cancel everything at once: unfinished records stay uncommitted and are redelivered."""
        for job in list(self._running.values()):
            if job.task is not None:
                job.task.cancel()
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def wait_failed(self) -> BaseException:
        """Returns the first unexpected error of a worker (a bug: the dispatcher never raises)."""
        if not self._workers:
            raise RuntimeError("scheduler not started")
        done, _ = await asyncio.wait(self._workers, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                assert exc is not None
                return exc
        raise asyncio.CancelledError

    # -- intake --------------------------------------------------------------------------
    def submit(self, tp: TP, offset: int, key: Hashable, item: T) -> bool:
        """False if the record was already seen (a re-fetch); it must not run twice at once."""
        if not self.tracker.track(tp, offset):
            return False
        job = Job(tp, offset, key, item)
        lane = self._lanes.get(job.lane)
        if lane is None:
            self._lanes[job.lane] = deque([job])
            self._ready.put_nowait(job.lane)
        else:
            lane.append(job)
        self.buffered += 1
        if not self.paused and self.buffered >= self.max_buffered:
            self.paused = True
            self._on_pause()
        return True

    # -- work ----------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            if self._admit is not None:
                await self._admit()
            lane = self._lanes.get(key)
            if not lane:
                continue  # dropped by drain()
            job = lane[0]
            job.task = asyncio.ensure_future(self._process(job.item))
            self._running[key] = job
            try:
                await asyncio.wait({job.task})
            except asyncio.CancelledError:
                job.task.cancel()
                raise
            finally:
                self._running.pop(key, None)
            if job.task.cancelled():
                self._discard(key)  # abandoned by drain(): the lane is gone, not committed
                self._progress.set()
                continue
            exc = job.task.exception()
            if exc is not None:
                raise exc
            self._finish(key, job)

    def _finish(self, key: LaneKey, job: Job[T]) -> None:
        lane = self._lanes.get(key)
        if lane and lane[0] is job:
            lane.popleft()
            self.buffered -= 1
            self.tracker.done(job.tp, job.offset)
            if lane:
                self._ready.put_nowait(key)
            else:
                del self._lanes[key]
        if self.paused and self.below_low_mark:
            self.paused = False
            self._on_resume()
        self._progress.set()

    def _discard(self, key: LaneKey) -> None:
        lane = self._lanes.pop(key, None)
        if lane:
            self.buffered -= len(lane)

    async def wait_idle(self) -> None:
        """Until every submitted record finished (or was dropped by a drain)."""
        while self.buffered:
            self._progress.clear()
            await self._progress.wait()

    # -- rebalance and shutdown ----------------------------------------------------------
    @property
    def below_low_mark(self) -> bool:
        """Few enough records buffered for fetching to resume (half of ``max_buffered``)."""
        return self.buffered <= self.max_buffered // 2

    def buffered_of(self, tp: TP) -> int:
        """Records of ``tp`` queued or running (counted from the lanes, read by the liveness guard)."""
        return sum(len(lane) for (lane_tp, _), lane in self._lanes.items() if lane_tp == tp)

    def running(self, tps: Collection[TP] | None = None) -> list[Job[T]]:
        return [j for j in self._running.values() if tps is None or j.tp in tps]

    async def drain(self, tps: Collection[TP] | None, grace: float) -> int:
        """Stop starting records of ``tps`` (all if None), let running ones finish for up to
        ``grace`` seconds, then cancel the rest. Returns how many were cancelled. Queued
        records are dropped uncommitted: the partition's next owner reads them again."""
        for key in [k for k in self._lanes if tps is None or k[0] in tps]:
            lane = self._lanes[key]
            running = self._running.get(key)
            if running is not None and lane and lane[0] is running:
                self.buffered -= len(lane) - 1
                self._lanes[key] = deque([running])
            else:
                self._discard(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.running(tps):
            left = deadline - loop.time()
            if left <= 0:
                break
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                break
        late = self.running(tps)
        for job in late:
            log.warning(
                "%s: cancelling %s[%d]@%d after %.1fs",
                self.name,
                job.tp.topic,
                job.tp.partition,
                job.offset,
                grace,
            )
            if job.task is not None:
                job.task.cancel()
        if late:
            await asyncio.wait([j.task for j in late if j.task is not None])
            while self.running(tps):  # workers observe the cancellation on their next step
                self._progress.clear()
                await self._progress.wait()
        if self.paused and self.below_low_mark:
            self.paused = False
            self._on_resume()
        return len(late)
