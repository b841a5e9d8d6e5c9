"""Delivery guarantees of the key-ordered dispatcher on the real broker, with the probe agent
(tests/agents/probe.py) in separate worker processes. Assertions are on topic contents and on
committed offsets read back through the admin client."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from streams.core.dlq import CONTROL_RELEASE, control_record
from tests.support import Cluster, committed_offsets, end_offsets, keys_on_partition, wait_for

from .chat import message
from .guarantees import (
    DLQ,
    IN,
    OUT,
    PROBE,
    assert_exact_sequences,
    conversations,
    ids_of,
    rounds,
    timing,
    unique_replies,
    wait_replied,
)

pytestmark = pytest.mark.kafka


def test_slow_head_record_is_not_committed_past_and_runs_after_sigkill(cluster: Cluster) -> None:
    """faust-streaming #606: with concurrency 2, a slow record at the head of a partition while
    later records finish. Faust's bookkeeping commits past it; ours must stay at or below it."""
    settings = cluster.settings(partitions=2)
    topic = settings.topic(IN)
    slow_key, *fast_keys = keys_on_partition("head-", 0, 2, 6)
    other_keys = keys_on_partition("other-", 1, 2, 3)
    cluster.create_topics(IN, partitions=2)
    env = {"VIGIL_PARTITIONS": "2", "PROBE_CONCURRENCY": "2", "PROBE_SLOW_MS": "600000"}
    worker = cluster.start_worker("a", args=PROBE, **env)
    cluster.produce(IN, [message(slow_key, "slow head", id="slow-1")])
    cluster.produce(IN, [message(k, "fast", id=f"{k}-1") for k in fast_keys])
    wait_replied(cluster, len(fast_keys), [worker])
    assert "slow-1" not in {r["data"]["in_reply_to"] for r in unique_replies(cluster).values()}

    # Records on the other partition, produced after the fast ones finished: once their offset
    # is committed, a commit ran after the fast records were done.
    cluster.produce(IN, [message(k, "later", id=f"{k}-1") for k in other_keys])
    wait_for(lambda: committed_offsets(settings, topic).get(1) == 3, 60, "partition 1 committed to its end")
    head = committed_offsets(settings, topic).get(0)
    assert head is None or head <= 0, f"committed past the unfinished head record: {head}"

    worker.kill()
    worker = cluster.start_worker("b", args=PROBE, VIGIL_PARTITIONS="2", PROBE_CONCURRENCY="2")
    wait_replied(cluster, 1 + len(fast_keys) + len(other_keys), [worker])
    replies = unique_replies(cluster)
    answered = [r["data"]["in_reply_to"] for r in cluster.read_json(OUT)]
    assert "slow-1" in answered
    # the fast records were redelivered after the restart, but dedup kept them from running twice
    assert len(answered) == len(replies) == 1 + len(fast_keys) + len(other_keys)
    wait_for(lambda: committed_offsets(settings, topic) == end_offsets(settings, topic), 60, "all committed")


def test_failed_commit_is_retried_and_nothing_is_skipped(cluster: Cluster) -> None:
    """faust-streaming #316: a commit that fails (as during a rebalance) was recorded as done and
    never retried on an idle partition. The first three commits fail here; the offsets must
    still reach the end without new records arriving."""
    settings = cluster.settings()
    topic = settings.topic(IN)
    convs = conversations([f"h{i}" for i in range(6)], 3)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 3))
    worker = cluster.start_worker("a", args=PROBE, VIGIL_FAIL_COMMITS="3")
    wait_replied(cluster, 18, [worker])
    ends = {p: o for p, o in end_offsets(settings, topic).items() if o > 0}
    wait_for(lambda: committed_offsets(settings, topic) == ends, 60, "the failed commits to be retried")
    assert worker.stop() == 0

    more = conversations([f"h{i}" for i in range(6)], 5)
    cluster.produce(IN, rounds(more, 3, 5))
    worker = cluster.start_worker("b", args=PROBE)
    wait_replied(cluster, 30, [worker])
    assert_exact_sequences(cluster, ids_of(more))
    assert len(cluster.read(OUT)) == 30  # nothing re-run after the restart


