"""Shared pieces of the delivery-guarantee tests: the probe agent's inputs and the checks on
its replies (every input answered, sequences 1..n in input order, duplicates identical)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from streams.core.codec import EncodedRecord
from tests.support import Cluster, Proc, wait_for

from .chat import message

PROBE = ["--module", "tests.agents.probe", "--agents", "probe"]
IN = "chat.messages.v1"
OUT = "chat.replies.v1"
DLQ = "dlq.probe"


def conversations(
    subjects: list[str], per_subject: int, *, text: str = "m"
) -> dict[str, list[EncodedRecord]]:
    return {s: [message(s, f"{text}{k}", id=f"{s}-{k}") for k in range(1, per_subject + 1)] for s in subjects}


def rounds(convs: dict[str, list[EncodedRecord]], start: int, stop: int) -> list[EncodedRecord]:
    """Messages ``start..stop-1`` of every conversation, interleaved, each conversation in order."""
    return [records[k] for k in range(start, stop) for records in convs.values() if k < len(records)]


def ids_of(convs: dict[str, list[EncodedRecord]]) -> dict[str, list[str]]:
    return {s: [json.loads(r.value or b"")["id"] for r in records] for s, records in convs.items()}


def reply_records(cluster: Cluster, *, committed_only: bool = False) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in cluster.read(OUT, committed_only=committed_only) if r.value]


def unique_replies(cluster: Cluster, *, committed_only: bool = False) -> dict[str, dict[str, Any]]:
    """Replies by event id; a redelivered record may be emitted again, but only identically."""
    by_id: dict[str, dict[str, Any]] = {}
    for env in reply_records(cluster, committed_only=committed_only):
        prev = by_id.setdefault(env["id"], env)
        assert (prev["data"]["in_reply_to"], prev["data"]["sequence"]) == (
            env["data"]["in_reply_to"],
            env["data"]["sequence"],
        ), f"reply id {env['id']} emitted twice with different content"
    return by_id


def wait_replied(
    cluster: Cluster, count: int, procs: list[Proc], timeout: float = 120, *, committed_only: bool = False
) -> None:
    def enough() -> bool:
        for p in procs:
            assert p.alive(), f"{p.name} exited with {p.popen.returncode}:\n{p.log()[-3000:]}"
        replies = unique_replies(cluster, committed_only=committed_only).values()
        return len({r["data"]["in_reply_to"] for r in replies}) >= count

    try:
        wait_for(enough, timeout, f"{count} inputs answered", interval=0.5)
    except AssertionError as exc:
        logs = "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in cluster.procs)
        raise AssertionError(f"{exc}\n{logs}") from None


def assert_exact_sequences(
    cluster: Cluster, expected: dict[str, list[str]], *, committed_only: bool = False
) -> dict[str, dict[str, Any]]:
    """Every input answered once per id, and the k-th input of a subject got sequence k: no gap,
    no duplicate sequence number, per-subject order kept."""
    replies = unique_replies(cluster, committed_only=committed_only)
    got: dict[str, dict[str, int]] = defaultdict(dict)
    for env in replies.values():
        d = env["data"]
        assert d["in_reply_to"] not in got[env["subject"]], f"two reply ids for input {d['in_reply_to']}"
        got[env["subject"]][d["in_reply_to"]] = d["sequence"]
    for subject, ids in expected.items():
        assert got[subject] == {eid: k for k, eid in enumerate(ids, 1)}, f"subject {subject}"
    assert set(got) <= set(expected)
    return replies


def timing(env: dict[str, Any]) -> dict[str, float]:
    """``started``/``done``/``attempt`` the probe wrote into the reply text."""
    return {k: float(v) for k, v in (part.split("=") for part in env["data"]["text"].split())}
