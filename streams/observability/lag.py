"""Consumer lag, read from the broker: the worker's own groups (one per agent) on their source
topics, and every group that consumes a topic its agents emit to (the "downstream" groups
backpressure watches).

Lag of a partition = high watermark - committed offset; a partition the group never committed
counts whole (high - low watermark), which is what that group would read under
``auto.offset.reset=earliest``. Kafka has no API that returns lag, so it is computed here from
two: committed offsets (``OffsetFetch``, via aiokafka's admin client) and watermarks
(``ListOffsets``; aiokafka's admin client has no ``list_offsets``, so a group-less consumer
asks). Downstream groups are found by listing all groups and keeping those whose committed
offsets name an emitted topic; that costs one request per group, so it is repeated only every
``rediscover_every`` seconds, while the offsets of the groups found are read on every refresh.

A refresh that fails counts ``vigil_lag_scrape_errors_total`` and keeps the last values; the
monitor never raises into the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.observability import metrics

log = logging.getLogger(__name__)

#: (group, topic) -> {partition: lag}
Snapshot = dict[tuple[str, str], dict[int, int]]


def partition_lag(committed: int | None, low: int, high: int) -> int:
    """Records the group has yet to read in one partition (never negative)."""
    start = committed if committed is not None and committed >= 0 else low
    return max(0, high - max(start, low))


class LagMonitor:
    """Refreshes ``vigil_consumer_lag_records`` and answers ``lag(group, topic)``.

    ``run()`` loops until cancelled; ``refresh()`` is one round (raises on broker errors);
    ``tick()`` is one round that counts a failure instead of raising."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        sources: Iterable[str],
        emitted: Iterable[str],
        *,
        interval: float = 5.0,
        rediscover_every: float = 30.0,
        request_timeout: float = 10.0,
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.sources = frozenset(sources)
        #: the worker's own groups (one per agent) and the source topics each reads
        self.groups: dict[str, frozenset[str]] = (
            {g: frozenset(t) for g, t in groups.items()} if groups else {group: self.sources}
        )
        self.emitted = frozenset(emitted)
        self.interval = interval
        self.rediscover_every = rediscover_every
        self.request_timeout = request_timeout
        #: latest lag per (group, topic) and partition; empty until the first refresh
        self.snapshot: Snapshot = {}
        #: monotonic time of the last successful refresh
        self.refreshed_at: float | None = None
        self._downstream: set[str] = set()
        self._discovered_at: float | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._exported: set[tuple[str, str, str]] = set()
        self._failing = False

    # -- reading ---------------------------------------------------------------------------
    def lag(self, group: str, topic: str) -> int | None:
        """Total lag of ``group`` on ``topic`` at the last refresh; None if not tracked."""
        parts = self.snapshot.get((group, topic))
        return None if parts is None else sum(parts.values())

    def downstream_groups(self, topic: str) -> list[str]:
        return sorted(g for g, t in self.snapshot if t == topic and g not in self.groups)

    def downstream_lag(self, topic: str) -> int | None:
        """The largest total lag among the other groups consuming ``topic`` (an emitted
        topic); None when no such group is known."""
        lags = [self.lag(g, topic) or 0 for g in self.downstream_groups(topic)]
        return max(lags) if lags else None

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        try:
            while True:
                await self.tick()
                await asyncio.sleep(self.interval)
        finally:
            await self.close()

    async def tick(self) -> bool:
        """One refresh; a failure is counted and logged, never raised. True on success."""
        try:
            await asyncio.wait_for(self.refresh(), self.request_timeout * 3)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - lag must never take the worker down
            metrics.LAG_SCRAPE_ERRORS.inc()
            if not self._failing:
                log.warning("consumer lag refresh failed (%r); keeping the last values", exc)
            self._failing = True
            await self._reset_clients()
            return False
        if self._failing:
            log.info("consumer lag refresh works again")
        self._failing = False
        return True

    async def close(self) -> None:
        await self._reset_clients()
        for labels in self._exported:
            metrics.CONSUMER_LAG.remove(*labels)
        self._exported.clear()

    # -- one round -------------------------------------------------------------------------
    async def refresh(self) -> None:
        admin, consumer = await self._clients()
        now = time.monotonic()
        if self._discovered_at is None or now - self._discovered_at >= self.rediscover_every:
            self._downstream = await self._discover(admin)
            self._discovered_at = now

        groups = {*self.groups, *self._downstream}
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group, offsets in zip(
            groups,
            await asyncio.gather(*(admin.list_consumer_group_offsets(g) for g in groups)),
            strict=True,
        ):
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

        wanted: dict[str, set[str]] = {}
        for group, offsets in committed.items():
            topics = {tp.topic for tp in offsets} & self.emitted
            topics |= self.groups.get(group, frozenset())
            if topics:
                wanted[group] = topics
        all_topics = set().union(*wanted.values()) if wanted else set()
        partitions = await self._partitions(admin, all_topics)
        tps = [TopicPartition(t, p) for t in sorted(all_topics) for p in partitions.get(t, ())]
        if tps:
            lows, highs = await asyncio.gather(consumer.beginning_offsets(tps), consumer.end_offsets(tps))
        else:
            lows, highs = {}, {}

        snapshot: Snapshot = {}
        for group, topics in wanted.items():
            for topic in topics:
                snapshot[(group, topic)] = {
                    p: partition_lag(
                        committed[group].get(TopicPartition(topic, p)),
                        lows[TopicPartition(topic, p)],
                        highs[TopicPartition(topic, p)],
                    )
                    for p in partitions.get(topic, ())
                }
        self._export(snapshot)
        self.snapshot = snapshot
        self.refreshed_at = time.monotonic()

    async def _discover(self, admin: AIOKafkaAdminClient) -> set[str]:
        """Groups other than ours whose committed offsets name an emitted topic."""
        if not self.emitted:
            return set()
        names = sorted({str(g[0]) for g in await admin.list_consumer_groups()} - set(self.groups))
        found: set[str] = set()
        for group, offsets in zip(
            names,
            await asyncio.gather(*(admin.list_consumer_group_offsets(g) for g in names)),
            strict=True,
        ):
            if any(tp.topic in self.emitted and meta.offset >= 0 for tp, meta in offsets.items()):
                found.add(group)
        if found != self._downstream:
            log.info("downstream consumer groups: %s", ", ".join(sorted(found)) or "none")
        return found

    async def _partitions(self, admin: AIOKafkaAdminClient, topics: set[str]) -> dict[str, list[int]]:
        """Partition ids of each existing topic (a topic not created yet has none)."""
        if not topics:
            return {}
        described: list[dict[str, Any]] = await admin.describe_topics(sorted(topics))
        return {
            t["topic"]: sorted(p["partition"] for p in t["partitions"])
            for t in described
            if t["error_code"] == 0
        }

    def _export(self, snapshot: Snapshot) -> None:
        exported: set[tuple[str, str, str]] = set()
        for (group, topic), parts in snapshot.items():
            for partition, lag in parts.items():
                labels = (group, topic, str(partition))
                metrics.CONSUMER_LAG.labels(*labels).set(lag)
                exported.add(labels)
        for labels in self._exported - exported:  # a group or topic that went away
            metrics.CONSUMER_LAG.remove(*labels)
        self._exported = exported

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        """Started lazily, so a broker that is down at worker start only costs refreshes."""
        if self._admin is None or self._consumer is None:
            timeout_ms = int(self.request_timeout * 1000)
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=timeout_ms)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=timeout_ms,
            )
            self._admin, self._consumer = admin, consumer
            await admin.start()
            await consumer.start()
        return self._admin, self._consumer

    async def _reset_clients(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()
