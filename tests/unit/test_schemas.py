from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import (
    ChatMessageReceivedV1,
    ChatMessageReceivedV2,
    InvalidPayloadError,
    Payload,
    RawEnvelope,
    Registry,
    UnknownTypeError,
    UnknownVersionError,
    VigilError,
    registry,
    split_type,
)


def env(type_: str, data: dict, **kw: object) -> RawEnvelope:
    return RawEnvelope(source="t", type=type_, subject="c1", data=data, **kw)


V1 = {"conversation_id": "c1", "user": "ann", "text": "hi"}


def test_split_type() -> None:
    assert split_type("chat.message.received.v2") == ("chat.message.received", 2)
    for bad in ("chat", "chat.v1", "chat.message.received", "chat.message.received.v0", "Chat.X.v1"):
        with pytest.raises(UnknownTypeError, match="form"):
            split_type(bad)


def test_v1_upcasts_to_v2_with_web_channel() -> None:
    parsed = registry.parse(env("chat.message.received.v1", V1))
    assert parsed.type == "chat.message.received.v2"
    assert parsed.data == ChatMessageReceivedV2(**V1, channel="web")
    assert parsed.subject == "c1" and parsed.source == "t"


def test_v2_is_kept_and_target_version_is_honoured() -> None:
    parsed = registry.parse(env("chat.message.received.v2", {**V1, "channel": "slack"}))
    assert parsed.data.channel == "slack"  # type: ignore[attr-defined]
    as_v1 = registry.parse(env("chat.message.received.v1", V1), target=ChatMessageReceivedV1)
    assert isinstance(as_v1.data, ChatMessageReceivedV1)
    with pytest.raises(UnknownVersionError, match="no downcaster"):
        registry.parse(env("chat.message.received.v2", {**V1, "channel": "x"}), target=ChatMessageReceivedV1)


def test_errors_are_distinct_and_readable() -> None:
    with pytest.raises(UnknownTypeError, match=r"chat\.reaction\.added"):
        registry.parse(env("chat.reaction.added.v1", {}))
    with pytest.raises(UnknownVersionError, match="got v7, known v1, v2"):
        registry.parse(env("chat.message.received.v7", V1))
    with pytest.raises(InvalidPayloadError, match="text: Field required"):
        registry.parse(env("chat.message.received.v1", {"conversation_id": "c1", "user": "ann"}))
    with pytest.raises(InvalidPayloadError, match="channel"):
        registry.parse(env("chat.message.received.v1", {**V1, "channel": "extra fields are a new version"}))
    for cls in (UnknownTypeError, UnknownVersionError, InvalidPayloadError):
        assert issubclass(cls, VigilError) and cls.retriable is False
    assert len({UnknownTypeError.reason, UnknownVersionError.reason, InvalidPayloadError.reason}) == 3


def test_upcaster_gap_and_bad_upcaster_output() -> None:
    reg = Registry()

    @reg.event("x.thing", 1)
    class T1(Payload):
        a: int

    @reg.event("x.thing", 3)
    class T3(Payload):
        a: int
        b: int

    with pytest.raises(UnknownVersionError, match=r"x.thing.v1 to v2"):
        reg.upcast("x.thing.v1", {"a": 1}, T3)

    @reg.event("x.thing", 2)
    class T2(Payload):
        a: int
        b: int

    reg.upcaster("x.thing", 1)(lambda d: {**d, "b": "not an int"})
    reg.upcaster("x.thing", 2)(lambda d: d)
    with pytest.raises(InvalidPayloadError, match=r"x.thing.v2"):
        reg.upcast("x.thing.v1", {"a": 1}, T3)


def test_registering_twice_is_refused() -> None:
    reg = Registry()

    @reg.event("x.a", 1)
    class A(Payload):
        pass

    with pytest.raises(ValueError, match="already registered"):

        @reg.event("x.a", 1)
        class B(Payload):
            pass


def test_envelope_attributes() -> None:
    e = env("chat.message.received.v1", V1, traceparent="00-abc-def-01", causationid="parent")
    assert e.specversion == "1.0" and e.datacontenttype == "application/json"
    assert e.time.tzinfo is not None and e.id
    with pytest.raises(ValidationError):
        RawEnvelope(source="t", type="a.b.v1", subject="", data={})
    with pytest.raises(ValidationError):
        RawEnvelope(source="t", type="a.b.v1", subject="s", data={}, time=datetime(2024, 1, 1))  # naive  # noqa: DTZ001
    with pytest.raises(ValidationError):
        RawEnvelope(source="t", type="a.b.v1", subject="s", data={}, specversion="0.3")  # type: ignore[arg-type]
    assert RawEnvelope(source="t", type="a.b.v1", subject="s", data={}, time=datetime(2024, 1, 1, tzinfo=UTC))


def test_json_schema_export() -> None:
    schemas = registry.json_schemas()
    assert set(schemas) >= {"chat.message.received.v1", "chat.message.received.v2", "chat.reply.requested.v1"}
    v2 = schemas["chat.message.received.v2"]
    assert v2["$id"] == "urn:vigil:event:chat.message.received.v2"
    assert set(v2["required"]) == {"conversation_id", "user", "text", "channel"}
    assert v2["additionalProperties"] is False
    assert "subject" in registry.envelope_schema()["properties"]
