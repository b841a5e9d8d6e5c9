"""``vigil groups``: the agents' consumer groups, and the move from one shared group to them.

Before per-agent groups every agent of a worker joined one group named by the app id
(``vigil``); now agent ``support`` joins ``vigil.support`` (``streams.core.groups``). A new group
has no committed offsets, so without a migration it starts at ``auto.offset.reset`` (earliest):
every retained record of the agent's topics is read again. Nothing runs twice (each handled
event id is remembered in the agent's state for ``VIGIL_DEDUP_RETENTION``), but the re-read
costs a fetch and a state lookup per record, and records older than the retention would run
again. ``migrate`` copies the old group's committed offset of each of an agent's topic
partitions to the agent's group, before the agents first start:

- a partition the agent's group already committed is kept as it is (never moved back);
- a group with active members is refused (stop the workers first): the broker rejects offset
  commits for a group in a generation we are not part of, and moving a running group's
  offsets under it would skip or repeat records.

Plain aiokafka, no faust: the offsets are committed by a group-less-assignment consumer of the
target group, the way ``kafka-consumer-groups --reset-offsets`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.core.agent import AgentSpec
from streams.core.errors import ConfigError
from streams.core.groups import agent_group, legacy_group
from streams.core.settings import Settings
from streams.kafka.client import START_TIMEOUT, admin

Status = Literal["copy", "kept", "none"]


@dataclass(frozen=True)
class Move:
    """One topic partition of one agent: what the migration does with it."""

    agent: str
    group: str
    topic: str
    partition: int
    #: the old group's committed offset (None: it never committed this partition)
    source: int | None
    #: the agent's group's committed offset before the migration
    current: int | None
    #: copy: ``source`` is committed to ``group``; kept: ``group`` already has an offset;
    #: none: nothing to copy (the group starts at auto.offset.reset)
    status: Status

    def as_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "group": self.group,
            "topic": self.topic,
            "partition": self.partition,
            "source": self.source,
            "current": self.current,
            "status": self.status,
        }


async def committed(settings: Settings, group: str) -> dict[TopicPartition, int]:
    """The committed offsets of ``group`` (partitions never committed are absent)."""
    async with admin(settings) as client:
        got = await client.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in got.items() if meta.offset >= 0}


async def active_members(settings: Settings, groups: Iterable[str]) -> dict[str, int]:
    """Members per group that has any (a running worker)."""
    names = sorted(set(groups))
    if not names:
        return {}
    async with admin(settings) as client:
        described = [r.to_object() for r in await client.describe_consumer_groups(names)]
    out: dict[str, int] = {}
    for response in described:
        for group in response["groups"]:
            if group["members"]:
                out[str(group["group"])] = len(group["members"])
    return out


async def plan(settings: Settings, specs: Sequence[AgentSpec], source_group: str | None = None) -> list[Move]:
    """What ``migrate`` would do, read from the broker; changes nothing."""
    old = await committed(settings, source_group or legacy_group(settings))
    moves: list[Move] = []
    for spec in specs:
        group = agent_group(settings, spec.name)
        mine = await committed(settings, group)
        topics = {settings.topic(t) for t in spec.topics}
        partitions = sorted(
            {tp for tp in old if tp.topic in topics} | {tp for tp in mine if tp.topic in topics}
        )
        for tp in partitions:
            source, current = old.get(tp), mine.get(tp)
            status: Status = "kept" if current is not None else "copy" if source is not None else "none"
            moves.append(Move(spec.name, group, tp.topic, tp.partition, source, current, status))
    return moves


async def migrate(
    settings: Settings, specs: Sequence[AgentSpec], source_group: str | None = None, *, dry_run: bool = False
) -> list[Move]:
    """Copy the shared group's committed offsets to each agent's own group (see the module
    docstring). Returns every partition's move; with ``dry_run`` commits nothing."""
    source = source_group or legacy_group(settings)
    targets = {agent_group(settings, spec.name) for spec in specs}
    if source in targets:
        raise ConfigError(f"group {source!r} is an agent's own group: nothing to migrate from")
    busy = await active_members(settings, targets)
    if busy:
        listed = ", ".join(f"{g} ({n} members)" for g, n in sorted(busy.items()))
        raise ConfigError(f"stop the workers first: these groups have active members: {listed}")
    moves = await plan(settings, specs, source)
    if dry_run:
        return moves
    by_group: dict[str, dict[TopicPartition, OffsetAndMetadata]] = {}
    for move in moves:
        if move.status == "copy" and move.source is not None:
            tp = TopicPartition(move.topic, move.partition)
            by_group.setdefault(move.group, {})[tp] = OffsetAndMetadata(move.source, "")
    for group, offsets in sorted(by_group.items()):
        await _commit(settings, group, offsets)
    return moves


async def _commit(settings: Settings, group: str, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=10000,
    )
    await consumer.start()
    try:
        consumer.assign(sorted(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


__all__ = ["START_TIMEOUT", "Move", "active_members", "committed", "migrate", "plan"]
