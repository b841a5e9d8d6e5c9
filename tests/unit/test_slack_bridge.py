"""The Slack bridge agents: which Slack events reach the support agent, under which conversation
id, and which replies go back to Slack, in which thread."""

from __future__ import annotations

from typing import Any

import pytest

from agents.slack_bridge import conversation_id, parse_conversation
from schemas import ChatReplyRequestedV1, Envelope, Payload, registry
from streams import runtime
from streams.core.context import Context

BOT = "U0BOT"


def callback(type_: str, **event: Any) -> dict[str, Any]:
    return {
        "type": "event_callback",
        "token": "x",
        "team_id": "T1",
        "api_app_id": "A1",
        "event_id": "Ev1",
        "event_time": 1531420618,
        "event": {
            "type": type_,
            "channel": "C1",
            "user": "U1",
            "text": "hi",
            "ts": "1531420618.000200",
            **event,
        },
        "authorizations": [{"enterprise_id": None, "team_id": "T1", "user_id": BOT, "is_bot": True}],
        "is_ext_shared_channel": False,
    }


async def run(agent: str, type_: str, data: dict[str, Any], subject: str = "C1") -> list[Envelope[Payload]]:
    spec = runtime.agents[agent]
    event = registry.parse(
        Envelope[dict[str, Any]](id="in-1", source="t", type=type_, subject=subject, data=data)
    )
    ctx: Context[Any] = Context(agent=agent, event=event, state=None, emits=spec.emits, resources={})
    await spec.handler(event, ctx)
    return ctx.pending


async def test_a_mention_becomes_a_slack_chat_message_in_the_mentions_thread() -> None:
    [out] = await run(
        "slack_mentions", "slack.app_mention.v1", callback("app_mention", text=f"<@{BOT}> where is my order?")
    )
    assert out.type == "chat.message.received.v2"
    assert out.subject == out.data.conversation_id == "slack:C1:1531420618.000200"  # type: ignore[attr-defined]
    assert out.data.model_dump() == {
        "conversation_id": "slack:C1:1531420618.000200",
        "user": "U1",
        "text": "where is my order?",
        "channel": "slack",
    }
    [in_thread] = await run(
        "slack_mentions", "slack.app_mention.v1", callback("app_mention", thread_ts="1531420000.000100")
    )
    assert in_thread.subject == "slack:C1:1531420000.000100"


async def test_direct_messages_are_forwarded_other_messages_are_not() -> None:
    dm = callback("message", channel="D1", channel_type="im")
    [out] = await run("slack_dms", "slack.message.v1", dm, subject="D1")
    assert out.subject == "slack:D1"
    assert await run("slack_dms", "slack.message.v1", callback("message", channel_type="channel")) == []


@pytest.mark.parametrize(
    "event",
    [
        {"bot_id": "B0VIGIL", "user": BOT},  # the bot's own post: no reply loop
        {"user": BOT},  # the bot's user without a bot_id
        {"subtype": "message_changed"},
        {"subtype": "bot_message", "user": None},
    ],
)
async def test_bots_and_subtypes_are_ignored(event: dict[str, Any]) -> None:
    assert await run("slack_dms", "slack.message.v1", callback("message", channel_type="im", **event)) == []
    assert await run("slack_mentions", "slack.app_mention.v1", callback("app_mention", **event)) == []


async def test_only_replies_to_slack_conversations_go_to_slack() -> None:
    def reply(conv: str) -> dict[str, Any]:
        return ChatReplyRequestedV1(
            conversation_id=conv, in_reply_to="m1", sequence=1, text="On its way"
        ).model_dump()

    [threaded] = await run(
        "slack_chat_replies", "chat.reply.requested.v1", reply("slack:C1:1531420618.000200"), "x"
    )
    assert threaded.type == "slack.reply.requested.v1" and threaded.subject == "C1:1531420618.000200"
    assert threaded.data.model_dump() == {
        "channel": "C1",
        "thread_ts": "1531420618.000200",
        "text": "On its way",
    }
    [dm] = await run("slack_chat_replies", "chat.reply.requested.v1", reply("slack:D1"), "x")
    assert dm.data.model_dump() == {"channel": "D1", "thread_ts": None, "text": "On its way"}
    assert await run("slack_chat_replies", "chat.reply.requested.v1", reply("conv-web-1"), "x") == []


def test_conversation_ids_round_trip() -> None:
    for channel, thread in [("C1", "1.2"), ("D9", None)]:
        assert parse_conversation(conversation_id(channel, thread)) == (channel, thread)
    assert parse_conversation("c-a") is None and parse_conversation("slack:") is None


def test_the_slack_and_github_agents_are_opt_in() -> None:
    integrations = {"slack_mentions", "slack_dms", "slack_chat_replies", "slack_replies", "github_comments"}
    default = {spec.name for spec in runtime.select(None)}
    assert "support" in default and not default & integrations
    assert {spec.name for spec in runtime.select(sorted(integrations))} == integrations
