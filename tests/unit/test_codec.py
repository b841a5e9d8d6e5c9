from __future__ import annotations

import json

import pytest

from schemas import ChatReplyRequestedV1, Envelope, InvalidEnvelopeError, RawEnvelope
from streams.core import codec
from streams.core.errors import UndecodableError


def test_roundtrip_structured_json_key_and_headers() -> None:
    e = Envelope[ChatReplyRequestedV1](
        source="s",
        type="chat.reply.requested.v1",
        subject="conv-ü",
        data=ChatReplyRequestedV1(conversation_id="conv-ü", in_reply_to="m", sequence=1, text="hé"),
        causationid="m",
    )
    rec = codec.encode(e)
    assert rec.key == "conv-ü".encode()
    assert rec.headers == [("ce_id", e.id.encode()), ("ce_type", b"chat.reply.requested.v1")]
    body = json.loads(rec.value)  # type: ignore[arg-type]
    assert body["specversion"] == "1.0" and body["data"]["text"] == "hé" and "traceparent" not in body
    back = codec.decode(rec.value)
    assert back.id == e.id and back.data["sequence"] == 1 and back.causationid == "m"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "tombstone"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"[1, 2]", "JSON list, not an object"),
    ],
)
def test_undecodable(value: bytes | None, match: str) -> None:
    with pytest.raises(UndecodableError, match=match):
        codec.decode(value)


def test_not_an_envelope() -> None:
    with pytest.raises(InvalidEnvelopeError, match="subject"):
        codec.decode(b'{"type": "a.b.v1", "source": "s", "data": {}}')
    with pytest.raises(InvalidEnvelopeError, match="unexpected"):
        codec.decode(
            json.dumps(
                {
                    **RawEnvelope(source="s", type="a.b.v1", subject="x", data={}).model_dump(mode="json"),
                    "unexpected": 1,
                }
            ).encode()
        )


def test_header_lookup_and_clip() -> None:
    assert codec.header([("a", b"1"), ("b", b"2")], "b") == b"2"
    assert codec.header({"a": b"1"}, "a") == b"1"
    assert codec.header(None, "a") is None
    assert codec.clip("x" * 1000, 10) == "x" * 9 + "…"
