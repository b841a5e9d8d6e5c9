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
from streams.core.state import StateStore


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
    handler: Any, *, publisher: MemoryPublisher | None = None, max_ids: int = 1000
) -> tuple[Dispatcher, dict[str, Any], MemoryPublisher]:
    rt = Runtime()
    rt.agent(ChatMessageReceivedV2, name="count", state=Counter, emits=[ChatReplyRequestedV1])(handler)
    spec = rt.agents["count"]
    table: dict[str, Any] = {}
    pub = publisher or MemoryPublisher()
    settings = Settings(topic_prefix="p.", _env_file=None)  # type: ignore[call-arg]
    return Dispatcher(spec, settings, StateStore(table, Counter, max_ids), pub, {}), table, pub


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
    return ConsumedRecord(
        "p.chat.messages.v1", 3, offset, (key or conv).encode(), value, [("ce_id", id.encode())]
    )


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
    assert table["c1"]["state"] == {"n": 2} and table["c1"]["handled"] == ["e1", "e2"]


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
    assert table == {}
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
    assert dict(pub.sent[0][1].headers)["vigil_reason"] == reason and table == {}


async def test_publish_failures_are_retried_until_acked() -> None:
    d, table, pub = make(reply, publisher=MemoryPublisher(failures=2))
    assert await d.handle(record()) == "ok"
    assert len(pub.sent) == 1 and table["c1"]["handled"] == ["e1"]


async def test_handled_ids_are_bounded() -> None:
    d, table, _ = make(reply, max_ids=3)
    for i in range(5):
        await d.handle(record(id=f"e{i}", offset=i))
    assert table["c1"]["handled"] == ["e2", "e3", "e4"] and table["c1"]["state"] == {"n": 5}
