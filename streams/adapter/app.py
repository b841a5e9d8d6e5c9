"""The Faust app: ``VigilApp`` (Vigil's consumer, a rebalance/stop drain bounded by
``drain_timeout``) and the factory that turns ``Settings`` into Faust configuration."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust
from faust.tables.manager import TableManager

from streams.adapter.consumer import Drainable, VigilConsumer
from streams.adapter.transactions import mark_clean_stop
from streams.core.settings import Settings

log = logging.getLogger(__name__)


class VigilTableManager(TableManager):
    """Faust's manager sleeps a second at start, so that agents may still declare tables while
    they start; Vigil declares every table before the worker starts (``bind_agent``), and the
    second was half of a worker's cold start."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class VigilApp(faust.App):
    """A Faust app whose consumer is ``VigilConsumer`` and whose rebalance/stop drain is
    bounded by ``drain_timeout``."""

    drain_timeout: float = 10.0
    #: failpoint for tests: the next N offset commits fail like a commit during a rebalance
    vigil_fail_commits: int = 0
    #: failpoint for tests: the next N post-rebalance resumes of stream partitions are lost
    vigil_fail_resumes: int = 0
    #: failpoint for tests: the next N publishes of emitted events are never acknowledged
    vigil_fail_stall_publishes: int = 0
    #: failpoint for tests: the next N releases of a backpressure hold are lost
    vigil_fail_releases: int = 0
    #: failpoint for tests: the next N fetches holding changelog records lose them
    vigil_fail_changelog_fetches: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the consumer group this app joins (its agent's own); None: the app id (Faust's)
        self.vigil_group_id: str | None = None
        #: the apps of one worker process (one per agent, sharing the table directory), self included
        self.vigil_peers: list[VigilApp] = [self]
        #: set when the consumer stopped: whether its transactions were all committed
        self.vigil_stopped_clean: bool | None = None
        self.drainables: list[Drainable] = []
        #: source topics the liveness guard watches (``streams.adapter.recovery.WatchedSource``)
        self.watched_sources: list[Any] = []
        #: per source topic, the agents' intakes of fetched records (``streams.adapter.worker``)
        self.direct_intakes: dict[str, list[Callable[[Any, Any], None]]] = {}

    #: set by the lag monitor: the highest lag of the groups consuming a topic, or None
    downstream_lag_reader: Callable[[str], float | None] | None = None

    def downstream_lag(self, topic: str) -> float | None:
        reader = self.downstream_lag_reader
        return reader(topic) if reader is not None else None

    def add_drainable(self, scheduler: Drainable) -> None:
        """Its tracker decides the committable offsets of its topic; it is drained on
        rebalance and stop."""
        self.drainables.append(scheduler)

    @property
    def vigil_consumer(self) -> VigilConsumer:
        consumer = self.consumer
        assert isinstance(consumer, VigilConsumer)
        return consumer

    def _new_consumer(self) -> VigilConsumer:
        return VigilConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.transport.loop,
        )

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        """Called by Faust when partitions are revoked and when the app stops, after fetching
        stopped: finish or cancel in-flight records, commit what finished, start afresh."""
        cancelled = await asyncio.gather(*(d.drain(None, self.drain_timeout) for d in self.drainables))
        if any(cancelled):
            log.warning(
                "drain: cancelled %d in-flight records after %.1fs", sum(cancelled), self.drain_timeout
            )
        # A commit tick already running may have read its offsets before the drain finished.
        await consumer.maybe_wait_for_commit_to_finish()
        await consumer.commit()
        for d in self.drainables:
            d.tracker.forget(d.tracker.partitions())

    async def _stop_consumer(self) -> None:
        await super()._stop_consumer()  # drains, commits, closes the tables
        if not self.in_transaction:
            return
        self.vigil_stopped_clean = self._consumer is not None and self.vigil_consumer.vigil_transactions.clean
        # The apps of a worker share the table directory: it is clean once every one stopped clean.
        if all(peer.vigil_stopped_clean for peer in self.vigil_peers):
            mark_clean_stop(self.conf.tabledir)


def settled(app: Any) -> bool:
    """Running between rebalances: not stopping, rebalancing or recovering, and the first
    assignment's tables are recovered (what the liveness guard and the idle exit wait for)."""
    return bool(
        not app.should_stop
        and not app.rebalancing
        and not app.in_recovery
        and app.tables.recovery.completed.is_set()
    )


def create_app(settings: Settings, *, group: str | None = None, web: bool = True) -> VigilApp:
    """One agent's app: ``group`` is its consumer group (``streams.core.groups``); the app id,
    hence the changelog topic names, stays ``settings.group_id``. ``web``: Faust's web server
    (``VIGIL_WEB_PORT``), on one app of a worker only."""
    brokers = [
        f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",") if server.strip()
    ]
    app = VigilApp(
        settings.group_id,
        broker=brokers,
        TableManager=VigilTableManager,
        store="rocksdb://",  # faust's RocksDB store; tables pick the rocksdict driver (streams.adapter.worker)
        datadir=str(settings.data_dir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        processing_guarantee=settings.processing_guarantee,
        broker_commit_interval=settings.commit_interval,
        # A SIGKILLed worker's partitions move after this long (faust's default is 60 s).
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 3),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,  # acks=all: an emit counts only once every in-sync replica has it
        # Batches of many lanes share a partition's produce batch (16 KiB by default), and a
        # full one makes the next send wait for it to drain.
        producer_max_batch_size=512 * 1024,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=web and settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        table_standby_replicas=0,
        # Vigil drains its own schedulers with a deadline (streams.adapter.consumer.VigilApp);
        # Faust's unbounded wait would outlive the rebalance timeout with slow handlers.
        stream_wait_empty=False,
    )
    app.vigil_group_id = group
    app.drain_timeout = settings.drain_timeout
    app.vigil_fail_commits = settings.fail_commits
    app.vigil_fail_resumes = settings.fail_resumes
    app.vigil_fail_stall_publishes = settings.fail_stall_publishes
    app.vigil_fail_releases = settings.fail_releases
    app.vigil_fail_changelog_fetches = settings.fail_changelog_fetches
    return app
