"""The liveness guard on the real broker: a partition that no path resumes is found and read
again, with nothing lost and nothing handled twice.

The stall is made for real: ``VIGIL_FAIL_RESUMES=1`` makes a worker lose the resume of its
stream partitions at the end of its first rebalance (the point where Faust seeks them, clears
the stream queues and hands them back), which is the shape of the stall seen in the
1 -> 2 -> 3 -> 2 workers test. The second worker takes over partitions whose changelog has
records to restore, through Faust's own recovery path.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from streams import kafka
from streams.core.codec import EncodedRecord
from tests.support import Cluster, committed_offsets, end_offsets, free_port, wait_for

from .guarantees import IN, OUT, PROBE, assert_exact_sequences, conversations, ids_of, rounds, wait_replied

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GUARD = {"VIGIL_STALL_TIMEOUT": "3", "PROBE_LATENCY_MS": "20", "PROBE_CONCURRENCY": "8"}


def reply_ids(cluster: Cluster) -> list[str]:
    return [json.loads(r.value)["id"] for r in cluster.read(OUT) if r.value]


def handled_by(cluster: Cluster, pid: int) -> int:
    return sum(1 for env in cluster.read_json(OUT) if f"pid={pid}" in env["data"]["text"])


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_guard_resumes_partitions_whose_resume_was_lost_on_takeover(cluster: Cluster) -> None:
    convs = conversations([f"s{i}" for i in range(30)], 10)
    cluster.create_topics(IN)
    w1 = cluster.start_worker("w1", args=PROBE, **GUARD)
    cluster.produce(IN, rounds(convs, 0, 5))
    wait_replied(cluster, 150, [w1])  # w1 alone: every partition's changelog now has records

    port = free_port()
    w2 = cluster.start_worker("w2", args=PROBE, VIGIL_FAIL_RESUMES="1", VIGIL_METRICS_PORT=str(port), **GUARD)
    cluster.produce(IN, rounds(convs, 5, 7))  # these cross the rebalance: seek, clear, resume
    wait_for(lambda: "is lost" in w2.log(), 90, "w2's first post-rebalance resume to be lost", interval=0.3)
    cluster.produce(IN, rounds(convs, 7, 10))
    wait_replied(cluster, 300, [w1, w2], timeout=120)

    log = w2.log()
    resumed = re.findall(r"liveness guard: resuming (\S+)\[(\d+)\]", log)
    assert resumed, f"the guard never resumed a partition:\n{log[-4000:]}"
    # The guard's report of each stalled partition: nothing of it was consumed behind Vigil's
    # back. Before the fix of VigilConsumer._getmany the fetch position stood at the highwater
    # (aiokafka drained the records for an emptied partition set, Faust discarded them).
    reports = re.findall(r"\(recover\): \S+\[(\d+)\] .*?committed=(\d+) position=(\d+)", log)
    assert reports, f"no stall report:\n{log[-4000:]}"
    for partition, committed, position in reports:
        assert position == committed, f"partition {partition}: records consumed but never delivered"
    assert handled_by(cluster, w2.pid) > 0, "w2's partitions were never handled"
    text = scrape(port)
    assert metric(text, "vigil_partition_recoveries_total", action="resumed") >= len(set(resumed))
    assert metric(text, "vigil_stalled_partitions") == 0  # recovered: nothing stalled any more
    # Nothing lost, order kept, and nothing handled twice: one reply record per input.
    assert_exact_sequences(cluster, ids_of(convs))
    ids = reply_ids(cluster)
    assert len(ids) == len(set(ids)) == 300, (len(ids), len(set(ids)))


def test_without_the_guard_the_lost_resume_stalls_the_partitions(cluster: Cluster) -> None:
    """The failpoint is a real stall: with the guard's timeout out of reach, the second worker's
    partitions never move."""
    convs = conversations([f"n{i}" for i in range(12)], 4)
    cluster.create_topics(IN)
    env = {**GUARD, "VIGIL_STALL_TIMEOUT": "3600"}
    w1 = cluster.start_worker("w1", args=PROBE, VIGIL_FAIL_RESUMES="1", **env)
    wait_for(lambda: "is lost" in w1.log(), 90, "the first resume to be lost", interval=0.3)
    cluster.produce(IN, rounds(convs, 0, 4))
    assert wait_for(lambda: "Worker ready" in w1.log(), 30, "w1 ready")
    # A deadline, not a sleep: had anything been fetched, a reply would be there well before.
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(lambda: cluster.read(OUT), 5, "any reply", interval=0.5)
    assert w1.alive()


def test_watchdog_reseeks_a_changelog_partition_whose_fetched_records_were_lost(cluster: Cluster) -> None:
    """Faust's table recovery on a takeover, with the first fetch of changelog records lost
    after aiokafka consumed them (``VIGIL_FAIL_CHANGELOG_FETCHES=1``): recovery would wait for
    them forever. The recovery watchdog seeks the partition again; the restored state is
    complete, so every subject's sequence continues where w1 left it."""
    convs = conversations([f"r{i}" for i in range(30)], 10)
    cluster.create_topics(IN)
    w1 = cluster.start_worker("w1", args=PROBE, **GUARD)
    cluster.produce(IN, rounds(convs, 0, 5))
    wait_replied(cluster, 150, [w1])
    # Faust's own recovery path (the bulk restore's reader has no fetch to lose): the watchdog
    # guards it wherever it still runs (standbys, deadline, tables the bulk restore skips)
    w2 = cluster.start_worker(
        "w2", args=PROBE, VIGIL_FAIL_CHANGELOG_FETCHES="1", VIGIL_BULK_RESTORE="false", **GUARD
    )
    wait_for(lambda: "failpoint: " in w2.log(), 90, "w2 to lose a changelog fetch", interval=0.3)
    cluster.produce(IN, rounds(convs, 5, 10))
    wait_replied(cluster, 300, [w1, w2], timeout=120)
    log = w2.log()
    assert re.search(r"recovery of .+ stalled at offset", log), log[-4000:]
    assert handled_by(cluster, w2.pid) > 0, "w2 never finished its recovery"
    assert_exact_sequences(cluster, ids_of(convs))


