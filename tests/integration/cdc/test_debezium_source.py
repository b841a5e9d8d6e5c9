"""``vigil source debezium`` on the real broker: Debezium's example records (both converters) on
an input topic become db.public.customers.<op>.v1 events; the tombstone is skipped, a record that
is no change event is dead-lettered, and a restart resumes from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.core.codec import EncodedRecord, header
from tests.support import VIGIL, Cluster, Proc, start_process

pytestmark = pytest.mark.kafka

DATA = Path(__file__).resolve().parents[2] / "unit" / "data" / "debezium"
ORDER = ("read", "create", "update", "delete", "tombstone", "truncate")


def records(wrapper: str) -> list[EncodedRecord]:
    out = []
    for name in ORDER:
        doc = json.loads((DATA / f"customers-{name}.{wrapper}.json").read_text())
        key = None if doc["key"] is None else json.dumps(doc["key"]).encode()
        value = None if doc["value"] is None else json.dumps(doc["value"]).encode()
        out.append(EncodedRecord(key, value, []))
    return out


def start(cluster: Cluster, name: str) -> Proc:
    cmd = [*VIGIL, "source", "debezium", "--name", "inv", "--topic", "dbserver1.public.customers"]
    proc = start_process(name, cmd, cluster.env(), cluster.tmp / f"{name}.log")
    cluster.procs.append(proc)
    return proc


def test_translates_skips_tombstones_dead_letters_and_resumes(cluster: Cluster) -> None:
    cluster.create_topics("dbserver1.public.customers", partitions=1)
    cluster.produce("dbserver1.public.customers", records("plain"))
    proc = start(cluster, "dbz1")
    out = cluster.wait_records("db.public.customers.v1", 5, timeout=60, procs=[proc])
    types = [json.loads(r.value or b"")["type"] for r in out]
    assert types == [
        "db.public.customers.read.v1",
        "db.public.customers.created.v1",
        "db.public.customers.updated.v1",
        "db.public.customers.deleted.v1",
        "db.public.customers.truncated.v1",
    ]
    assert [r.key for r in out] == [b"1", b"1", b"1", b"1", b"public.customers"]
    assert all(header(r.headers, "ce_id") for r in out)

    # a poison record, then the same changes with the schema wrapper: same events, same ids
    cluster.produce("dbserver1.public.customers", [EncodedRecord(b'{"id": 9}', b"{not json", [])])
    cluster.produce("dbserver1.public.customers", records("schema"))
    dlq = cluster.wait_records("dlq.debezium_inv", 1, timeout=60, procs=[proc])
    assert header(dlq[0].headers, "vigil_reason") == b"invalid_change_event"
    assert dlq[0].value == b"{not json"
    out = cluster.wait_records("db.public.customers.v1", 10, timeout=60, procs=[proc])
    ids = [header(r.headers, "ce_id") for r in out]
    assert ids[5:] == ids[:5]
    proc.stop()
    assert proc.popen.returncode == 0, proc.log()[-2000:]

    # a restart resumes after the last translated record: only the new ones come out (a
    # re-read from the start would put the read/create repeats first, in partition order)
    cluster.produce("dbserver1.public.customers", records("plain")[1:3])
    again = start(cluster, "dbz2")
    out = cluster.wait_records("db.public.customers.v1", 12, timeout=60, procs=[again])
    assert [json.loads(r.value or b"")["type"].split(".")[-2] for r in out[10:]] == ["created", "updated"]
    assert [header(r.headers, "ce_id") for r in out[10:]] == ids[1:3]
    assert len(cluster.read("dlq.debezium_inv")) == 1
