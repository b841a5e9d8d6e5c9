"""Chat events: what the reference support agent consumes and emits (contract fixed)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .payload import Payload
from .registry import registry


@registry.event("chat.message.received", 1)
class ChatMessageReceivedV1(Payload):
    conversation_id: str = Field(min_length=1)
    user: str = Field(min_length=1)
    text: str


@registry.event("chat.message.received", 2)
class ChatMessageReceivedV2(Payload):
    conversation_id: str = Field(min_length=1)
    user: str = Field(min_length=1)
    text: str
    channel: str = Field(min_length=1)


@registry.upcaster("chat.message.received", 1)
def _message_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 predates other channels: everything came from the web widget.
    return {**data, "channel": "web"}


@registry.event("chat.reply.requested", 1)
class ChatReplyRequestedV1(Payload):
    conversation_id: str = Field(min_length=1)
    in_reply_to: str = Field(min_length=1)
    sequence: int = Field(ge=1)
    text: str
