"""What every phase of the bench shares: the broker, the sizes, the work dir, one producer, the
processes started (stopped by PID), and the helpers to create topics, produce, and wait for
output records."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from ops.bench import procs, topics
from ops.bench.procs import VIGIL, Child
from ops.bench.records import BenchError
from ops.bench.topics import Offsets, Record
from streams.core.codec import EncodedRecord

PARTITIONS = 6
IN = "chat.messages.v1"
OUT = "chat.replies.v1"
DLQ = "dlq.bench"
APP_ID = "bench"
CONCURRENCY = 128

_STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"bench [{time.monotonic() - _STARTED:6.1f}s]: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sizes:
    records: int  # P1: records through each loop (Vigil, raw, Faust, Quix, ceiling)
    subjects: int  # P1: distinct subjects among them
    hot_subjects: int  # P1h
    hot_per_subject: int  # P1h: records per hot subject (its history)
    eos_records: int  # P8
    age_seconds: float  # P3: seconds of paced traffic per side
    slow_records: int  # P2
    entities: int  # P4, and P5's smaller table
    entities_large: int  # P5's larger table (0: skipped)
    cold_starts: int  # P9: runs, median taken
    llm_calls: int  # vi_llm: calls per client per round (3 rounds)
    peers: bool  # P1q and the ceiling (they need the Quix venv)


class Bench:
    def __init__(self, bootstrap: str, sizes: Sizes, workdir: Path, small: bool) -> None:
        self.bootstrap = bootstrap
        self.sizes = sizes
        self.small = small
        self.workdir = workdir
        self.run = uuid.uuid4().hex[:8]
        self.children: list[Child] = []
        self._producer: AIOKafkaProducer | None = None
        self.order_problems: list[str] = []
        self.state_ok = True

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "Bench.start() first"
        return self._producer

    async def start(self) -> None:
        self._producer = topics.new_producer(self.bootstrap, linger_ms=5)
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        self.stop_all()

    def prefix(self, phase: str) -> str:
        return f"bench.{self.run}.{phase}."

    def group(self, prefix: str) -> str:
        """The app id of a Vigil worker on ``prefix``: the prefix of its changelog topics."""
        return prefix + APP_ID

    def agent_group(self, prefix: str, agent: str = "bench") -> str:
        """The consumer group of ``agent`` in a Vigil worker on ``prefix`` (``streams.core.groups``)."""
        return f"{prefix}{APP_ID}.{agent}"

    # -- processes ---------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        child = procs.spawn(name, args, env, self.workdir)
        self.children.append(child)
        return child

    def start_worker(
        self, name: str, prefix: str, data_dir: Path, *, agent: str = "bench", **extra_env: str
    ) -> Child:
        """A Vigil worker running ``agent`` of ``ops.bench.agents``."""
        env = procs.base_env()
        env.update(
            VIGIL_KAFKA_BOOTSTRAP=self.bootstrap,
            VIGIL_TOPIC_PREFIX=prefix,
            VIGIL_APP_ID=APP_ID,
            VIGIL_DATA_DIR=str(data_dir),
            VIGIL_METRICS_PORT="0",
            VIGIL_WEB_PORT="0",
            VIGIL_CONCURRENCY=str(CONCURRENCY),
            VIGIL_LOG_LEVEL="warning",
        )
        env.update(extra_env)
        return self.spawn(name, [*VIGIL, "worker", "--agents", agent, "-m", "ops.bench.agents"], env)

    def stop_all(self) -> None:
        for child in self.children:
            child.stop()

    # -- topics ------------------------------------------------------------------------------
    async def create(self, prefix: str, *extra: str) -> None:
        """A Vigil worker's topics on ``prefix`` (its output stamped by the broker) and ``extra``."""
        await topics.create(self.bootstrap, [prefix + n for n in (IN, DLQ, *extra)], PARTITIONS)
        await topics.create(self.bootstrap, [prefix + OUT], PARTITIONS, topics.APPEND_TIME)

    async def send(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        await topics.send_all(self.producer, topic, records)

    async def send_paced(self, topic: str, records: Sequence[EncodedRecord], per_second: float) -> None:
        """Send at ``per_second``, each record stamped with its send time."""
        futures = []
        started = time.perf_counter()
        sent = 0
        while sent < len(records):
            due = min(len(records), int((time.perf_counter() - started) * per_second) + 1)
            for r in records[sent:due]:
                futures.append(
                    await self.producer.send(
                        topic,
                        value=r.value,
                        key=r.key,
                        headers=r.headers,
                        timestamp_ms=int(time.time() * 1000),
                    )
                )
            sent = due
            await asyncio.sleep(0.002)
        await asyncio.gather(*futures)

    async def wait_records(
        self, topic: str, start: Offsets, count: int, process: Child, *, committed: bool = False
    ) -> list[Record]:
        """The first ``count`` records of ``topic`` past ``start``, once there; fails if
        ``process`` (the one writing them) exits or they take too long. ``committed``: read
        as a read_committed consumer (transactional output)."""
        deadline = time.monotonic() + 120 + count / 300
        while True:
            have = topics.count_since(await topics.end_offsets(self.bootstrap, topic), start)
            if have >= count:  # transaction markers take offsets too: count what is read
                got = await topics.read_range(self.bootstrap, topic, start, committed=committed)
                if len(got) >= count:
                    return got
            process.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{have} of {count} records on {topic}:\n{process.tail()}")
            await asyncio.sleep(0.5)

    async def delete_topics(self) -> None:
        """Every topic of this run, the ones peers name after their group included."""
        mine = [t for t in await topics.list_topics(self.bootstrap) if f"bench.{self.run}." in t]
        await topics.delete(self.bootstrap, mine)
