"""Runtime errors. Schema errors live in ``schemas.errors``; all share ``VigilError``."""

from __future__ import annotations

from schemas.errors import VigilError


class UndecodableError(VigilError):
    """The record value is not UTF-8 JSON of an object; nothing else can be known about it."""

    reason = "undecodable"


class ConfigError(VigilError):
    reason = "config"


class BrokerUnavailableError(VigilError):
    """Kafka could not be reached; retrying later may help."""

    retriable = True
    reason = "broker_unavailable"


class TopicNotFoundError(VigilError):
    reason = "topic_not_found"
