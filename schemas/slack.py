"""Slack events: what the gateway receives from Slack's Events API, and the replies Vigil asks
the Slack sink to post.

An event callback's ``data`` is Slack's whole ``event_callback`` body. Slack adds fields
without notice and these models only name the ones Vigil reads, so unlike Vigil's own payloads
they accept unknown fields (``extra="allow"``) instead of treating them as a new version.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .payload import Payload
from .registry import registry


class SlackEvent(BaseModel):
    """The inner ``event`` of a callback (``app_mention``, ``message``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    user: str | None = None
    bot_id: str | None = None
    #: set on edits, deletions, joins, bot posts ...: not a new message from a person
    subtype: str | None = None
    text: str = ""
    ts: str | None = None
    thread_ts: str | None = None
    channel: str | None = None
    #: "im" for a direct message, "channel", "group", "mpim"
    channel_type: str | None = None


class SlackAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    user_id: str | None = None
    is_bot: bool = False


class SlackEventCallback(Payload):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["event_callback"] = "event_callback"
    event_id: str = Field(min_length=1)
    event_time: int | None = None
    team_id: str | None = None
    api_app_id: str | None = None
    event: SlackEvent
    #: who the event is delivered for: the bot's own user id is here
    authorizations: list[SlackAuthorization] = Field(default_factory=list)


@registry.event("slack.app_mention", 1)
class SlackAppMentionV1(SlackEventCallback):
    """Someone mentioned the bot in a channel."""


@registry.event("slack.message", 1)
class SlackMessageV1(SlackEventCallback):
    """A message in a conversation the app is subscribed to (``message.im``: direct messages)."""


@registry.event("slack.reply.requested", 1)
class SlackReplyRequestedV1(Payload):
    """Post ``text`` to ``channel``, in the thread of ``thread_ts`` when given."""

    channel: str = Field(min_length=1)
    thread_ts: str | None = None
    #: Slack truncates messages above 40,000 characters
    text: str = Field(min_length=1, max_length=40_000)
