"""The topic catalogue: every topic Vigil reads or writes, and which event types travel on it.

Names here are logical; ``Settings.topic`` prepends ``VIGIL_TOPIC_PREFIX``.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import split_type
from streams.core.errors import ConfigError


@dataclass(frozen=True)
class TopicSpec:
    name: str
    #: event type bases carried (``chat.message.received``), any version
    types: tuple[str, ...] = ()
    description: str = ""


CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(
        "chat.messages.v1", ("chat.message.received",), "Incoming chat messages, key = conversation id"
    ),
    TopicSpec("chat.replies.v1", ("chat.reply.requested",), "Replies requested by the support agent"),
    TopicSpec("schedules.v1", ("schedule.tick",), "Ticks of vigil source schedules, key = schedule name"),
)

DLQ_PREFIX = "dlq."


def dlq_topic(agent: str) -> TopicSpec:
    return TopicSpec(
        f"{DLQ_PREFIX}{agent}", (), f"Dead letters of agent {agent!r}: original bytes + error headers"
    )


def by_name(name: str) -> TopicSpec:
    for spec in CATALOGUE:
        if spec.name == name:
            return spec
    raise ConfigError(f"topic {name!r} is not in the catalogue ({', '.join(s.name for s in CATALOGUE)})")


def for_type(type_: str) -> TopicSpec:
    """The topic an event type is published to (by its base name, any version)."""
    base, _ = split_type(type_)
    for spec in CATALOGUE:
        if base in spec.types:
            return spec
    raise ConfigError(f"no topic in the catalogue carries event type {type_!r}")
