"""Events the built-in sources write: files in a watched directory, schedule ticks.
(Contract fixed by issue 16; database change events are declared per table at run time.)"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, Field

from .payload import Payload
from .registry import registry


class _FileEvent(Payload):
    #: relative to the watched directory, "/"-separated; also the subject
    path: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mtime: AwareDatetime


@registry.event("file.created", 1)
class FileCreatedV1(_FileEvent):
    """A file appeared (or was first seen) and has settled."""


@registry.event("file.modified", 1)
class FileModifiedV1(_FileEvent):
    """A known file's content changed and has settled."""


@registry.event("file.deleted", 1)
class FileDeletedV1(_FileEvent):
    """A known file disappeared; size, sha256 and mtime are its last emitted version."""


@registry.event("schedule.tick", 1)
class ScheduleTickV1(Payload):
    """One slot of a named schedule came due (one event per slot, whoever emits it)."""

    schedule: str = Field(min_length=1)
    slot: AwareDatetime = Field(description="The slot in UTC")
    slot_local: str = Field(description="The slot in the schedule's time zone, ISO 8601 with offset")
    timezone: str
    payload: dict[str, Any] = Field(default_factory=dict)
