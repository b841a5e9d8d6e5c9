"""The Faust app factory: one place that turns ``Settings`` into Faust configuration."""

from __future__ import annotations

from streams.adapter.consumer import VigilApp
from streams.core.settings import Settings


def create_app(settings: Settings) -> VigilApp:
    brokers = [
        f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",") if server.strip()
    ]
    app = VigilApp(
        settings.group_id,
        broker=brokers,
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
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        table_standby_replicas=0,
        # Vigil drains its own schedulers with a deadline (streams.adapter.consumer.VigilApp);
        # Faust's unbounded wait would outlive the rebalance timeout with slow handlers.
        stream_wait_empty=False,
    )
    app.drain_timeout = settings.drain_timeout
    app.vigil_fail_commits = settings.fail_commits
    app.vigil_fail_resumes = settings.fail_resumes
    app.vigil_fail_changelog_fetches = settings.fail_changelog_fetches
    return app
