"""``vigil worker --exit-when-idle SECONDS`` on the real broker: the backlog is handled once,
the offsets are committed to the end, the process exits 0, and a second run handles only what
came after the first."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support import Cluster, Proc, committed_offsets, end_offsets

from .guarantees import IN, OUT, PROBE, assert_exact_sequences, conversations, ids_of, reply_records, rounds

pytestmark = [pytest.mark.kafka]

IDLE = ["--exit-when-idle", "2"]


def wait_exit(proc: Proc, timeout: float) -> tuple[int, float]:
    """The exit status of ``proc`` and how long it ran after this call, failing with its log."""
    started = time.monotonic()
    try:
        code = proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{proc.name} still running after {timeout}s:\n{proc.log()[-4000:]}") from None
    return code, time.monotonic() - started


def handled_by(cluster: Cluster, proc: Proc) -> list[str]:
    return [
        e["data"]["in_reply_to"] for e in reply_records(cluster) if f"pid={proc.pid}" in e["data"]["text"]
    ]


def assert_committed_to_the_end(cluster: Cluster) -> None:
    settings = cluster.settings()
    topic = settings.topic(IN)
    ends = end_offsets(settings, topic)
    committed = committed_offsets(settings, topic)
    assert sum(ends.values()) > 0
    assert {p: committed.get(p, 0) for p in ends} == ends, "committed offsets are not at the end offsets"


def test_exit_when_idle_drains_commits_and_exits_zero_then_handles_only_new_records(cluster: Cluster) -> None:
    cluster.create_topics(IN)
    backlog = conversations([f"s{i}" for i in range(20)], 10)  # 200 records over 20 subjects
    cluster.produce(IN, rounds(backlog, 0, 10))

    first = cluster.start_worker("first", args=[*PROBE, *IDLE])
    code, took = wait_exit(first, 60)
    assert code == 0, f"exit status {code}:\n{first.log()[-4000:]}"
    assert "exit-when-idle: no record for" in first.log()
    replies = reply_records(cluster)
    assert len(replies) == 200, f"{len(replies)} replies for 200 records"
    assert_exact_sequences(cluster, ids_of(backlog))  # each once, per-subject order kept
    assert len(handled_by(cluster, first)) == 200
    assert_committed_to_the_end(cluster)

    later = conversations([f"n{i}" for i in range(10)], 5)  # 50 new records, new subjects
    cluster.produce(IN, rounds(later, 0, 5))
    # A fresh data directory, as a scheduled job's container has: tables come back from Kafka.
    second = cluster.start_worker("second", args=[*PROBE, *IDLE])
    code, _ = wait_exit(second, 60)
    assert code == 0, f"exit status {code}:\n{second.log()[-4000:]}"
    assert sorted(handled_by(cluster, second)) == sorted(i for ids in ids_of(later).values() for i in ids)
    assert len(reply_records(cluster)) == 250, "the second run handled a record of the first again"
    assert_exact_sequences(cluster, {**ids_of(backlog), **ids_of(later)})
    assert_committed_to_the_end(cluster)
    print(f"first run: 200 records, exited {took:.1f}s after start")


def test_a_worker_without_partitions_exits_after_the_quiet_period(cluster: Cluster) -> None:
    cluster.create_topics(IN, partitions=1)
    convs = conversations(["a", "b"], 5)
    cluster.produce(IN, rounds(convs, 0, 5))
    one = {"VIGIL_PARTITIONS": "1"}  # its tables and outputs get one partition too
    owner = cluster.start_worker("owner", args=PROBE, **one)  # runs until stopped: keeps the partition
    cluster.wait_records(OUT, 10, timeout=60, procs=[owner])

    spare = cluster.start_worker("spare", args=[*PROBE, *IDLE], **one)
    code, _ = wait_exit(spare, 60)
    assert code == 0, f"exit status {code}:\n{spare.log()[-4000:]}"
    assert "every assigned source partition (0)" in spare.log(), spare.log()[-4000:]
    assert owner.alive()
    assert handled_by(cluster, spare) == []
    assert owner.stop() == 0
    assert_exact_sequences(cluster, ids_of(convs))


@pytest.mark.slow
def test_exit_when_idle_in_exactly_once_mode_commits_its_transactions_and_exits_zero(
    cluster: Cluster,
) -> None:
    cluster.create_topics(IN)
    backlog = conversations([f"s{i}" for i in range(20)], 5)
    cluster.produce(IN, rounds(backlog, 0, 5))
    worker = cluster.start_worker("eos", args=[*PROBE, *IDLE], VIGIL_PROCESSING_GUARANTEE="exactly_once")
    code, _ = wait_exit(worker, 60)
    assert code == 0, f"exit status {code}:\n{worker.log()[-4000:]}"
    assert_exact_sequences(cluster, ids_of(backlog), committed_only=True)  # replies in committed transactions
    assert_committed_to_the_end(cluster)
