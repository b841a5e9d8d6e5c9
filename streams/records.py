"""The consumed record as the runtime sees it, independent of the client library."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Headers


@dataclass(frozen=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None = None
