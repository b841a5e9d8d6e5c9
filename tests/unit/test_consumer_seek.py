"""After a rebalance Faust resumes the stream partitions, awaits a seek to the committed
offsets, then clears the stream queues. A record fetched inside that window was queued, cleared
and never fetched again (the position was past it), and the commit then passed it: a lost
record, seen once in eight runs of the 1 -> 2 -> 3 -> 2 workers test. The consumer must keep the
stream partitions from fetching from the seek until Faust's clear is done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.app import create_app
from streams.consumer import VigilConsumer
from streams.settings import Settings

STREAMS = {TP("chat.messages.v1", 0), TP("chat.messages.v1", 1)}
CHANGELOG = TP("vigil-probe-state-changelog", 0)


@pytest.fixture
async def consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[VigilConsumer, list[set[TP]]]]:
    app = create_app(Settings(data_dir=tmp_path, _env_file=None))
    consumer = app.vigil_consumer
    assigned = STREAMS | {CHANGELOG}
    monkeypatch.setattr(VigilConsumer, "_is_changelog_tp", lambda self, tp: tp.topic.endswith("-changelog"))
    monkeypatch.setattr(consumer, "assignment", lambda: assigned)
    fetchable_during_seek: list[set[TP]] = []

    async def seek_to_committed(self: VigilConsumer) -> None:
        fetchable_during_seek.append(set(self._get_active_partitions()))

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", seek_to_committed)
    yield consumer, fetchable_during_seek
    consumer._thread.thread_loop.close()  # never started: nothing else closes its loop


async def test_stream_partitions_fetch_again_only_after_the_queue_clear(
    consumer: tuple[VigilConsumer, list[set[TP]]],
) -> None:
    c, fetchable_during_seek = consumer
    # Faust's order in Recovery.on_recovery_completed and Recovery._resume_streams:
    c.resume_partitions(STREAMS | {CHANGELOG})
    await c.perform_seek()
    assert fetchable_during_seek == [{CHANGELOG}], "stream partitions fetched while the seek ran"
    assert c._get_active_partitions() == {CHANGELOG}, "stream partitions fetched before the clear"
    c.app.flow_control.resume()  # clears the stream queues
    c.resume_flow()
    assert c._get_active_partitions() == STREAMS | {CHANGELOG}


async def test_a_partition_paused_or_revoked_before_the_clear_stays_off(
    consumer: tuple[VigilConsumer, list[set[TP]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _ = consumer
    c.resume_partitions(STREAMS)
    await c.perform_seek()
    c.pause_partitions([TP("chat.messages.v1", 0)])  # a new rebalance began
    monkeypatch.setattr(c, "assignment", lambda: {TP("chat.messages.v1", 0)})
    c.resume_flow()
    assert c._get_active_partitions() == set()
    c.resume_flow()  # nothing left over for a later resume either
    assert c._get_active_partitions() == set()
