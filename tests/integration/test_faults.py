"""Fault injection under load on the real broker: SIGKILL, rebalances, a broker restart, poison
and duplicates at volume, and throughput against the concurrency bound. Workers are separate
processes running the probe agent; assertions are on the records in the topics."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

import pytest

from streams.core.codec import EncodedRecord
from tests.brokers import select_broker
from tests.support import REPO, Cluster, wait_for

from .chat import message, raw
from .guarantees import (
    DLQ,
    IN,
    OUT,
    PROBE,
    assert_exact_sequences,
    conversations,
    ids_of,
    reply_records,
    rounds,
    timing,
    wait_replied,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def replied(cluster: Cluster) -> int:
    return len({json.loads(r.value or b"")["data"]["in_reply_to"] for r in cluster.read(OUT)})


def test_sigkill_mid_stream_then_restart(cluster: Cluster) -> None:
    convs = conversations([f"k{i}" for i in range(40)], 15)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 15))
    data_dir = cluster.tmp / "data-k"
    env = {"PROBE_LATENCY_MS": "20", "PROBE_CONCURRENCY": "16"}
    worker = cluster.start_worker("a", data_dir=data_dir, args=PROBE, **env)
    wait_for(lambda: replied(cluster) >= 150, 90, "150 replies before the kill", interval=0.2)
    worker.kill()
    assert replied(cluster) < 600, "the kill came too late to test anything"
    worker = cluster.start_worker("b", data_dir=data_dir, args=PROBE, **env)
    wait_replied(cluster, 600, [worker])
    assert_exact_sequences(cluster, ids_of(convs))


EXACTLY_ONCE = {"VIGIL_PROCESSING_GUARANTEE": "exactly_once"}


def assert_each_reply_committed_once(cluster: Cluster, count: int) -> None:
    """What a read_committed consumer downstream sees: one reply record per input, none twice."""
    committed = reply_records(cluster, committed_only=True)
    ids = [r["id"] for r in committed]
    assert len(ids) == len(set(ids)) == count, (len(ids), len(set(ids)), count)


def test_sigkill_exactly_once_read_committed_sees_each_reply_once(cluster: Cluster) -> None:
    """7a in exactly_once mode: the killed worker's open transaction is aborted (its replies
    are in the log but invisible to read_committed), its RocksDB is rebuilt from the committed
    changelog, and the restarted worker's replies complete the picture without a duplicate."""
    convs = conversations([f"x{i}" for i in range(40)], 15)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 15))
    data_dir = cluster.tmp / "data-x"
    env = {"PROBE_LATENCY_MS": "50", "PROBE_CONCURRENCY": "8", "VIGIL_COMMIT_INTERVAL": "1", **EXACTLY_ONCE}
    worker = cluster.start_worker("a", data_dir=data_dir, args=PROBE, **env)
    wait_replied(cluster, 150, [worker], timeout=90, committed_only=True)
    worker.kill()
    assert len(reply_records(cluster, committed_only=True)) < 600, "the kill came too late to test anything"
    worker = cluster.start_worker("b", data_dir=data_dir, args=PROBE, **env)
    wait_replied(cluster, 600, [worker], committed_only=True)
    assert_each_reply_committed_once(cluster, 600)
    assert_exact_sequences(cluster, ids_of(convs), committed_only=True)
    aborted = len(reply_records(cluster)) - 600
    assert aborted > 0, "the kill should have hit an open transaction (its replies stay in the log, aborted)"


def handled_by(cluster: Cluster, pid: int) -> bool:
    return any(timing(env)["pid"] == pid for env in cluster.read_json(OUT))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_rebalances_while_load_is_running(cluster: Cluster, guarantee: str) -> None:
    """One worker, then two, then three, then one leaves, with records arriving throughout;
    each worker must have handled records, so every rebalance happened under load. In
    exactly_once mode a read_committed reader also sees no reply record twice (faust's own
    exactly-once mode has open reports of duplicates under rebalance)."""
    convs = conversations([f"b{i}" for i in range(60)], 20)
    cluster.create_topics(IN)
    env = {"PROBE_LATENCY_MS": "100", "PROBE_CONCURRENCY": "4", "VIGIL_PROCESSING_GUARANTEE": guarantee}
    w1 = cluster.start_worker("w1", args=PROBE, **env)
    cluster.produce(IN, rounds(convs, 0, 8))
    wait_for(lambda: replied(cluster) >= 40, 90, "first replies", interval=0.2)
    w2 = cluster.start_worker("w2", args=PROBE, **env)
    cluster.produce(IN, rounds(convs, 8, 12))
    wait_for(lambda: handled_by(cluster, w2.pid), 120, "w2 to take over partitions", interval=0.3)
    w3 = cluster.start_worker("w3", args=PROBE, **env)
    # the next rounds go out once w3 holds partitions: w1 and w2 could otherwise drain them
    # all while w3 is still joining, and w3 would get nothing to handle
    wait_for(lambda: "Worker ready" in w3.log(), 90, "w3 to join the group", interval=0.3)
    cluster.produce(IN, rounds(convs, 12, 16))
    wait_for(lambda: handled_by(cluster, w3.pid), 120, "w3 to take over partitions", interval=0.3)
    assert replied(cluster) < 960, "the load ran out before the third worker joined"
    assert w1.stop() == 0
    cluster.produce(IN, rounds(convs, 16, 20))
    committed_only = guarantee == "exactly_once"
    wait_replied(cluster, 1200, [w2, w3], timeout=180, committed_only=committed_only)
    assert_exact_sequences(cluster, ids_of(convs), committed_only=committed_only)
    if committed_only:
        assert_each_reply_committed_once(cluster, 1200)


