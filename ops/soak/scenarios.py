"""The two fault scenarios of the soak, built from the pieces the fault tests use
(``tests/support.py``, ``tests/integration/guarantees.py``), but measuring instead of asserting:
a scenario step that times out is noted and the run goes on, and a :class:`Progress` tracker
follows the reply topic the whole time, so stalls and the time to full progress come from what a
downstream reader saw and when."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from streams import kafka
from streams.core.errors import BrokerUnavailableError
from tests.integration.guarantees import IN, OUT, PROBE, conversations, ids_of, rounds, timing
from tests.support import Cluster, Proc, wait_for

from .report import EXACTLY_ONCE


class Progress:
    """Follows the reply topic from the beginning in a thread of its own (a read_committed
    reader in exactly-once mode) and records when each input got its first reply. The topic
    must exist with a leader for every partition before :meth:`start` (a reader that finds no
    partitions ends at once, and is started again a second later)."""

    def __init__(self, cluster: Cluster, committed_only: bool) -> None:
        self.cluster = cluster
        self.committed_only = committed_only
        self.answered: list[tuple[float, int]] = []  # (monotonic time, inputs answered so far)
        self.produced: list[tuple[float, int]] = []  # (monotonic time, inputs produced so far)
        self.errors: list[str] = []
        self._inputs: set[str] = set()
        self._pids: set[int] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._follow())

    async def _follow(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        settings = self.cluster.settings()
        topic = self.cluster.prefix + OUT
        while True:  # until stop() cancels: a reader that ends or fails is started again
            try:
                records = kafka.read_topics(
                    settings, [topic], follow=True, committed_only=self.committed_only
                )
                async for record in records:
                    if record.value:
                        self._saw(json.loads(record.value))
            except (KafkaError, BrokerUnavailableError) as exc:
                self.errors.append(f"progress reader: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1)

    def _saw(self, env: dict[str, Any]) -> None:
        with self._lock:
            self._pids.add(int(timing(env)["pid"]))
            before = len(self._inputs)
            self._inputs.add(env["data"]["in_reply_to"])
            if len(self._inputs) != before:
                self.answered.append((time.monotonic(), len(self._inputs)))

    def count(self) -> int:
        with self._lock:
            return len(self._inputs)

    def handled_by(self, proc: Proc) -> bool:
        with self._lock:
            return proc.pid in self._pids

    def full_at(self, inputs: int) -> float | None:
        with self._lock:
            return next((t for t, n in self.answered if n >= inputs), None)


@dataclass
class Run:
    """One run of a scenario: its cluster, progress, and what it noted on the way."""

    cluster: Cluster
    guarantee: str
    deadline: float  # seconds from the last fault to full progress
    progress: Progress
    notes: list[str] = field(default_factory=list)
    last_fault: float | None = None
    marks: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, step)
    expected: dict[str, list[str]] = field(default_factory=dict)

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == EXACTLY_ONCE

    def mark(self, what: str) -> None:
        self.marks.append((time.monotonic(), what))

    def produce(self, records: list[Any]) -> None:
        self.mark(f"{len(records)} inputs produced")
        self.cluster.produce(IN, records)
        made = (self.progress.produced[-1][1] if self.progress.produced else 0) + len(records)
        self.progress.produced.append((time.monotonic(), made))

    def fault(self, what: str) -> None:
        self.mark(what)
        self.last_fault = time.monotonic()

    def worker(self, name: str, env: dict[str, str], data_dir: Path | None = None) -> Proc:
        guarantee = {"VIGIL_PROCESSING_GUARANTEE": self.guarantee}
        if "VIGIL_STALL_TIMEOUT" in os.environ:  # the workers' liveness guard watches the same
            guarantee["VIGIL_STALL_TIMEOUT"] = os.environ["VIGIL_STALL_TIMEOUT"]
        self.mark(f"{name} starts")
        return self.cluster.start_worker(name, data_dir, PROBE, **env, **guarantee)

    @property
    def inputs(self) -> int:
        return sum(len(ids) for ids in self.expected.values())

    def step(self, predicate: Callable[[], bool], timeout: float, what: str) -> bool:
        """Wait like a test would, but a timeout is a note, not the end of the run; stop
        waiting early once no worker of the run is alive to make progress."""

        def done_or_dead() -> bool:
            return predicate() or not any(p.alive() for p in self.cluster.procs)

        try:
            wait_for(done_or_dead, timeout, what, interval=0.2)
        except AssertionError as exc:
            self.notes.append(str(exc))
            return False
        if not predicate():
            self.notes.append(f"no worker alive while waiting for {what}")
            return False
        return True

    def finish(self, workers: list[Proc]) -> None:
        """Wait for every input to be answered, ``deadline`` seconds at most after the last
        fault; note the workers that exited on the way."""
        assert self.last_fault is not None
        inputs = self.inputs
        remaining = self.last_fault + self.deadline - time.monotonic()
        self.step(lambda: self.progress.count() >= inputs, max(remaining, 0.0), f"{inputs} inputs answered")
        for p in workers:
            if not p.alive():
                self.notes.append(f"{p.name} exited with {p.popen.returncode}")


def rebalance(run: Run) -> None:
    """As ``test_rebalances_while_load_is_running``: one worker, then two, then three, then the
    first leaves (SIGTERM, the last fault), with records produced throughout."""
    convs = conversations([f"b{i}" for i in range(60)], 20)
    run.expected = ids_of(convs)
    env = {"PROBE_LATENCY_MS": "100", "PROBE_CONCURRENCY": "4"}
    w1 = run.worker("w1", env)
    run.produce(rounds(convs, 0, 8))
    run.step(lambda: run.progress.count() >= 40, 90, "first replies")
    w2 = run.worker("w2", env)
    run.produce(rounds(convs, 8, 12))
    run.step(lambda: run.progress.handled_by(w2), 120, "w2 to take over partitions")
    w3 = run.worker("w3", env)
    run.produce(rounds(convs, 12, 16))
    run.step(lambda: run.progress.handled_by(w3), 120, "w3 to take over partitions")
    if run.progress.count() >= 960:
        run.notes.append("the load ran out before the third worker joined")
    run.fault("w1 leaves (SIGTERM)")
    if (code := w1.stop()) != 0:
        run.notes.append(f"w1 exited with {code} on SIGTERM")
    run.produce(rounds(convs, 16, 20))
    run.finish([w2, w3])


def sigkill(run: Run) -> None:
    """As ``test_sigkill_mid_stream_then_restart`` (and its exactly-once sibling, with their
    latencies and commit interval): SIGKILL mid-stream, restart on the same data dir (the
    restart is the last fault)."""
    convs = conversations([f"k{i}" for i in range(40)], 15)
    run.expected = ids_of(convs)
    run.produce(rounds(convs, 0, 15))
    if run.exactly_once:
        env = {"PROBE_LATENCY_MS": "50", "PROBE_CONCURRENCY": "8", "VIGIL_COMMIT_INTERVAL": "1"}
    else:
        env = {"PROBE_LATENCY_MS": "20", "PROBE_CONCURRENCY": "16"}
    data_dir = run.cluster.tmp / "data-k"
    worker = run.worker("a", env, data_dir)
    run.step(lambda: run.progress.count() >= 150, 90, "150 replies before the kill")
    run.mark("a is killed (SIGKILL)")
    worker.kill()
    if run.progress.count() >= 600:
        run.notes.append("the kill came too late to test anything")
    run.fault("the restart")
    worker = run.worker("b", env, data_dir)
    run.finish([worker])


SCENARIOS: dict[str, Callable[[Run], None]] = {"rebalance": rebalance, "sigkill": sigkill}
