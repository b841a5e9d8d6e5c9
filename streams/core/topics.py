"""The topic catalogue: every topic Vigil reads or writes, and which event types travel on it.

Names here are logical; ``Settings.topic`` prepends ``VIGIL_TOPIC_PREFIX``.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import split_type
from schemas.cdc import OP_NAMES
from schemas.customers import CUSTOMER_TYPES, ONBOARDING_TYPES
from schemas.pull_request import PULL_REQUEST_TYPES
from streams.core.errors import ConfigError


@dataclass(frozen=True)
class TopicSpec:
    name: str
    #: event type bases carried (``chat.message.received``), any version
    types: tuple[str, ...] = ()
    description: str = ""


CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec("customers.v1", CUSTOMER_TYPES, "Customer sign-ups, key = customer id"),
    TopicSpec(
        "customers.onboarding.v1",
        ONBOARDING_TYPES,
        "What the onboarding fan-out derives from a sign-up (plan, enrichment, notification), key = customer id",
    ),
    TopicSpec(
        "chat.messages.v1", ("chat.message.received",), "Incoming chat messages, key = conversation id"
    ),
    TopicSpec("chat.replies.v1", ("chat.reply.requested",), "Replies requested by the support agent"),
    TopicSpec("schedules.v1", ("schedule.tick",), "Ticks of vigil source schedules, key = schedule name"),
    TopicSpec(
        "slack.events.v1",
        ("slack.app_mention", "slack.message"),
        "Slack Events API callbacks from the gateway, key = channel[:thread_ts]",
    ),
    TopicSpec("slack.replies.v1", ("slack.reply.requested",), "Messages for the Slack sink to post"),
    TopicSpec("github.comments.v1", ("github.comment.requested",), "Comments for the GitHub sink to post"),
    TopicSpec(
        "github.pull_request.v1",
        PULL_REQUEST_TYPES,
        "GitHub pull_request webhooks from the gateway, key = owner/repo#number",
    ),
    TopicSpec(
        "webhooks.alerts.v1",
        ("webhooks.alerts.received",),
        "Alerts from the gateway's generic webhook source 'alerts', key = the alert's fingerprint",
    ),
    TopicSpec(
        "incidents.v1",
        ("incident.triaged", "incident.escalated"),
        "Incidents of the triage agent, key = alert fingerprint",
    ),
)

DLQ_PREFIX = "dlq."


def cdc_topic(name: str) -> TopicSpec | None:
    """A database change topic ``db.<schema>.<table>.v1`` (``streams.sources.cdc``): one per
    table, carrying every op of it, key = primary key. Tables are many and not known here, so
    these are recognised by name rather than listed."""
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "db" or parts[3] != "v1" or not all(parts[1:3]):
        return None
    table = ".".join(parts[:3])
    return TopicSpec(
        name, tuple(f"{table}.{op}" for op in OP_NAMES.values()), "Row changes, key = primary key"
    )


def files_topic(name: str) -> TopicSpec | None:
    """A watched directory's topic ``files.<source>.v1`` (``vigil source files --name``): one per
    source, named by its user, so recognised by name like the change topics."""
    if not (name.startswith("files.") and name.endswith(".v1")) or len(name) <= len("files..v1"):
        return None
    return TopicSpec(
        name,
        ("file.created", "file.modified", "file.deleted"),
        "Files of a watched directory, key = relative path",
    )


def dlq_topic(agent: str) -> TopicSpec:
    return TopicSpec(
        f"{DLQ_PREFIX}{agent}", (), f"Dead letters of agent {agent!r}: original bytes + error headers"
    )


def by_name(name: str) -> TopicSpec:
    for spec in CATALOGUE:
        if spec.name == name:
            return spec
    if (cdc := cdc_topic(name)) is not None:
        return cdc
    if (files := files_topic(name)) is not None:
        return files
    raise ConfigError(f"topic {name!r} is not in the catalogue ({', '.join(s.name for s in CATALOGUE)})")


def for_type(type_: str) -> TopicSpec:
    """The topic an event type is published to (by its base name, any version)."""
    base, _ = split_type(type_)
    for spec in CATALOGUE:
        if base in spec.types:
            return spec
    if base.startswith("db.") and base.count(".") == 3 and base.rsplit(".", 1)[1] in OP_NAMES.values():
        return by_name(f"{base.rsplit('.', 1)[0]}.v1")
    raise ConfigError(f"no topic in the catalogue carries event type {type_!r}")