def test_broker_restart_while_workers_run(cluster: Cluster) -> None:
    if select_broker(os.environ).kind != "local":
        pytest.skip("restarts the broker through ops/kafka/kafka.sh: only with VIGIL_TEST_BROKER=local")
    kafka_sh = str(REPO / "ops/kafka/kafka.sh")
    port = cluster.bootstrap.rsplit(":", 1)[1]
    kenv = {**os.environ, "VIGIL_KAFKA_PORT": port}
    status = subprocess.run([kafka_sh, "status"], env=kenv, capture_output=True, text=True)
    assert status.returncode == 0, (
        f"this test restarts the broker through kafka.sh: {status.stdout}{status.stderr}"
    )

    convs = conversations([f"c{i}" for i in range(30)], 20)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 10))
    env = {"PROBE_LATENCY_MS": "50", "PROBE_CONCURRENCY": "4"}
    worker = cluster.start_worker(args=PROBE, **env)
    wait_for(lambda: replied(cluster) >= 60, 90, "replies before the broker stops", interval=0.2)
    subprocess.run([kafka_sh, "down"], env=kenv, check=True, capture_output=True)
    down_at = time.monotonic()
    subprocess.run([kafka_sh, "up"], env=kenv, check=True, capture_output=True)
    assert worker.alive()
    cluster.produce(IN, rounds(convs, 10, 20))
    wait_replied(cluster, 600, [worker], timeout=240)
    assert_exact_sequences(cluster, ids_of(convs))
    print(f"broker outage {time.monotonic() - down_at:.1f}s")


def test_poison_and_duplicates_mixed_into_ten_thousand_records(cluster: Cluster) -> None:
    rng = random.Random(7)
    convs = conversations([f"v{i}" for i in range(300)], 31)  # 9,300 valid records
    valid = rounds(convs, 0, 31)
    poison_kinds: list[tuple[str, EncodedRecord]] = []
    for n in range(500):
        kind = n % 4
        if kind == 0:
            poison_kinds.append(("undecodable", raw(f"v{n % 300}", b"{not json")))
        elif kind == 1:
            poison_kinds.append(("invalid_envelope", raw(f"v{n % 300}", b'{"id": "x"}')))
        elif kind == 2:
            rec = message(f"v{n % 300}", "?", id=f"unknown-{n}")
            value = (rec.value or b"").replace(b"chat.message.received.v2", b"chat.nope.v1")
            poison_kinds.append(("unknown_type", raw(f"v{n % 300}", value)))
        else:
            rec = message(f"v{n % 300}", "?", id=f"mismatch-{n}")
            poison_kinds.append(("invalid_envelope", raw(f"other{n}", rec.value)))
    # duplicates: 200 re-deliveries of valid records, each placed after its original
    stream: list[EncodedRecord] = list(valid)
    for rec in rng.sample(valid, 200):
        at = stream.index(rec)
        stream.insert(rng.randint(at + 1, len(stream)), rec)
    for _, rec in poison_kinds:
        stream.insert(rng.randint(0, len(stream)), rec)
    assert len(stream) == 10_000

    cluster.create_topics(IN)
    cluster.produce(IN, stream)
    started = time.monotonic()
    worker = cluster.start_worker(args=PROBE, PROBE_CONCURRENCY="64")
    dlq = cluster.wait_records(DLQ, 500, procs=[worker], timeout=240)
    wait_replied(cluster, 9_300, [worker], timeout=240)
    elapsed = time.monotonic() - started
    assert_exact_sequences(cluster, ids_of(convs))
    assert len(cluster.read(OUT)) == 9_300  # no duplicate delivery had an effect
    reasons = sorted(dict(r.headers)["vigil_reason"].decode() for r in dlq)
    assert reasons == sorted(kind for kind, _ in poison_kinds)
    print(f"10,000 records (500 poison, 200 duplicates): {elapsed:.1f}s including worker start")


def test_throughput_near_the_concurrency_bound(cluster: Cluster) -> None:
    """1,000 subjects, a 100 ms handler, concurrency 64: the bound is 640 events/s."""
    convs = conversations([f"f{i}" for i in range(1000)], 3)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 3))
    env = {"PROBE_LATENCY_MS": "100", "PROBE_CONCURRENCY": "64"}
    worker = cluster.start_worker(args=PROBE, **env)
    wait_replied(cluster, 3000, [worker], timeout=180)
    replies = assert_exact_sequences(cluster, ids_of(convs))
    times = [timing(r) for r in replies.values()]
    span = max(t["done"] for t in times) - min(t["started"] for t in times)
    rate = len(times) / span
    print(f"throughput {rate:.0f} events/s vs bound 640/s ({rate / 640:.0%}) over {span:.1f}s")
    assert rate >= 0.6 * 640, f"{rate:.0f} events/s is far below the bound of 640/s"
