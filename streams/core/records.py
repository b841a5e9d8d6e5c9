"""The consumed record as the runtime sees it, independent of the client library."""

from __future__ import annotations

from typing import NamedTuple, Protocol

from streams.core.codec import Headers


class TP(Protocol):
    """A topic partition as the core sees it: Faust's ``TP`` and aiokafka's ``TopicPartition``
    both are one (equal and hashing alike for the same topic and partition)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    def __hash__(self) -> int: ...


class ConsumedRecord(NamedTuple):
    """Immutable; a tuple because one is built per fetched record (a frozen dataclass costs
    several times more to construct)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None = None
