"""Vigil's consumer thread: the offset commit and the highwaters, which Faust runs on the
consumer's own thread and event loop.

The driver's ``_commit`` crashes the worker on any error but "already rebalanced"; a broker
restart must not kill workers, so retriable Kafka errors only skip this commit tick.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import aiokafka
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)


class VigilConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        """Faust joins the group named by the app id; a Vigil app joins its agent's own group
        (``VigilApp.vigil_group_id``, ``streams.core.groups``) and keeps the app id for its
        changelog topics."""
        consumer = super()._create_worker_consumer(transport)
        group = getattr(self.app, "vigil_group_id", None)
        if group:
            consumer._group_id = group  # noqa: SLF001 - read by start() to build the coordinator
        return consumer

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        consumer = self._ensure_consumer()
        assignment = self.assignment()
        committable = {
            faust_aiokafka.ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "")
            for tp, offset in offsets.items()
            if tp in assignment
        }
        if not committable:
            return False
        try:
            app = self.consumer.app
            if getattr(app, "vigil_fail_commits", 0) > 0:
                app.vigil_fail_commits -= 1  # type: ignore[attr-defined]
                raise CommitFailedError("failpoint: commit fails as if the group already rebalanced")
            await consumer.commit(committable)
        except CommitFailedError as exc:
            log.warning("offset commit failed (%s); it is retried on the next tick", exc)
            return False
        except KafkaError as exc:
            if not exc.retriable and not isinstance(exc, ConnectionError):
                raise
            log.warning("offset commit failed (%r); it is retried on the next tick", exc)
            return False
        return True

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """In exactly_once mode Faust asks for the last stable offset the consumer has seen in
        a fetch, which is -1 before the first one (recovery then fails its consistency check),
        and it ends recovery at the highwater - 1, which in a transactional changelog is a
        commit marker no consumer ever receives (recovery then stalls). Here the highwater of a
        changelog partition is one past its last committed record, asked of the broker."""
        if not self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        consumer = self._ensure_consumer()
        ends: dict[TP, int] = dict(await consumer.end_offsets(partitions))  # read_committed: LSO
        changelogs = set(self.app.tables.changelog_topics)
        tail = [tp for tp in partitions if tp.topic in changelogs and ends[tp] > 0]
        if tail:
            transport = cast(faust_aiokafka.Transport, self.transport)
            reader = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
                isolation_level="read_committed",
                enable_auto_commit=False,
                **faust_aiokafka.credentials_to_aiokafka_auth(
                    self.app.conf.broker_credentials, self.app.conf.ssl_context
                ),
            )
            await reader.start()
            try:
                for tp in tail:
                    ends[tp] = await last_record_offset(reader, tp, ends[tp]) + 1
            finally:
                await reader.stop()
        return ends


async def last_record_offset(reader: aiokafka.AIOKafkaConsumer, tp: TP, end: int) -> int:
    """Offset of the last record a read_committed reader gets below ``end`` (-1 if none), read
    from a tail window that doubles until it holds one (aborted blocks can be long)."""
    ktp = faust_aiokafka.ensure_aiokafka_TP(tp)
    reader.assign([ktp])
    begin = (await reader.beginning_offsets([ktp]))[ktp]
    window = 64
    while True:
        start = max(begin, end - window)
        reader.seek(ktp, start)
        last = -1
        empty_fetches = 0
        while await reader.position(ktp) < end:
            batch = await reader.getmany(ktp, timeout_ms=500)
            if not batch:
                empty_fetches += 1
                if empty_fetches > 20:  # never seen; Faust's own rule is the fallback
                    log.warning(
                        "could not read the tail of %s; assuming its last record is at %d", tp, end - 1
                    )
                    return end - 1
            last = max([last, *(m.offset for m in batch.get(ktp, ()) if m.offset < end)])
        if last >= 0 or start == begin:
            return last
        window *= 4
