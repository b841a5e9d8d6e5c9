"""A source's durable checkpoint: a small key -> JSON map kept in a compacted Kafka topic.

One topic per source, ``<prefix><app_id>-source-<kind>-<name>-checkpoint`` (one partition,
``cleanup.policy=compact``), one record per key; a ``None`` value is a tombstone. ``load``
reads it to its end, so any process with the same ``VIGIL_APP_ID`` (on any machine) resumes
where the last one stopped. ``stage`` changes the in-memory view at once; ``write`` makes the
staged keys durable. The ``Source`` base calls ``write`` only after the broker acknowledged
every event sent before those changes were staged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams import kafka
from streams.core.settings import Settings

JSON = Any


class Checkpoint:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic  # already prefixed
        self._values: dict[str, JSON] = {}

    # -- reading -----------------------------------------------------------------------------
    def get(self, key: str, default: JSON = None) -> JSON:
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> Iterator[tuple[str, JSON]]:
        return iter(list(self._values.items()))

    # -- durable I/O -------------------------------------------------------------------------
    async def ensure_topic(self) -> None:
        async with kafka.admin(self.settings) as admin:
            if self.topic in set(await admin.list_topics()):
                return
            new = NewTopic(
                self.topic,
                1,
                self.settings.replication_factor,
                topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])

    async def load(self) -> None:
        """Replace the in-memory view with the topic's content (last value per key)."""
        values: dict[str, JSON] = {}
        async for rec in kafka.read_topics(self.settings, [self.topic]):
            if rec.key is None:
                continue
            key = rec.key.decode()
            if rec.value is None:
                values.pop(key, None)
            else:
                values[key] = json.loads(rec.value)
        self._values = values

    def stage(self, updates: Mapping[str, JSON]) -> None:
        """Change the in-memory view now; ``None`` deletes the key. Durable after ``write``."""
        for key, value in updates.items():
            if value is None:
                self._values.pop(key, None)
            else:
                self._values[key] = value

    async def write(self, producer: AIOKafkaProducer, updates: Mapping[str, JSON]) -> int:
        """Produce ``updates`` (acks=all) and wait for the broker; return how many were written."""
        if not updates:
            return 0
        futures = []
        for key, value in updates.items():
            raw = None if value is None else json.dumps(value, separators=(",", ":")).encode()
            futures.append(await producer.send(self.topic, key=key.encode(), value=raw))
        await asyncio.gather(*futures)
        return len(futures)
