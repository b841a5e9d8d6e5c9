"""Base class of every typed event payload. Strict on purpose: an unexpected field is a new
version, not a silent addition."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: set by ``Registry.event``: the versioned type string, e.g. ``chat.message.received.v2``
    event_type: ClassVar[str]
    event_base: ClassVar[str]
    event_version: ClassVar[int]