def produce_in_transaction(cluster: Cluster, topic: str, records: list[EncodedRecord]) -> None:
    """What an upstream exactly-once producer writes: records, then a commit marker per partition."""

    async def go() -> None:
        settings = cluster.settings()
        producer = kafka.producer(settings, transactional_id=f"{cluster.prefix}upstream")
        async with producer as prod, prod.transaction():
            for r in records:
                await prod.send(cluster.prefix + topic, value=r.value, key=r.key, headers=r.headers)

    asyncio.run(go())


def test_an_idle_partition_behind_only_by_transaction_markers_is_not_stalled(cluster: Cluster) -> None:
    """Input written in a transaction leaves a commit marker after the last record: the
    committed offset stays one below the highwater for good. The guard re-reads such a
    partition once, finds nothing, and reports nothing: /readyz stays ready."""
    convs = conversations([f"t{i}" for i in range(12)], 3)
    cluster.create_topics(IN)
    port = free_port()
    w1 = cluster.start_worker("w1", args=PROBE, VIGIL_METRICS_PORT=str(port), **GUARD)
    produce_in_transaction(cluster, IN, rounds(convs, 0, 3))
    wait_replied(cluster, 36, [w1])
    committed = committed_offsets(cluster.settings(), cluster.prefix + IN)
    ends = end_offsets(cluster.settings(), cluster.prefix + IN)
    behind = [p for p, end in ends.items() if end > committed.get(p, 0)]
    assert behind, (committed, ends)  # the markers: the case this test is about

    def reported() -> str | None:
        text = scrape(port)
        if metric(text, "vigil_stalled_partitions") or metric(
            text, "vigil_partition_recoveries_total", action="resumed"
        ):
            return text
        return None

    # Two stall deadlines and more (deadline 3 s, a check every second): a false stall would
    # have been reported by then.
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(reported, 8, "a stalled partition reported", interval=0.5)
    assert metric(scrape(port), "vigil_partition_recoveries_total", action="probed") >= len(behind)
    assert "partition stalled" not in w1.log()
    assert_exact_sequences(cluster, ids_of(convs))


def test_guard_releases_a_hold_whose_condition_no_longer_holds(cluster: Cluster) -> None:
    """Eight records waiting when the worker starts fill its buffer (``max_buffered`` 8):
    fetching is held for ``in_flight``, and the scheduler's release at the low mark is lost
    (``VIGIL_FAIL_RELEASES=1``), so the topic stays held with nothing buffered and nothing
    more is fetched. The guard sees the hold's condition is false and releases it; every
    record is then handled, in order, once."""
    convs = conversations([f"h{i}" for i in range(20)], 6)
    cluster.create_topics(IN)
    records = rounds(convs, 0, 6)
    cluster.produce(IN, records[:8])  # one per subject: exactly the buffer, fetched at once
    port = free_port()
    env = {**GUARD, "PROBE_MAX_BUFFERED": "8", "PROBE_CONCURRENCY": "4"}
    w1 = cluster.start_worker("w1", args=PROBE, VIGIL_FAIL_RELEASES="1", VIGIL_METRICS_PORT=str(port), **env)
    wait_for(lambda: "failpoint: the release" in w1.log(), 90, "the lost release", interval=0.3)
    cluster.produce(IN, records[8:])
    wait_replied(cluster, 120, [w1], timeout=120)
    assert "releasing hold 'in_flight'" in w1.log()
    assert metric(scrape(port), "vigil_partition_recoveries_total", action="released") >= 1
    assert_exact_sequences(cluster, ids_of(convs))
    ids = reply_ids(cluster)
    assert len(ids) == len(set(ids)) == 120
