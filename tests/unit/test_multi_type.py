"""Agents over several payload types and topics: one entity state, one handler per type or
one that matches, one subject at a time across topics (in-memory table, no broker)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import BaseModel

from schemas import ChatMessageReceivedV2, Envelope, Payload, RawEnvelope, SlackMessageV1, registry
from streams import Context, Runtime, Settings
from streams.core import codec
from streams.core.dispatcher import Dispatcher
from streams.core.records import ConsumedRecord
from streams.core.state import StateStore
from streams.core.tables import MemoryTable, str_key

from .test_dispatcher import MemoryPublisher


@registry.event("vtest.multi.opened", 1)
class OpenedV1(Payload):
    n: int


@registry.event("vtest.multi.closed", 1)
class ClosedV1(Payload):
    reason: str


@registry.event("vtest.multi.other", 1)
class OtherV1(Payload):
    x: int = 0


class Seen(BaseModel):
    log: list[str] = []


def settings() -> Settings:
    return Settings(topic_prefix="p.", _env_file=None)  # type: ignore[call-arg]


def rec(
    type_: str,
    data: dict[str, Any],
    *,
    id: str,
    offset: int,
    subject: str = "s1",
    topic: str = "p.chat.messages.v1",
) -> ConsumedRecord:
    env = RawEnvelope(id=id, source="t", type=type_, subject=subject, data=data)
    encoded = codec.encode(env)
    return ConsumedRecord(topic, 0, offset, subject.encode(), encoded.value, list(encoded.headers))


def state_of(table: MemoryTable, subject: str) -> dict[str, Any]:
    raw = table.get(0, str_key(subject))
    assert raw is not None
    value: dict[str, Any] = json.loads(raw)
    return value["state"]


async def test_one_handler_matches_on_type_and_shares_the_state() -> None:
    rt = Runtime()

    @rt.agent(OpenedV1, ClosedV1, name="multi", topic="chat.messages.v1", state=Seen)
    async def multi(event: Envelope[Any], ctx: Context[Seen]) -> None:
        match event.data:
            case OpenedV1(n=n):
                ctx.state.log.append(f"opened {n}")
            case ClosedV1(reason=r):
                ctx.state.log.append(f"closed {r}")

    table = MemoryTable()
    d = Dispatcher(rt.agents["multi"], settings(), StateStore(table, Seen), MemoryPublisher(), {})
    outcomes = await d.handle_many(
        [
            rec("vtest.multi.opened.v1", {"n": 1}, id="a", offset=0),
            rec("vtest.multi.other.v1", {"x": 1}, id="b", offset=1),
            rec("vtest.multi.closed.v1", {"reason": "done"}, id="c", offset=2),
        ]
    )
    assert outcomes == ["ok", "ignored", "ok"]
    assert state_of(table, "s1") == {"log": ["opened 1", "closed done"]}


async def test_a_type_can_have_its_own_handler() -> None:
    rt = Runtime()
    calls: list[str] = []

    async def on_closed(event: Envelope[Any], ctx: Context[Seen]) -> None:
        calls.append("closed")
        ctx.state.log.append("closed by its own handler")

    @rt.agent(
        OpenedV1, ClosedV1, name="multi", topic="chat.messages.v1", state=Seen, handlers={ClosedV1: on_closed}
    )
    async def multi(event: Envelope[Any], ctx: Context[Seen]) -> None:
        assert isinstance(event.data, OpenedV1)
        calls.append("opened")
        ctx.state.log.append("opened")

    table = MemoryTable()
    d = Dispatcher(rt.agents["multi"], settings(), StateStore(table, Seen), MemoryPublisher(), {})
    assert await d.handle(rec("vtest.multi.closed.v1", {"reason": "r"}, id="c", offset=0)) == "ok"
    assert await d.handle(rec("vtest.multi.opened.v1", {"n": 2}, id="o", offset=1)) == "ok"
    assert calls == ["closed", "opened"]
    assert state_of(table, "s1") == {"log": ["closed by its own handler", "opened"]}


async def test_a_bad_record_of_one_of_the_types_is_dead_lettered() -> None:
    rt = Runtime()

    @rt.agent(OpenedV1, ClosedV1, name="multi", topic="chat.messages.v1", state=Seen)
    async def multi(event: Envelope[Any], ctx: Context[Seen]) -> None:
        ctx.state.log.append(event.type)

    pub = MemoryPublisher()
    d = Dispatcher(rt.agents["multi"], settings(), StateStore(MemoryTable(), Seen), pub, {})
    assert await d.handle(rec("vtest.multi.closed.v1", {"reason": 5}, id="c", offset=0)) == "dlq"
    assert [t for t, _ in pub.sent] == ["p.dlq.multi"]


async def test_several_topics_run_one_subject_at_a_time() -> None:
    rt = Runtime()
    inside = 0
    most = 0
    release = asyncio.Event()

    @rt.agent(ChatMessageReceivedV2, SlackMessageV1, name="both", state=Seen)
    async def both(event: Envelope[Any], ctx: Context[Seen]) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await release.wait()
        ctx.state.log.append(event.type)
        inside -= 1

    spec = rt.agents["both"]
    assert spec.topics == ("chat.messages.v1", "slack.events.v1")
    table = MemoryTable()
    d = Dispatcher(spec, settings(), StateStore(table, Seen), MemoryPublisher(), {})
    chat = rec(
        "chat.message.received.v2",
        {"conversation_id": "s1", "user": "u", "text": "hi", "channel": "web"},
        id="m1",
        offset=0,
    )
    slack = rec(
        "slack.message.v1",
        {"event_id": "Ev1", "event": {"type": "message", "text": "yo", "channel": "C1", "user": "U1"}},
        id="m2",
        offset=0,
        topic="p.slack.events.v1",
    )
    first = asyncio.ensure_future(d.handle(chat))
    second = asyncio.ensure_future(d.handle(slack))
    for _ in range(50):  # let both run as far as they can
        await asyncio.sleep(0)
    assert inside == 1  # the other topic's record of the subject waits for the first
    release.set()
    assert await asyncio.gather(first, second) == ["ok", "ok"]
    assert most == 1
    assert state_of(table, "s1") == {"log": ["chat.message.received.v2", "slack.message.v1"]}
    assert d._entity_locks == {}  # released locks are not kept
