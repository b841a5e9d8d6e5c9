"""The dispatcher's decisions, with an in-memory table and publisher (no broker)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope, RawEnvelope
from streams import Context, Runtime, Settings
from streams.core import codec
from streams.core.context import derived_id
from streams.core.dispatcher import Dispatcher
from streams.core.records import ConsumedRecord
from streams.core.state import ID_PREFIX, StateStore
from streams.core.tables import MemoryTable, str_key

PARTITION = 3


class Entities(MemoryTable):
    """The state table, read back as the decoded entity values and handled ids of partition 3."""

    def __getitem__(self, subject: str) -> dict[str, Any]:
        raw = self.get(PARTITION, str_key(subject))
        if raw is None:
            raise KeyError(subject)
        value: dict[str, Any] = json.loads(raw)
        return value

    def __delitem__(self, subject: str) -> None:
        del self.partitions[PARTITION][str_key(subject)]

    def ids(self) -> list[str]:
        """Every id in the index, in the order first written."""
        return [k[len(ID_PREFIX) :].decode() for k in self.keys(PARTITION) if k.startswith(ID_PREFIX)]

    def empty(self) -> bool:
        return not any(self.partitions.values())


class Counter(BaseModel):
    n: int = 0


class MemoryPublisher:
    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, codec.EncodedRecord]] = []
        self.failures = failures

    async def publish(self, topic: str, records: Sequence[codec.EncodedRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.sent.extend((topic, r) for r in records)


def make(
    handler: Any, *, publisher: MemoryPublisher | None = None, park: bool = False
) -> tuple[Dispatcher, Entities, MemoryPublisher]:
    rt = Runtime()
    rt.agent(
        ChatMessageReceivedV2,
        name="count",
        state=Counter,
        emits=[ChatReplyRequestedV1],
        on_dead_letter="park" if park else "continue",
    )(handler)
    table = Entities()
    pub = publisher or MemoryPublisher()
    settings = Settings(topic_prefix="p.", _env_file=None)  # type: ignore[call-arg]
    return Dispatcher(rt.agents["count"], settings, StateStore(table, Counter), pub, {}), table, pub


def record(
    conv: str = "c1", *, id: str = "e1", offset: int = 0, key: str | None = None, value: bytes | None = None
) -> ConsumedRecord:
    if value is None:
        env = RawEnvelope(
            id=id,
            source="t",
            type="chat.message.received.v1",
            subject=conv,
            data={"conversation_id": conv, "user": "u", "text": "hi"},
        )
        value = codec.encode(env).value
    headers = [("ce_id", id.encode())]
    if b'"type":"chat.message.received.v2"' in value:
        headers.append(("ce_type", b"chat.message.received.v2"))
    return ConsumedRecord("p.chat.messages.v1", PARTITION, offset, (key or conv).encode(), value, headers)


async def reply(event: Envelope[ChatMessageReceivedV2], ctx: Context[Counter]) -> None:
    ctx.state.n += 1
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=event.subject, in_reply_to=event.id, sequence=ctx.state.n, text="ok"
        )
    )


async def test_ok_emits_then_saves_state_and_id() -> None:
    d, table, pub = make(reply)
    assert await d.handle(record(id="e1")) == "ok"
    assert await d.handle(record(id="e2", offset=1)) == "ok"
    assert [t for t, _ in pub.sent] == ["p.chat.replies.v1"] * 2
    out = [json.loads(r.value) for _, r in pub.sent]  # type: ignore[arg-type]
    assert [o["data"]["sequence"] for o in out] == [1, 2]
    assert out[0]["id"] == derived_id("count", "e1", 0) and out[0]["causationid"] == "e1"
    assert table["c1"]["state"] == {"n": 2} and table.ids() == ["e1", "e2"]


async def test_duplicate_runs_nothing() -> None:
    calls = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        calls.append(event.id)
        await reply(event, ctx)

    d, table, pub = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert await d.handle(record(id="e1", offset=1)) == "duplicate"
    assert calls == ["e1"] and len(pub.sent) == 1 and table["c1"]["state"] == {"n": 1}


async def test_handler_failure_is_dead_lettered_without_state_or_output() -> None:
    async def boom(event: Envelope[Any], ctx: Context[Counter]) -> None:
        ctx.state.n = 99
        await ctx.emit(ChatReplyRequestedV1(conversation_id="c1", in_reply_to=event.id, sequence=1, text="x"))
        raise RuntimeError("model said no")

    d, table, pub = make(boom)
    original = record(id="e1", offset=7)
    assert await d.handle(original) == "dlq"
    assert "c1" not in table.ids() and table.get(PARTITION, str_key("c1")) is None
    [(topic, dead)] = pub.sent
    h = dict(dead.headers)
    assert topic == "p.dlq.count"
    assert h["vigil_reason"] == b"handler_error" and h["vigil_error_class"] == b"builtins.RuntimeError"
    assert h["vigil_error_message"] == b"model said no" and h["vigil_attempts"] == b"1"
    assert (h["vigil_origin_topic"], h["vigil_origin_partition"], h["vigil_origin_offset"]) == (
        b"p.chat.messages.v1",
        b"3",
        b"7",
    )
    assert h["ce_id"] == b"e1" and dead.key == b"c1" and dead.value == original.value


async def test_emitting_an_undeclared_type_fails_the_handler() -> None:
    async def wrong(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.emit(ChatMessageReceivedV2(conversation_id="c1", user="u", text="t", channel="c"))

    d, _, pub = make(wrong)
    assert await d.handle(record()) == "dlq"
    assert b"declares emits=[chat.reply.requested.v1]" in dict(pub.sent[0][1].headers)["vigil_error_message"]


@pytest.mark.parametrize(
    ("rec", "reason"),
    [
        (record(value=b"\x00garbage"), b"undecodable"),
        (record(key="other"), b"invalid_envelope"),
        (
            record(
                value=b'{"id":"x","source":"s","type":"chat.message.received.v5","subject":"c1","data":{}}'
            ),
            b"unknown_version",
        ),
    ],
)
async def test_poison_goes_to_dlq(rec: ConsumedRecord, reason: bytes) -> None:
    d, table, pub = make(reply)
    assert await d.handle(rec) == "dlq"
    assert (
        dict(pub.sent[0][1].headers)["vigil_reason"] == reason and table.get(PARTITION, str_key("c1")) is None
    )


async def test_publish_failures_are_retried_until_acked() -> None:
    d, table, pub = make(reply, publisher=MemoryPublisher(failures=2))
    assert await d.handle(record()) == "ok"
    assert len(pub.sent) == 1 and table.ids() == ["e1"]


async def test_a_batch_handles_records_in_order_with_one_state_write() -> None:
    d, table, pub = make(reply)
    outcomes = await d.handle_many([record(id=f"e{i}", offset=i) for i in range(5)])
    assert outcomes == ["ok"] * 5
    assert [json.loads(r.value)["data"]["sequence"] for _, r in pub.sent] == [1, 2, 3, 4, 5]  # type: ignore[arg-type]
    assert table["c1"]["state"] == {"n": 5} and table["c1"]["ids"] == [f"e{i}" for i in range(5)]
    assert table.ids() == [f"e{i}" for i in range(5)]
    # a redelivery of the whole batch, and of one id inside a new batch, runs nothing again
    again = await d.handle_many(
        [record(id="e3", offset=5), record(id="e5", offset=6), record(id="e5", offset=7)]
    )
    assert again == ["duplicate", "ok", "duplicate"] and table["c1"]["state"] == {"n": 6}


async def test_a_failure_inside_a_batch_keeps_what_came_before_and_rereads_the_entity() -> None:
    """The record-at-a-time path (here: a dead letter that parks the subject) changes the
    entity; the records after it in the same batch must see that, not the batch's copy."""

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        if event.id == "e2":
            raise RuntimeError("no")
        await reply(event, ctx)

    d, table, _ = make(handler, park=True)
    outcomes = await d.handle_many([record(id=f"e{i}", offset=i) for i in range(1, 5)])
    assert outcomes == ["ok", "dlq", "parked", "parked"]
    assert table["c1"]["state"] == {"n": 1} and table["c1"]["parked"] is True


