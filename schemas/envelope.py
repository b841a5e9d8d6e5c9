"""The CloudEvents 1.0 envelope every Vigil event travels in (structured JSON mode).

``Envelope[Model]`` is what handlers receive: attributes plus a typed, validated ``data``.
``Envelope[dict]`` (``RawEnvelope``) is what a decoder has before the type registry runs.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

D = TypeVar("D")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return str(uuid.uuid4())


class Envelope(BaseModel, Generic[D]):
    """CloudEvents attribute names; ``subject`` is the entity id and the Kafka key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=new_event_id, min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(min_length=1, max_length=256)
    subject: str = Field(min_length=1, max_length=1024)
    time: AwareDatetime = Field(default_factory=utcnow)
    specversion: Literal["1.0"] = "1.0"
    datacontenttype: Literal["application/json"] = "application/json"
    data: D
    traceparent: str | None = None
    causationid: str | None = None


RawEnvelope = Envelope[dict[str, Any]]
