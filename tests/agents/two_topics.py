"""An agent over two topics for the binding tests: chat messages (``chat.messages.v1``) and
Slack messages (``slack.events.v1``) of one subject share one entity state; every event gets a
numbered reply whose text names its type, no LLM."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope, SlackMessageV1
from streams import Context, runtime


class Seen(BaseModel):
    count: int = 0


@runtime.agent(ChatMessageReceivedV2, SlackMessageV1, state=Seen, emits=[ChatReplyRequestedV1], default=False)
async def two_topics(event: Envelope[Any], ctx: Context[Seen]) -> None:
    ctx.state.count += 1
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=event.subject, in_reply_to=event.id, sequence=ctx.state.count, text=event.type
        )
    )