def test_derived_ids_are_uuid5_of_agent_input_and_position() -> None:
    import uuid

    from streams.core.context import DERIVED_ID_NAMESPACE

    for agent, input_id, n in [("a", "b", 0), ("support", "e1", 3), ("x" * 50, "é", 12)]:
        expected = str(uuid.uuid5(DERIVED_ID_NAMESPACE, f"{agent}\x1f{input_id}\x1f{n}"))
        assert derived_id(agent, input_id, n) == expected


async def test_records_of_another_registered_type_on_the_topic_are_ignored() -> None:
    d, table, pub = make(reply)
    env = RawEnvelope(
        id="r1",
        source="t",
        type="chat.reply.requested.v1",
        subject="c1",
        data={"conversation_id": "c1", "in_reply_to": "x", "sequence": 1, "text": "t"},
    )
    other = ConsumedRecord(
        "p.chat.messages.v1", PARTITION, 0, b"c1", codec.encode(env).value, codec.encode(env).headers
    )
    assert await d.handle(other) == "ignored"
    assert pub.sent == [] and table.empty()
    unknown = record(value=b'{"id":"x","source":"s","type":"chat.nope.v1","subject":"c1","data":{}}')
    assert await d.handle(unknown) == "dlq", "an unregistered type is still poison"


