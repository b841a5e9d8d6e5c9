"""Key-ordered concurrency: many subjects in flight, each subject strictly one at a time.

Faust runs one record per partition at a time, and ``concurrency=N`` on a Faust agent breaks
per-key order. Here every record joins the lane of its (partition, key); a fixed pool of
``concurrency`` workers takes lanes round-robin from a ready queue, so at most one record of a
lane runs at once and lanes run in offset order. A worker takes the queued head of a lane as
one batch (up to ``max_batch`` records), so a busy subject costs one broker round trip per
batch, not per record. Progress goes to an ``OffsetTracker`` so the commit never passes an
unfinished record. Buffered records above ``max_buffered`` pause
fetching (``on_pause``); below half of it fetching resumes (``on_resume``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from streams.core.offsets import OffsetTracker
from streams.core.records import TP

log = logging.getLogger(__name__)

T = TypeVar("T")
LaneKey = tuple[TP, Hashable]


@dataclass(eq=False, slots=True)
class Job(Generic[T]):
    tp: TP
    offset: int
    key: Hashable
    item: T

    @property
    def lane(self) -> LaneKey:
        return (self.tp, self.key)


@dataclass(eq=False, slots=True)
class Running(Generic[T]):
    """The head of a lane being processed, and the worker processing it."""

    jobs: list[Job[T]]
    worker: asyncio.Task[None]


class KeyOrderedScheduler(Generic[T]):
    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[object]],
        tracker: OffsetTracker,
        *,
        concurrency: int,
        max_buffered: int,
        max_batch: int = 64,
        on_pause: Callable[[], None] = lambda: None,
        on_resume: Callable[[], None] = lambda: None,
        admit: Callable[[], Awaitable[None]] | None = None,
        name: str = "scheduler",
    ) -> None:
        if concurrency < 1 or max_buffered < 1 or max_batch < 1:
            raise ValueError("concurrency, max_buffered and max_batch must be >= 1")
        #: handles the queued head of one lane (up to ``max_batch`` records, in offset order)
        self._process = process
        self.tracker = tracker
        self.concurrency = concurrency
        self.max_buffered = max_buffered
        self.max_batch = max_batch
        self._on_pause = on_pause
        self._on_resume = on_resume
        #: awaited before a lane's batch starts: an open circuit or spent budget holds new starts
        self._admit = admit
        self.name = name
        self._lanes: dict[LaneKey, deque[Job[T]]] = {}
        self._ready: asyncio.Queue[LaneKey] = asyncio.Queue()
        self._running: dict[LaneKey, Running[T]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._failed: asyncio.Future[BaseException] | None = None
        self._progress = asyncio.Event()
        self.buffered = 0
        self.paused = False
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._failed = asyncio.get_running_loop().create_future()
        for _ in range(self.concurrency):
            self._spawn()

    def _spawn(self) -> None:
        worker = asyncio.create_task(self._work(), name=f"{self.name}-worker")
        self._workers.add(worker)
        worker.add_done_callback(self._worker_done)

    def _worker_done(self, worker: asyncio.Task[None]) -> None:
        self._workers.discard(worker)
        if worker.cancelled():
            if not self._stopping:
                self._spawn()  # cancelled by drain() with its lane: a fresh worker takes its place
            return
        exc = worker.exception()
        if exc is not None and self._failed is not None and not self._failed.done():
            self._failed.set_result(exc)

    async def stop(self) -> None:
        """Cancel everything at once: unfinished records stay uncommitted and are redelivered."""
        self._stopping = True
        workers = list(self._workers)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()

    async def wait_failed(self) -> BaseException:
        """Returns the first unexpected error of a worker (a bug: the dispatcher never raises)."""
        if self._failed is None:
            raise RuntimeError("scheduler not started")
        return await asyncio.shield(self._failed)

    # -- intake --------------------------------------------------------------------------
    def submit(self, tp: TP, offset: int, key: Hashable, item: T) -> bool:
        """False if the record was already seen (a re-fetch); it must not run twice at once."""
        if not self.tracker.track(tp, offset):
            return False
        job = Job(tp, offset, key, item)
        lane_key = (tp, key)
        lane = self._lanes.get(lane_key)
        if lane is None:
            self._lanes[lane_key] = deque([job])
            self._ready.put_nowait(lane_key)
        else:
            lane.append(job)
        self.buffered += 1
        if not self.paused and self.buffered >= self.max_buffered:
            self.paused = True
            self._on_pause()
        return True

    # -- work ----------------------------------------------------------------------------
    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            key = await self._ready.get()
            if self._admit is not None:
                await self._admit()
            lane = self._lanes.get(key)
            if not lane:
                continue  # dropped by drain()
            jobs = list(itertools.islice(lane, self.max_batch))
            self._running[key] = Running(jobs, me)
            try:
                await self._process([j.item for j in jobs])
            except asyncio.CancelledError:
                self._running.pop(key, None)
                self._discard(key)  # abandoned by drain() or stop(): the lane is gone, not committed
                self._progress.set()
                raise
            except BaseException:
                self._running.pop(key, None)
                raise
            self._running.pop(key, None)
            self._finish(key, jobs)

    def _finish(self, key: LaneKey, jobs: list[Job[T]]) -> None:
        lane = self._lanes.get(key)
        if lane and lane[0] is jobs[0]:
            for job in jobs:
                lane.popleft()
                self.tracker.done(job.tp, job.offset)
            self.buffered -= len(jobs)
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
        return [j for r in self._running.values() for j in r.jobs if tps is None or j.tp in tps]

    def _running_lanes(self, tps: Collection[TP] | None) -> list[Running[T]]:
        return [r for (tp, _), r in self._running.items() if tps is None or tp in tps]

    async def drain(self, tps: Collection[TP] | None, grace: float) -> int:
        """Stop starting records of ``tps`` (all if None), let running ones finish for up to
        ``grace`` seconds, then cancel the rest. Returns how many were cancelled. Queued
        records are dropped uncommitted: the partition's next owner reads them again."""
        for key in [k for k in self._lanes if tps is None or k[0] in tps]:
            lane = self._lanes[key]
            running = self._running.get(key)
            if running is not None and lane and lane[0] is running.jobs[0]:
                self.buffered -= len(lane) - len(running.jobs)
                self._lanes[key] = deque(running.jobs)
            else:
                self._discard(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._running_lanes(tps):
            left = deadline - loop.time()
            if left <= 0:
                break
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                break
        late = self._running_lanes(tps)
        for running in late:
            job = running.jobs[0]
            log.warning(
                "%s: cancelling %s[%d]@%d (+%d more of its subject) after %.1fs",
                self.name,
                job.tp.topic,
                job.tp.partition,
                job.offset,
                len(running.jobs) - 1,
                grace,
            )
            running.worker.cancel()
        if late:
            await asyncio.wait([r.worker for r in late])
        if self.paused and self.below_low_mark:
            self.paused = False
            self._on_resume()
        return sum(len(r.jobs) for r in late)
