"""The reference support agent (contract fixed: external checks use it).

Consumes ``chat.messages.v1`` (``chat.message.received`` v1 upcast to v2), keeps per
conversation the count of distinct messages handled and the last turns, and emits one
``chat.reply.requested.v1`` per distinct message to ``chat.replies.v1``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope, InvalidPayloadError
from streams import Context, runtime

from .llm import agent_prompt

MAX_TURNS = 10
SYSTEM_PROMPT = "You are a concise, friendly support agent. Answer the user's last message."


class Turn(BaseModel):
    message_id: str
    user: str
    channel: str
    text: str
    reply: str


class SupportState(BaseModel):
    messages_handled: int = 0
    turns: list[Turn] = Field(default_factory=list)


@runtime.agent(ChatMessageReceivedV2, state=SupportState, emits=[ChatReplyRequestedV1])
async def support(event: Envelope[ChatMessageReceivedV2], ctx: Context[SupportState]) -> None:
    msg = event.data
    if event.subject != msg.conversation_id:
        raise InvalidPayloadError(
            f"subject {event.subject!r} must equal data.conversation_id {msg.conversation_id!r}"
        )
    history: list[dict[str, str]] = []
    for turn in ctx.state.turns:
        history.append({"role": "user", "content": f"[{turn.channel}] {turn.user}: {turn.text}"})
        history.append({"role": "assistant", "content": turn.reply})
    reply = await ctx.llm.complete(
        [
            {"role": "system", "content": agent_prompt(ctx, SYSTEM_PROMPT)},
            *history,
            {"role": "user", "content": f"[{msg.channel}] {msg.user}: {msg.text}"},
        ]
    )
    ctx.state.messages_handled += 1
    ctx.state.turns.append(
        Turn(message_id=event.id, user=msg.user, channel=msg.channel, text=msg.text, reply=reply.text)
    )
    del ctx.state.turns[:-MAX_TURNS]
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=msg.conversation_id,
            in_reply_to=event.id,
            sequence=ctx.state.messages_handled,
            text=reply.text,
        )
    )
