"""Dead letters once per origin record: the per-partition window of dead-lettered offsets, the
dispatcher skipping a redelivered dead-lettered record, and the DLQ readers' collapse."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from schemas import Envelope
from streams import Context
from streams.core.codec import EncodedRecord
from streams.core.dlq import dead_letter
from streams.core.dlq_dedup import MAX_MARKS, TAG, DeadLetterMarks, DeadLetterWindow, window_key
from streams.core.records import ConsumedRecord
from streams.core.tables import MemoryTable, str_key
from streams.kafka.dlq_admin import once_per_origin
from streams.observability import metrics

from .test_dispatcher import Counter, MemoryPublisher, make, record, reply

TOPIC = "p.chat.messages.v1"


# -- the window ---------------------------------------------------------------------------------
def test_window_holds_offsets_with_their_timestamps() -> None:
    w = DeadLetterWindow()
    w.add(7, 1000)
    w.add(3, 900)
    w.add(12, None)
    assert list(w.offsets) == [3, 7, 12]
    assert w.contains(7, 1000) and w.contains(3, 900)
    assert not w.contains(7, 1001), "same offset, another record (topic recreated): not a mark"
    assert not w.contains(8, 1000) and not w.contains(0, None) and not w.contains(99, None)
    assert w.contains(12, 5) and w.contains(12, None), "a mark without a timestamp matches by offset"
    assert w.contains(7, None)


def test_window_keeps_the_highest_offsets_up_to_its_limit() -> None:
    w = DeadLetterWindow()
    for offset in range(10):
        w.add(offset, offset * 10, limit=4)
    assert list(w.offsets) == [6, 7, 8, 9] and list(w.timestamps) == [60, 70, 80, 90]
    w.add(2, 20, limit=4)  # below everything kept: it is the one evicted
    assert list(w.offsets) == [6, 7, 8, 9]
    w.add(8, 81, limit=4)  # the same offset again replaces, never grows
    assert list(w.offsets) == [6, 7, 8, 9] and w.contains(8, 81) and not w.contains(8, 80)
    with pytest.raises(ValueError, match="limit"):
        w.add(1, 1, limit=0)


def test_window_value_size_is_bounded_however_long_the_history() -> None:
    w = DeadLetterWindow()
    sizes = []
    for offset in range(0, 5 * MAX_MARKS, 2):
        w.add(offset, 1_700_000_000_000 + offset)
        sizes.append(len(w.encode()))
    assert max(sizes) == len(TAG) + 16 * MAX_MARKS == sizes[-1]
    assert len(w) == MAX_MARKS


def test_window_encoding_round_trips_and_refuses_other_values() -> None:
    w = DeadLetterWindow()
    for offset, ts in [(5, 1), (2**40, -1), (17, 2**42)]:
        w.add(offset, ts if ts != -1 else None)
    value = w.encode()
    assert value.startswith(TAG) and len(value) == len(TAG) + 3 * 16
    if sys.byteorder == "little":
        assert value[len(TAG) : len(TAG) + 8] == (5).to_bytes(8, "little")
    back = DeadLetterWindow.decode(value)
    assert list(back.offsets) == [5, 17, 2**40] and list(back.timestamps) == [1, 2**42, -1]
    assert len(DeadLetterWindow.decode(None)) == 0
    assert len(DeadLetterWindow.decode(TAG)) == 0
    for bad in (b'{"v": 1}', TAG + b"\x00" * 8, b"VDL2" + b"\x00" * 16):
        with pytest.raises(ValueError, match="not a dead-letter window"):
            DeadLetterWindow.decode(bad)


async def test_marks_are_kept_per_topic_and_partition() -> None:
    table = MemoryTable()
    marks = DeadLetterMarks(table)
    rec = ConsumedRecord(TOPIC, 3, 41, b"k", b"v", [], 1234)
    assert not marks.seen(rec)
    key, value = marks.marked(rec)
    assert key == str_key(window_key(TOPIC, 3)) == f'"{TOPIC}:3"'.encode()
    assert not marks.seen(rec), "marked() only computes"
    await table.write(3, [(key, value)])
    assert marks.seen(rec)
    assert not marks.seen(ConsumedRecord(TOPIC, 4, 41, b"k", b"v", [], 1234)), "another partition"
    assert not marks.seen(ConsumedRecord("p.other.v1", 3, 41, b"k", b"v", [], 1234)), "another topic"
    assert not marks.seen(ConsumedRecord(TOPIC, 3, 42, b"k", b"v", [], 1234)), "another offset"
    await table.write(3, [marks.marked(ConsumedRecord(TOPIC, 3, 45, None, None, [], 1240))])
    assert list(marks.window(TOPIC, 3).offsets) == [41, 45] and list(table.keys(3)) == [key]


# -- the dispatcher -------------------------------------------------------------------------------
def dlq_count(reason: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("vigil_dlq_records_total", {"agent": "count", "reason": reason})
        or 0.0
    )


def stamped(rec: ConsumedRecord, ts: int = 1_700_000_000_000) -> ConsumedRecord:
    return ConsumedRecord(rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.headers, ts)


@pytest.mark.parametrize(
    "poison",
    [
        record(value=b"\x00garbage", offset=4),  # undecodable: no id, no entity
        record(key="other", offset=4),  # key != subject
        record(value=b'{"id":"x","source":"s","type":"chat.nope.v1","subject":"c1","data":{}}', offset=4),
    ],
)
async def test_redelivered_poison_is_dead_lettered_once(poison: ConsumedRecord) -> None:
    d, _, pub = make(reply)
    poison = stamped(poison)
    assert await d.handle(poison) == "dlq"
    reason = dict(pub.sent[0][1].headers)["vigil_reason"].decode()
    before = dlq_count(reason)
    assert await d.handle(poison) == "duplicate"  # redelivered after a crash or a rebalance
    assert len(pub.sent) == 1 and dlq_count(reason) == before, "neither a second dead letter nor a count"
    assert d.marks.seen(poison)


class SlowPublisher(MemoryPublisher):
    async def publish(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        await asyncio.sleep(0.01)  # both records are past their reads before either writes
        await super().publish(topic, records)


async def test_concurrent_dead_letters_of_one_partition_keep_both_marks() -> None:
    d, _, _ = make(reply)
    d.effects.publisher = SlowPublisher()  # type: ignore[attr-defined]
    one, two = stamped(record(value=b"{", offset=4)), stamped(record(key="x", offset=5))
    assert await asyncio.gather(d.handle(one), d.handle(two)) == ["dlq", "dlq"]
    assert list(d.marks.window(one.topic, one.partition).offsets) == [4, 5]


async def test_a_new_record_at_a_marked_offset_is_not_skipped() -> None:
    """A recreated topic restarts its offsets: the timestamp tells the records apart."""
    d, _, pub = make(reply)
    assert await d.handle(stamped(record(value=b"\x00garbage", offset=4), ts=1000)) == "dlq"
    assert await d.handle(stamped(record(id="e9", offset=4), ts=2000)) == "ok"
    assert [t for t, _ in pub.sent] == ["p.dlq.count", "p.chat.replies.v1"]


async def test_exhausted_retries_are_not_run_again_on_redelivery() -> None:
    calls = []

    async def boom(event: Envelope[Any], ctx: Context[Counter]) -> None:
        calls.append(event.id)
        raise RuntimeError("no")

    d, table, pub = make(boom)
    rec = stamped(record(id="e1", offset=9))
    assert await d.handle(rec) == "dlq"
    attempts = len(calls)
    assert await d.handle(rec) == "duplicate"
    assert len(calls) == attempts and len(pub.sent) == 1 and table.empty()
    # the next record of the subject still runs
    assert await d.handle(stamped(record(id="e2", offset=10))) == "dlq"
    assert len(pub.sent) == 2


async def test_park_is_restored_when_the_mark_outlived_the_state_write() -> None:
    """At-least-once writes the parked state and the mark one after the other; a redelivery
    that finds the mark but not the park parks the subject as the dead letter had."""

    async def boom(event: Envelope[Any], ctx: Context[Counter]) -> None:
        raise RuntimeError("no")

    d, table, pub = make(boom, park=True)
    rec = stamped(record(id="e1", offset=9))
    assert await d.handle(rec) == "dlq" and table["c1"]["parked"] is True
    del table["c1"]  # the state write was lost, the mark was not
    assert await d.handle(rec) == "duplicate"
    assert table["c1"]["parked"] is True and len(pub.sent) == 1
    # parked records are dead-lettered once each too
    nxt = stamped(record(id="e2", offset=10))
    assert await d.handle(nxt) == "parked" and await d.handle(nxt) == "duplicate"
    assert [dict(r.headers)["vigil_reason"] for _, r in pub.sent] == [b"handler_error", b"parked"]


# -- the readers ----------------------------------------------------------------------------------
def in_dlq(
    origin: ConsumedRecord, at: tuple[int, int], dlq: str = "p.dlq.count", agent: str = "count"
) -> ConsumedRecord:
    letter = dead_letter(origin, RuntimeError("x"), agent=agent, attempts=1)
    return ConsumedRecord(dlq, at[0], at[1], letter.key, letter.value, letter.headers)


def test_readers_show_each_origin_record_once_per_dlq() -> None:
    a = record(value=b"{", offset=4)
    b = record(value=b"{", offset=5)
    first, again, other = in_dlq(a, (0, 1)), in_dlq(a, (0, 3)), in_dlq(b, (0, 2))
    elsewhere = in_dlq(a, (1, 0), dlq="p.dlq.triage", agent="triage")  # another agent failed it too
    foreign = ConsumedRecord("p.dlq.count", 0, 9, b"k", b"v", [])  # no origin headers
    got = once_per_origin([first, other, again, elsewhere, foreign, foreign])
    assert got == [first, other, elsewhere, foreign, foreign]
