"""``vigil dlq`` against the real broker: DLQ records written as the worker writes them
(``streams.core.dlq.dead_letter`` on records read back from the origin topic), then listed, shown,
replayed, purged and released through the CLI; assertions read the topics back."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agents.cli import cli
from schemas import InvalidPayloadError, VigilError
from streams import kafka
from streams.core.dlq import H_AGENT, H_CONTROL, H_REPLAY, REASON_PARKED, VIGIL_HEADERS, dead_letter
from streams.core.errors import UndecodableError
from streams.core.records import ConsumedRecord
from tests.support import Cluster, partition_of

from .chat import IN, message, raw

pytestmark = pytest.mark.kafka

DLQ = "dlq.support"
OTHER = "dlq.other"
PARTITIONS = 3


class Parked(VigilError):
    reason = REASON_PARKED


@dataclass
class Seeded:
    """Originals as read back from the origin topic, by event id (or subject for poison)."""

    originals: dict[str, ConsumedRecord]


def vigil(cluster: Cluster, *args: str) -> Result:
    return CliRunner().invoke(cli, ["dlq", *args], obj={"settings": cluster.settings()})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def failed(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def ls(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    out = ok(vigil(cluster, "ls", "--json", *args)).stdout
    return [json.loads(line) for line in out.splitlines()]


def seed(cluster: Cluster) -> Seeded:
    """Five records of ``support`` dead-lettered for different reasons, one of agent ``other``."""
    cluster.create_topics(IN, DLQ, OTHER, partitions=PARTITIONS)
    no_header = message("c-4", "no ce_id header", id="e-4")
    cluster.produce(
        IN,
        [
            message("c-1", "one", id="e-1"),
            message("c-1", "two", id="e-2"),
            message("c-2", "three", id="e-3"),
            raw("c-3", b"\xff poison", [("trace", b"keep-me")]),
            raw("c-4", no_header.value, [("trace", b"t4")]),
        ],
    )
    originals: dict[str, ConsumedRecord] = {}
    for rec in cluster.read(IN):
        ce_id = dict(rec.headers).get("ce_id")
        originals[ce_id.decode() if ce_id else rec.key.decode()] = rec  # type: ignore[union-attr]
    failures: list[tuple[str, BaseException]] = [
        ("e-1", RuntimeError("boom")),
        ("e-2", Parked("subject 'c-1' is parked")),
        ("c-3", UndecodableError("record value is not UTF-8")),
        ("c-4", InvalidPayloadError("data.text: field required")),
    ]
    cluster.produce(DLQ, [dead_letter(originals[k], exc, agent="support", attempts=3) for k, exc in failures])
    cluster.produce(OTHER, [dead_letter(originals["e-3"], RuntimeError("x"), agent="other", attempts=1)])
    return Seeded(originals)


def test_ls_filters(cluster: Cluster) -> None:
    s = seed(cluster)
    everything = ls(cluster)
    assert sorted(r["id"] or r["subject"] for r in everything) == ["c-3", "e-1", "e-2", "e-3", "e-4"]
    assert {r["topic"] for r in everything} == {cluster.prefix + DLQ, cluster.prefix + OTHER}
    assert [r["id"] for r in ls(cluster, "--agent", "other")] == ["e-3"]
    assert len(ls(cluster, "--agent", "support")) == 4

    # --id: the ce_id header, or the envelope id when the header is missing (e-4)
    (e2,) = ls(cluster, "--id", "e-2")
    assert (e2["reason"], e2["subject"], e2["agent"]) == ("parked", "c-1", "support")
    origin = s.originals["e-2"]
    assert (e2["origin_topic"], e2["origin_partition"], e2["origin_offset"]) == (
        origin.topic,
        origin.partition,
        origin.offset,
    )
    assert [r["reason"] for r in ls(cluster, "--id", "e-4")] == ["invalid_payload"]
    # --subject is the key; same subject = same DLQ partition, listed in offset order
    assert [r["id"] for r in ls(cluster, "--subject", "c-1")] == ["e-1", "e-2"]
    assert [r["subject"] for r in ls(cluster, "--reason", "undecodable")] == ["c-3"]
    assert [r["id"] for r in ls(cluster, "--subject", "c-1", "--reason", "handler_error")] == ["e-1"]
    assert ls(cluster, "--subject", "c-1", "--reason", "undecodable") == []

    text = ok(vigil(cluster, "ls", "--agent", "support", "--subject", "c-3")).stdout.splitlines()
    assert len(text) == 1 and " reason=undecodable " in text[0] and " subject=c-3 " in text[0]

    failed(vigil(cluster, "ls", "--agent", "nope"), f"no DLQ topic '{cluster.prefix}dlq.nope'")


def test_show(cluster: Cluster) -> None:
    seed(cluster)
    out = ok(vigil(cluster, "show", "--id", "e-1")).stdout.splitlines()
    assert out[0].startswith(f"{cluster.prefix}{DLQ}:") and out[1] == "key: 'c-1'"
    assert "  ce_id: e-1" in out and "  vigil_reason: handler_error" in out
    assert "  vigil_error_message: boom" in out
    assert '    "id": "e-1",' in out  # the value, indented JSON

    poison = ok(vigil(cluster, "show", "--subject", "c-3")).stdout.splitlines()
    assert "  trace: keep-me" in poison and "  b'\\xff poison'" in poison

    # by position: exactly the record at that DLQ partition and offset
    (e2,) = ls(cluster, "--id", "e-2")
    by_offset = ok(
        vigil(
            cluster,
            "show",
            "--agent",
            "support",
            "--partition",
            str(e2["partition"]),
            "--offset",
            str(e2["offset"]),
        )
    )
    assert by_offset.stdout.splitlines()[0] == e2["ref"] and "  ce_id: e-2" in by_offset.stdout
    (as_json,) = [
        json.loads(line) for line in ok(vigil(cluster, "show", "--id", "e-2", "--json")).stdout.splitlines()
    ]
    assert as_json["headers"]["vigil_reason"] == "parked" and as_json["value"]["id"] == "e-2"

    failed(vigil(cluster, "show", "--id", "nope"), "no DLQ record matches")


def new_records(cluster: Cluster, topic: str, before: list[ConsumedRecord]) -> list[ConsumedRecord]:
    seen = {(r.partition, r.offset) for r in before}
    return sorted(
        (r for r in cluster.read(topic) if (r.partition, r.offset) not in seen),
        key=lambda r: (r.partition, r.offset),
    )


def test_replay_and_dry_run(cluster: Cluster) -> None:
    s = seed(cluster)
    before = cluster.read(IN)
    dlq_before = cluster.read(DLQ)

    dry = ok(vigil(cluster, "replay", "--subject", "c-1", "--dry-run"))
    assert len(dry.stdout.splitlines()) == 2 and "would replay 2 record(s)" in dry.stderr
    assert new_records(cluster, IN, before) == []

    refs = [r["ref"] for r in ls(cluster, "--subject", "c-1")] + [
        r["ref"] for r in ls(cluster, "--subject", "c-3")
    ]
    result = ok(vigil(cluster, "replay", "--agent", "support", "--subject", "c-1"))
    assert "replayed 2 record(s)" in result.stderr
    ok(vigil(cluster, "replay", "--agent", "support", "--reason", "undecodable"))

    got = new_records(cluster, IN, before)
    by_ref = {dict(r.headers)[H_REPLAY].decode(): r for r in got}
    assert sorted(by_ref) == sorted(refs)
    for ref, key in zip(refs, ("e-1", "e-2", "c-3"), strict=True):
        rec, original = by_ref[ref], s.originals[key]
        # original bytes, key and headers; the vigil_* DLQ headers are gone, the replay mark added
        assert (rec.key, rec.value) == (original.key, original.value)
        assert rec.headers == [*original.headers, (H_REPLAY, ref.encode())]
        assert not {k for k, _ in rec.headers} & set(VIGIL_HEADERS)
        assert rec.partition == original.partition  # keyed: back on the subject's partition
    # DLQ order: e-1 before e-2 on c-1's partition
    c1 = [dict(r.headers)["ce_id"] for r in got if r.key == b"c-1"]
    assert c1 == [b"e-1", b"e-2"]
    assert cluster.read(DLQ) == dlq_before  # replay leaves the DLQ as it was


def test_replay_refuses_missing_origins_and_sends_nothing(cluster: Cluster) -> None:
    s = seed(cluster)
    lost = ConsumedRecord(cluster.prefix + "gone.v1", 0, 5, b"c-9", b"{}", [])
    cluster.create_topics("dlq.lost", partitions=1)
    cluster.produce(
        "dlq.lost",
        [
            dead_letter(s.originals["e-1"], RuntimeError("fine"), agent="lost", attempts=1),
            dead_letter(lost, RuntimeError("origin deleted since"), agent="lost", attempts=1),
        ],
    )
    before = cluster.read(IN)
    failed(
        vigil(cluster, "replay", "--agent", "lost"), f"origin topic '{cluster.prefix}gone.v1' does not exist"
    )
    assert new_records(cluster, IN, before) == []
    assert cluster.prefix + "gone.v1" not in asyncio.run(kafka.list_topics(cluster.settings()))

    cluster.create_topics("dlq.bare", partitions=1)
    cluster.produce("dlq.bare", [raw("c-1", b"{}", [("vigil_reason", b"handler_error")])])
    failed(vigil(cluster, "replay", "--agent", "bare"), "has no vigil_origin_topic header")
    assert new_records(cluster, IN, before) == []


def test_purge(cluster: Cluster) -> None:
    seed(cluster)
    failed(vigil(cluster, "purge", "--agent", "support"), "refusing to purge")
    assert len(cluster.read(DLQ)) == 4

    c1 = ls(cluster, "--subject", "c-1")  # two records on one partition, offsets 0 and 1
    partition = c1[0]["partition"]
    assert [r["offset"] for r in c1] == [0, 1]
    ok(
        vigil(
            cluster,
            "purge",
            "--agent",
            "support",
            "--yes",
            "--partition",
            str(partition),
            "--before-offset",
            "1",
        )
    )
    assert [r["id"] for r in ls(cluster, "--subject", "c-1")] == ["e-2"]
    assert len(cluster.read(DLQ)) == 3

    result = ok(vigil(cluster, "purge", "--agent", "support", "--yes"))
    assert "purged 3 record(s)" in result.stderr
    assert cluster.read(DLQ) == [] and ls(cluster, "--agent", "support") == []
    assert len(cluster.read(OTHER)) == 1  # other agents' DLQs are untouched
    assert "purged 0 record(s)" in ok(vigil(cluster, "purge", "--agent", "support", "--yes")).stderr


def control_records(cluster: Cluster) -> list[ConsumedRecord]:
    return [r for r in cluster.read(IN) if H_CONTROL in dict(r.headers)]


def test_release(cluster: Cluster) -> None:
    seed(cluster)
    before = cluster.read(IN)
    result = ok(vigil(cluster, "release", "c-1", "--agent", "support"))
    (control,) = control_records(cluster)
    assert control.key == b"c-1" and control.value == b"{}"
    assert dict(control.headers) == {H_CONTROL: b"release", H_AGENT: b"support"}
    assert control.partition == partition_of("c-1", PARTITIONS)
    assert f"{control.topic}:{control.partition}:{control.offset}" in result.stdout
    assert len(new_records(cluster, IN, before)) == 1  # nothing replayed without --replay

    failed(vigil(cluster, "release", "c-1", "--agent", "nope"), "unknown agent 'nope'")


def test_release_then_replay(cluster: Cluster) -> None:
    s = seed(cluster)
    before = cluster.read(IN)
    result = ok(vigil(cluster, "release", "c-1", "--agent", "support", "--replay"))
    assert "replayed 2 record(s)" in result.stderr
    got = new_records(cluster, IN, before)
    # the release first, then the subject's dead letters in DLQ order, all on its partition
    assert [dict(r.headers).get(H_CONTROL) for r in got] == [b"release", None, None]
    assert [r.value for r in got[1:]] == [s.originals["e-1"].value, s.originals["e-2"].value]
    assert {r.partition for r in got} == {partition_of("c-1", PARTITIONS)}
    assert all(H_REPLAY in dict(r.headers) for r in got[1:])
