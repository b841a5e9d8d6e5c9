"""Builders of chat records for the support-agent tests."""

from __future__ import annotations

import uuid
from typing import Any

from schemas import RawEnvelope
from streams.core import codec
from streams.core.codec import EncodedRecord

IN = "chat.messages.v1"
OUT = "chat.replies.v1"
DLQ = "dlq.support"


def message(
    conv: str,
    text: str,
    *,
    id: str | None = None,
    version: int = 2,
    channel: str = "slack",
    user: str = "ann",
) -> EncodedRecord:
    data: dict[str, Any] = {"conversation_id": conv, "user": user, "text": text}
    if version >= 2:
        data["channel"] = channel
    env = RawEnvelope(
        id=id or str(uuid.uuid4()),
        source="tests",
        type=f"chat.message.received.v{version}",
        subject=conv,
        data=data,
    )
    return codec.encode(env)


def raw(
    key: str | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
) -> EncodedRecord:
    return EncodedRecord(key.encode() if key is not None else None, value, headers or [])
