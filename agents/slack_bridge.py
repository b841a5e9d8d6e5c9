"""Bridges between Slack and the support agent, whose contract on ``chat.messages.v1`` and
``chat.replies.v1`` stays as it is:

- ``slack_mentions`` (``slack.app_mention.v1``) and ``slack_dms`` (``slack.message.v1`` in a
  direct message, ``channel_type`` "im") turn a person's Slack message into a
  ``chat.message.received.v2`` with channel "slack" and the conversation id
  ``slack:<channel>[:<thread_ts>]``: a mention is answered in its thread (a new one on the
  mention itself), a direct message in its thread if it has one, else in the conversation;
- ``slack_chat_replies`` turns the support agent's replies to those conversations (and only
  those) into ``slack.reply.requested.v1`` for the Slack sink.

Messages from bots (the app's own posts included), edits, deletions and other subtypes are not
forwarded, so the bot never answers itself.
"""

from __future__ import annotations

import re

from schemas import (
    ChatMessageReceivedV2,
    ChatReplyRequestedV1,
    Envelope,
    SlackAppMentionV1,
    SlackEventCallback,
    SlackMessageV1,
    SlackReplyRequestedV1,
)
from streams import Context, runtime

PREFIX = "slack:"
_MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>\s*")


def conversation_id(channel: str, thread_ts: str | None) -> str:
    return f"{PREFIX}{channel}:{thread_ts}" if thread_ts else f"{PREFIX}{channel}"


def parse_conversation(conversation: str) -> tuple[str, str | None] | None:
    """``(channel, thread_ts)`` of a conversation id made by ``conversation_id``, else None."""
    if not conversation.startswith(PREFIX):
        return None
    channel, _, thread = conversation[len(PREFIX) :].partition(":")
    if not channel:
        return None
    return channel, thread or None


def from_a_person(body: SlackEventCallback) -> bool:
    ev = body.event
    if ev.bot_id or ev.subtype or not ev.user or not ev.channel or not ev.ts:
        return False
    return ev.user not in {a.user_id for a in body.authorizations if a.is_bot}


async def _forward(ctx: Context[None], body: SlackEventCallback, thread_ts: str | None) -> None:
    ev = body.event
    assert ev.channel is not None and ev.user is not None  # from_a_person
    conversation = conversation_id(ev.channel, thread_ts)
    text = _MENTION.sub("", ev.text).strip() or ev.text
    await ctx.emit(
        ChatMessageReceivedV2(conversation_id=conversation, user=ev.user, text=text, channel="slack"),
        subject=conversation,
    )


@runtime.agent(SlackAppMentionV1, name="slack_mentions", emits=[ChatMessageReceivedV2], default=False)
async def slack_mentions(event: Envelope[SlackAppMentionV1], ctx: Context[None]) -> None:
    body = event.data
    if from_a_person(body):
        await _forward(ctx, body, body.event.thread_ts or body.event.ts)


@runtime.agent(SlackMessageV1, name="slack_dms", emits=[ChatMessageReceivedV2], default=False)
async def slack_dms(event: Envelope[SlackMessageV1], ctx: Context[None]) -> None:
    body = event.data
    if body.event.channel_type == "im" and from_a_person(body):
        await _forward(ctx, body, body.event.thread_ts)


@runtime.agent(ChatReplyRequestedV1, name="slack_chat_replies", emits=[SlackReplyRequestedV1], default=False)
async def slack_chat_replies(event: Envelope[ChatReplyRequestedV1], ctx: Context[None]) -> None:
    where = parse_conversation(event.data.conversation_id)
    if where is None:
        return  # a conversation from another channel
    channel, thread_ts = where
    await ctx.emit(
        SlackReplyRequestedV1(channel=channel, thread_ts=thread_ts, text=event.data.text),
        subject=f"{channel}:{thread_ts}" if thread_ts else channel,
    )
