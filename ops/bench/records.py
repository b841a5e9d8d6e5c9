"""The bench's records: chat messages in, the bench agent's replies out, and what is read off
them (event ids, handler times, rates from timestamps, per-key order)."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ops.bench.topics import Record
from schemas import RawEnvelope
from streams.core import codec
from streams.core.codec import EncodedRecord

RECORD_BYTES = 300


class BenchError(Exception):
    pass


def message(subject: str, text: str = "") -> EncodedRecord:
    """A ``chat.message.received.v2`` record padded to about ``RECORD_BYTES`` of value."""

    def build(body: str) -> EncodedRecord:
        env = RawEnvelope(
            source="vigil/bench",
            type="chat.message.received.v2",
            subject=subject,
            data={"conversation_id": subject, "user": "bench", "text": body, "channel": "web"},
        )
        return codec.encode(env)

    first = build(text)
    pad = RECORD_BYTES - len(first.value or b"")
    return build(text + "x" * pad) if pad > 0 else first


def messages(subjects: Sequence[str], text: str = "") -> list[EncodedRecord]:
    return [message(s, text) for s in subjects]


def event_id(record: Record) -> str:
    return next(bytes(v).decode() for k, v in record.headers if k == "ce_id")


@dataclass(frozen=True)
class Reply:
    subject: str
    in_reply_to: str
    sequence: int
    started: float
    done: float
    timestamp_ms: int


def reply_of(record: Record) -> Reply:
    data = json.loads(record.value or b"{}")["data"]
    started, done, _pid = data["text"].split()
    return Reply(
        data["conversation_id"],
        data["in_reply_to"],
        data["sequence"],
        float(started),
        float(done),
        record.timestamp,
    )


def rate(records: Sequence[Record]) -> float:
    """Records per second between the first and the last timestamp."""
    stamps: list[int] = [r.timestamp for r in records]
    span = (max(stamps) - min(stamps)) / 1000 if stamps else 0.0
    if len(stamps) < 2 or span <= 0:
        raise BenchError(f"cannot take a rate from {len(stamps)} records over {span}s")
    return (len(stamps) - 1) / span


def percentile(values: Sequence[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def check_order(inputs: Sequence[Record], outputs: Sequence[Record]) -> list[str]:
    """Per subject: one reply per input, in input order, numbered consecutively, and no two
    handlers of one subject overlapping in time. Returns what broke (empty: all good)."""
    want: dict[str, list[str]] = {}
    for r in inputs:  # partition then offset order; a subject lives on one partition
        want.setdefault((r.key or b"").decode(), []).append(event_id(r))
    got: dict[str, list[Reply]] = {}
    for r in outputs:
        reply = reply_of(r)
        got.setdefault(reply.subject, []).append(reply)
    problems: list[str] = []
    for subject, ids in want.items():
        replies = got.pop(subject, [])
        if [x.in_reply_to for x in replies] != ids:
            problems.append(f"{subject}: replies to {len(replies)} inputs out of order, missing or repeated")
            continue
        first = replies[0].sequence
        if [x.sequence for x in replies] != list(range(first, first + len(replies))):
            problems.append(f"{subject}: sequence numbers not consecutive")
        for a, b in itertools.pairwise(replies):
            if b.started < a.done - 1e-6:
                problems.append(
                    f"{subject}: handler of {b.in_reply_to} started before {a.in_reply_to} finished"
                )
                break
    problems.extend(f"{s}: replies without inputs" for s in got)
    return problems