def test_transient_failures_retry_without_blocking_other_subjects(cluster: Cluster) -> None:
    flaky = keys_on_partition("flaky-", 0, 6, 2)
    steady_same_partition = keys_on_partition("steady-", 0, 6, 3)
    steady = [*steady_same_partition, *(f"steady-x{i}" for i in range(12))]
    convs = conversations([*flaky, *steady], 3)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 3))
    env = {
        "PROBE_FAIL_PREFIX": "flaky-",
        "PROBE_FAIL_ATTEMPTS": "2",
        "PROBE_MAX_ATTEMPTS": "4",
        "PROBE_BACKOFF": "0.5",
        "PROBE_JITTER": "0",
        "PROBE_CONCURRENCY": "8",
    }
    worker = cluster.start_worker(args=PROBE, **env)
    wait_replied(cluster, 3 * len(convs), [worker])
    replies = assert_exact_sequences(cluster, ids_of(convs))
    times = {r["data"]["in_reply_to"]: timing(r) for r in replies.values()}

    # Every flaky record fails twice, then succeeds after backoffs of 0.5 s and 1 s: its records
    # finish one after another, each >= 1.5 s after the previous one.
    for s in flaky:
        assert [times[f"{s}-{k}"]["attempt"] for k in (1, 2, 3)] == [3.0, 3.0, 3.0]
        done = [times[f"{s}-{k}"]["done"] for k in (1, 2, 3)]
        assert done[1] - done[0] >= 1.5 and done[2] - done[1] >= 1.5, done
    # Meanwhile every steady subject, including those sharing the flaky subjects' partition,
    # finished before the first flaky record got through its retries.
    first_flaky_done = min(times[f"{s}-1"]["done"] for s in flaky)
    last_steady_done = max(times[f"{s}-3"]["done"] for s in steady)
    first_steady_start = min(times[f"{s}-1"]["started"] for s in steady)
    assert first_flaky_done - first_steady_start >= 1.5
    assert last_steady_done < first_flaky_done, (last_steady_done, first_flaky_done)
    assert cluster.read(DLQ) == []


def test_exhausted_retries_dead_letter_and_park_until_release(cluster: Cluster) -> None:
    env = {"PROBE_ON_DEAD_LETTER": "park", "PROBE_MAX_ATTEMPTS": "2", "PROBE_FAIL_PREFIX": "tr-"}
    env["PROBE_FAIL_ATTEMPTS"] = "5"
    cluster.create_topics(IN)
    cluster.produce(
        IN,
        [
            message("p", "one", id="p-1"),
            message("p", "boom two", id="p-2"),  # permanent failure: one attempt, then DLQ
            message("p", "three", id="p-3"),  # parked
            message("q", "one", id="q-1"),  # other subjects keep flowing
            message("tr-1", "one", id="tr-1"),  # transient, but more failures than attempts
            message("p", "four", id="p-4"),  # parked
        ],
    )
    worker = cluster.start_worker(args=PROBE, **env)
    dlq = cluster.wait_records(DLQ, 4, procs=[worker])
    got = [
        (h["ce_id"], h["vigil_reason"], h["vigil_attempts"])
        for h in ({k: v.decode() for k, v in r.headers} for r in dlq)
    ]
    assert sorted(got) == sorted(
        [
            ("p-2", "handler_error", "1"),
            ("p-3", "parked", "0"),
            ("p-4", "parked", "0"),
            ("tr-1", "handler_error", "2"),
        ]
    )
    wait_replied(cluster, 2, [worker])  # p-1 and q-1

    cluster.produce(IN, [control_record("probe", "p", CONTROL_RELEASE), message("p", "five", id="p-5")])
    wait_replied(cluster, 3, [worker])
    seqs = {r["data"]["in_reply_to"]: r["data"]["sequence"] for r in unique_replies(cluster).values()}
    assert seqs == {"p-1": 1, "q-1": 1, "p-5": 2}
    assert len(cluster.read(DLQ)) == 4  # the control record itself is never dead-lettered


def test_state_and_dedup_ids_rebuilt_from_changelog_after_rocksdb_loss(cluster: Cluster) -> None:
    convs = conversations([f"r{i}" for i in range(8)], 6)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 4))
    data_dir = cluster.tmp / "data-r"
    worker = cluster.start_worker("a", data_dir=data_dir, args=PROBE)
    wait_replied(cluster, 32, [worker])
    assert worker.stop() == 0
    shutil.rmtree(data_dir)

    # Redeliver everything already handled (same ids), then the rest.
    cluster.produce(IN, [*rounds(convs, 0, 4), *rounds(convs, 4, 6)])
    worker = cluster.start_worker("b", data_dir=data_dir, args=PROBE)
    wait_replied(cluster, 48, [worker])
    assert_exact_sequences(cluster, ids_of(convs))
    assert len(cluster.read(OUT)) == 48  # the 32 redelivered records emitted nothing


