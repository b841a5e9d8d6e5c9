"""Bulk restore of agent tables (streams.adapter.restore) on the real broker, with the probe agent:
a worker builds state, stops, loses its data dir, restarts, and must hold exactly the last
committed value of every changelog key (tombstones deleting, an aborted transaction's records
never applied), both in what its handlers see and in its RocksDB files. Partitions assigned by
a rebalance are restored, and a partition coming back to a worker that still has it locally
resumes from its persisted offset."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import rocksdict
from aiokafka import AIOKafkaProducer

from streams import kafka
from tests.support import Cluster, Proc, committed_offsets, end_offsets, partition_of, wait_for

from .guarantees import IN, PROBE, conversations, rounds, timing, unique_replies, wait_replied

pytestmark = pytest.mark.kafka

OFFSET_KEY = b"__faust\0offset__"
RESTORED = re.compile(r"bulk restore: (\d+) records into (\d+) changelog partitions")
STATE = "probe-state"


def changelog(table: str) -> str:
    """The changelog of ``table`` without the test prefix (the app id is ``vigil``)."""
    return f"vigil-{table}-changelog"


def changelog_values(cluster: Cluster, table: str, *, committed_only: bool) -> dict[int, dict[bytes, bytes]]:
    """The last value of every key per partition, as a read_committed (or plain) reader sees the
    changelog: what a correct restore must leave in the local store."""
    out: dict[int, dict[bytes, bytes]] = defaultdict(dict)
    for r in cluster.read(changelog(table), committed_only=committed_only):
        assert r.key is not None
        if r.value is None:
            out[r.partition].pop(r.key, None)
        else:
            out[r.partition][r.key] = r.value
    return out


def changelog_records(cluster: Cluster, *, committed_only: bool) -> int:
    names = [t for t in asyncio.run(kafka.list_topics(cluster.settings())) if t.startswith(cluster.prefix)]
    tables = [
        t[len(cluster.prefix) + len("vigil-") : -len("-changelog")] for t in names if t.endswith("-changelog")
    ]
    return sum(len(cluster.read(changelog(t), committed_only=committed_only)) for t in tables)


def local_tables(data_dir: Path) -> dict[str, dict[int, dict[bytes, bytes]]]:
    """Every table's partition stores under a stopped worker's data dir, read-only."""
    out: dict[str, dict[int, dict[bytes, bytes]]] = defaultdict(dict)
    for path in sorted(data_dir.rglob("*.db")):
        table, _, partition = path.name.removesuffix(".db").rpartition("-")
        db = rocksdict.Rdict(
            str(path), options=rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only()
        )
        try:
            out[table][int(partition)] = dict(db.items())
        finally:
            db.close()
    return out


def assert_local_state_is_the_changelog(
    cluster: Cluster, data_dir: Path, *, committed_only: bool, partitions: set[int] | None = None
) -> None:
    local = local_tables(data_dir)
    assert STATE in local, f"no {STATE} stores under {data_dir}: {sorted(local)}"
    for table, stores in local.items():
        expected = changelog_values(cluster, table, committed_only=committed_only)
        for partition, items in stores.items():
            if partitions is not None and partition not in partitions:
                continue
            persisted = items.pop(OFFSET_KEY, None)
            assert items == expected.get(partition, {}), f"{table}[{partition}] differs from its changelog"
            if expected.get(partition):
                assert persisted is not None, f"{table}[{partition}] has no persisted offset"


def restored(proc: Proc) -> list[int]:
    """Records of each bulk restore the worker logged, in order."""
    return [int(m.group(1)) for m in RESTORED.finditer(proc.log())]


def sequences(cluster: Cluster, *, committed_only: bool) -> dict[str, int]:
    """Reply sequence per input event id."""
    return {
        r["data"]["in_reply_to"]: r["data"]["sequence"]
        for r in unique_replies(cluster, committed_only=committed_only).values()
    }


async def write_changelog(
    cluster: Cluster, key: str, value: bytes | None, *, transactional: bool, abort: bool = False
) -> None:
    """One record into the state changelog at ``key``'s partition, as another writer of the
    table would (in a transaction in exactly_once mode; ``abort`` rolls it back)."""
    topic = cluster.prefix + changelog(STATE)
    extra = {"transactional_id": f"{cluster.prefix}restore-test"} if transactional else {}
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", **extra)
    await producer.start()
    try:
        if transactional:
            await producer.begin_transaction()
        sent = await producer.send(
            topic, key=json.dumps(key).encode(), value=value, partition=partition_of(key, 6)
        )
        if transactional:
            await sent
            await (producer.abort_transaction() if abort else producer.commit_transaction())
        else:
            await sent
    finally:
        await producer.stop()


def test_state_is_rebuilt_from_the_changelog_after_the_data_dir_is_deleted(cluster: Cluster) -> None:
    """Both guarantees, side by side (one prefix each) so their worker starts overlap."""
    eos_cluster = Cluster(
        cluster.bootstrap, cluster.prefix[:-1] + "e.", cluster.llm_base, cluster.tmp / "eos"
    )
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = [
                pool.submit(rebuilt_after_data_dir_deleted, cluster, "at_least_once"),
                pool.submit(rebuilt_after_data_dir_deleted, eos_cluster, "exactly_once"),
            ]
            for run in runs:
                run.result()
    finally:
        eos_cluster.stop_all()


def rebuilt_after_data_dir_deleted(cluster: Cluster, guarantee: str) -> None:
    """w1 builds state and stops; another writer deletes one entity (and, exactly_once, aborts a
    transaction that would have moved another one ahead); the data dir goes; w2 restores."""
    eos = guarantee == "exactly_once"
    subjects = [f"r{i}" for i in range(24)]
    convs = conversations(subjects, 5)
    cluster.create_topics(IN)
    env = {"VIGIL_PROCESSING_GUARANTEE": guarantee}
    data = cluster.tmp / "data"
    cluster.produce(IN, rounds(convs, 0, 4))
    w1 = cluster.start_worker("w1", data_dir=data, args=PROBE, **env)
    wait_replied(cluster, 96, [w1], committed_only=eos)
    assert w1.stop() == 0

    # another writer of the table: one entity deleted; in exactly_once mode, a transaction
    # that would have set another entity far ahead, aborted
    deleted, rolled_back = subjects[0], subjects[1]
    asyncio.run(write_changelog(cluster, deleted, None, transactional=eos))
    if eos:
        bogus = json.dumps({"v": 1, "state": {"handled": 900}, "handled": []}).encode()
        asyncio.run(write_changelog(cluster, rolled_back, bogus, transactional=True, abort=True))
    to_restore = changelog_records(cluster, committed_only=eos)
    shutil.rmtree(data)

    cluster.produce(IN, rounds(convs, 4, 5))  # handled only once the restore is done
    w2 = cluster.start_worker("w2", data_dir=data, args=PROBE, **env)
    wait_replied(cluster, 120, [w2], committed_only=eos)
    assert w2.stop() == 0

    got = sequences(cluster, committed_only=eos)
    fifth = {s: got[f"{s}-5"] for s in subjects}
    assert fifth == {s: 1 if s == deleted else 5 for s in subjects}, "state after the restore"
    assert sum(restored(w2)) == to_restore, w2.log()[-3000:]
    assert "Restoring state from changelog topics" not in w2.log(), (
        "Faust's recovery still had records to read"
    )
    assert_local_state_is_the_changelog(cluster, data, committed_only=eos)


@pytest.mark.slow
def test_partitions_assigned_by_rebalances_are_restored_from_their_persisted_offsets(
    cluster: Cluster,
) -> None:
    """w1 alone, then w2 joins (it restores what it is given from the start), then w2 leaves:
    w1 gets its partitions back with its own stores still there and reads only what w2 wrote
    after w1's persisted offsets. Every subject's sequence must run on without a gap."""
    settings = cluster.settings()
    subjects = [f"m{i}" for i in range(30)]
    convs = conversations(subjects, 5)
    cluster.create_topics(IN)
    data1 = cluster.tmp / "data-w1"
    w1 = cluster.start_worker("w1", data_dir=data1, args=PROBE)
    cluster.produce(IN, rounds(convs, 0, 2))
    wait_replied(cluster, 60, [w1])
    topic = settings.topic(IN)
    wait_for(lambda: committed_offsets(settings, topic) == end_offsets(settings, topic), 60, "w1's commits")

    w2 = cluster.start_worker("w2", args=PROBE)
    wait_for(lambda: restored(w2), 60, "w2's bulk restore of the partitions it was given", interval=0.3)
    cluster.produce(IN, rounds(convs, 2, 4))
    wait_replied(cluster, 120, [w1, w2])
    moved = {int(p) for p in re.findall(r"partition (\d) for gen", w2.log())}
    w2_subjects = [s for s in subjects if partition_of(s, 6) in moved]
    assert w2_subjects and any(timing(r)["pid"] == w2.pid for r in unique_replies(cluster).values())
    restored_before = len(restored(w1))
    assert w2.stop() == 0

    wait_for(lambda: len(restored(w1)) > restored_before, 60, "w1 to restore the partitions it got back")
    cluster.produce(IN, rounds(convs, 4, 5))
    wait_replied(cluster, 150, [w1])
    assert w1.stop() == 0

    got = sequences(cluster, committed_only=False)
    for s in subjects:
        assert [got[f"{s}-{k}"] for k in range(1, 6)] == [1, 2, 3, 4, 5], s
    back = restored(w1)[restored_before:]
    state_records = sum(len([r for r in cluster.read(changelog(STATE)) if r.partition == p]) for p in moved)
    assert 0 < sum(back) < state_records, (
        f"w1 re-read {back} records for partitions it got back; resuming from its persisted offsets "
        f"reads only w2's writes, less than the {state_records} records of those changelog partitions"
    )
    assert_local_state_is_the_changelog(cluster, data1, committed_only=False)