def test_state_copies_are_shallow_only_for_models_of_immutable_fields() -> None:
    from typing import Literal

    from streams.core.state import state_copier

    class Flat(BaseModel):
        n: int = 0
        note: str | None = None
        kind: Literal["a", "b"] = "a"

    class Nested(BaseModel):
        seen: list[str] = []

    flat = Flat(n=1)
    copy = state_copier(Flat)(flat)
    assert copy == flat and copy is not flat
    nested = Nested(seen=["x"])
    state_copier(Nested)(nested).seen.append("y")  # what a failed attempt might do
    assert nested.seen == ["x"], "a mutable field must not be shared with the attempt's copy"


def test_expired_ids_are_the_index_entries_older_than_the_cut() -> None:
    from streams.core.state import expired_ids, id_key, stamp

    entries = sorted([(id_key("old"), stamp(100)), (id_key("new"), stamp(900)), (str_key("c1"), b"{}")])
    assert list(expired_ids(entries, 500)) == [id_key("old")], "entity values are never swept"


async def test_a_batch_of_slow_handlers_is_made_durable_record_by_record() -> None:
    """Fast handlers share one publish; once a batch's handlers ran MAX_BATCH_SECONDS, each
    record's outputs and state are written before the next record starts."""
    import asyncio

    from streams.core.dispatcher import MAX_BATCH_SECONDS

    class CountingPublisher(MemoryPublisher):
        calls = 0

        async def publish(self, topic: str, records: Sequence[codec.EncodedRecord]) -> None:
            self.calls += 1
            await super().publish(topic, records)

    async def slow(event: Envelope[Any], ctx: Context[Counter]) -> None:
        if event.id.startswith("slow"):
            await asyncio.sleep(MAX_BATCH_SECONDS * 1.5)
        await reply(event, ctx)

    pub = CountingPublisher()
    d, table, _ = make(slow, publisher=pub)
    assert await d.handle_many([record(id=f"fast{i}", offset=i) for i in range(4)]) == ["ok"] * 4
    assert pub.calls == 1
    assert await d.handle_many([record(id=f"slow{i}", offset=4 + i) for i in range(3)]) == ["ok"] * 3
    assert pub.calls == 1 + 3 and table["c1"]["state"] == {"n": 7}