def test_sigterm_drains_in_flight_records_then_commits(cluster: Cluster, tmp_path: Path) -> None:
    settings = cluster.settings()
    topic = settings.topic(IN)
    marks = tmp_path / "marks"
    marks.mkdir()
    convs = conversations([f"d{i}" for i in range(6)], 1, text="slow")
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 1))
    env = {"PROBE_SLOW_MS": "3000", "PROBE_MARK_DIR": str(marks), "PROBE_CONCURRENCY": "8"}
    worker = cluster.start_worker("a", args=PROBE, **env)
    wait_for(lambda: len(list(marks.iterdir())) == 6, 60, "six handlers in flight")
    assert worker.stop() == 0
    # the graceful stop let all six finish and committed them before exiting
    assert len(cluster.read(OUT)) == 6
    ends = {p: o for p, o in end_offsets(settings, topic).items() if o > 0}
    assert committed_offsets(settings, topic) == ends


def test_second_sigterm_exits_at_once_and_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    convs = conversations(["s1", "s2"], 1, text="slow")
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 1))
    env = {"PROBE_SLOW_MS": "120000", "PROBE_MARK_DIR": str(marks), "VIGIL_DRAIN_TIMEOUT": "60"}
    worker = cluster.start_worker("a", args=PROBE, **env)
    wait_for(lambda: len(list(marks.iterdir())) == 2, 60, "two handlers in flight")
    worker.popen.send_signal(signal.SIGTERM)
    # a sync point only: the first signal was handled, so the second is a separate one
    wait_for(lambda: "Signal received" in worker.log(), 30, "the first SIGTERM to be handled")
    started = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(10) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10
    assert cluster.read(OUT) == []

    worker = cluster.start_worker("b", args=PROBE)
    wait_replied(cluster, 2, [worker])
    assert_exact_sequences(cluster, ids_of(convs))


def test_no_dedup_mark_outlives_an_unacknowledged_output_across_sigkill(cluster: Cluster) -> None:
    """At-least-once: a record's handled id (and state) must become durable only after its
    outputs are. Two publishes never complete here (a hung broker for those records); the other
    subjects finish and commit; then SIGKILL and a restart on the same data dir (RocksDB kept):
    the stalled records must run again, every input answered exactly once, in order."""
    convs = conversations([f"st{i}" for i in range(8)], 3)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 3))
    data_dir = cluster.tmp / "data-stall"
    env = {"PROBE_CONCURRENCY": "8", "VIGIL_FAIL_STALL_PUBLISHES": "2"}
    worker = cluster.start_worker("a", data_dir=data_dir, args=PROBE, **env)
    wait_replied(cluster, 6 * 3, [worker])  # the subjects that are not stuck finish
    answered = {r["data"]["in_reply_to"] for r in unique_replies(cluster).values()}
    assert len(answered) < 8 * 3, "the failpoint did not stall any publish"
    worker.kill()

    worker = cluster.start_worker("b", data_dir=data_dir, args=PROBE)
    wait_replied(cluster, 8 * 3, [worker])
    assert_exact_sequences(cluster, ids_of(convs))


def test_handled_ids_are_forgotten_after_the_retention(cluster: Cluster) -> None:
    """The id index is bounded by age: past VIGIL_DEDUP_RETENTION an id's entry is deleted
    (a tombstone in the changelog), and a re-send of that id runs again."""
    cluster.create_topics(IN)
    worker = cluster.start_worker("a", args=PROBE, VIGIL_DEDUP_RETENTION="2")
    cluster.produce(IN, [message("r", "one", id="r-1")])
    wait_replied(cluster, 1, [worker])
    cluster.produce(IN, [message("r", "two", id="r-2")])  # r-1 leaves the entity's last write
    wait_replied(cluster, 2, [worker])
    changelog = f"{cluster.settings().app_id}-probe-state-changelog"

    def swept() -> bool:
        return any(r.key == b"\x00id\x00r-1" and r.value is None for r in cluster.read(changelog))

    wait_for(swept, 60, "the index entry of r-1 to be swept", interval=0.5)
    cluster.produce(IN, [message("r", "one, re-sent after the retention", id="r-1")])
    wait_for(lambda: len(cluster.read_json(OUT)) >= 3, 60, "the late re-send to run", interval=0.3)
    replies = [r["data"] for r in cluster.read_json(OUT)]
    assert [(d["in_reply_to"], d["sequence"]) for d in replies] == [("r-1", 1), ("r-2", 2), ("r-1", 3)]
