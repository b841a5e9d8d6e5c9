"""The Kafka side of ``vigil dlq``: find dead letters, replay them to their origin topic,
truncate a DLQ, release a parked subject.

DLQ records are read without joining a consumer group, so inspecting a DLQ never moves
anyone's offsets, and read_committed: a dead letter of an aborted transaction (exactly_once
mode) never happened. Each origin record is shown, replayed and counted once: at-least-once
can write a dead letter twice when a worker dies between the DLQ's ack and the changelog
write of its dedup mark (``streams.core.dlq_dedup``), so entries of one DLQ with the same origin
topic, partition and offset collapse into the first. Everything is validated before the first record is sent: a command either
sends all it announced or nothing (short of the broker failing midway).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import RecordsToDelete
from aiokafka.errors import KafkaError

from streams.core import topics
from streams.core.codec import EncodedRecord, clip, header
from streams.core.dlq import (
    CONTROL_RELEASE,
    H_AGENT,
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILED_AT,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_REASON,
    H_REPLAY,
    VIGIL_HEADERS,
    control_record,
)
from streams.core.dlq_dedup import origin_key
from streams.core.errors import BrokerUnavailableError, ConfigError, TopicNotFoundError
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings
from streams.kafka import client as kafka

#: headers a replay drops: the DLQ's own, and the mark of an earlier replay (a new one is set)
DROPPED_ON_REPLAY = frozenset((*VIGIL_HEADERS, H_REPLAY))


# -- reading one record -----------------------------------------------------------------------
def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", errors="replace") if value is not None else None


def header_text(rec: ConsumedRecord, name: str) -> str | None:
    return _text(header(rec.headers, name))


def ref(rec: ConsumedRecord) -> str:
    """``<dlq topic>:<partition>:<offset>``, the form of the ``vigil_replay`` header."""
    return f"{rec.topic}:{rec.partition}:{rec.offset}"


def subject_of(rec: ConsumedRecord) -> str | None:
    """The record key: Vigil keys every record by its subject, and the DLQ keeps the key."""
    return _text(rec.key)


def event_id_of(rec: ConsumedRecord) -> str | None:
    """The ``ce_id`` header, else the envelope ``id`` in the value: records produced by other
    clients (or poison sent raw) may lack the header but still carry a parseable envelope."""
    from_header = header_text(rec, "ce_id")
    if from_header is not None:
        return from_header
    body = _json(rec.value)
    event_id = body.get("id") if isinstance(body, dict) else None
    return event_id if isinstance(event_id, str) else None


def _json(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def summary(rec: ConsumedRecord) -> dict[str, Any]:
    """What ``vigil dlq ls --json`` prints: where the record is, why it failed, where it came from."""
    return {
        "ref": ref(rec),
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "agent": header_text(rec, H_AGENT),
        "reason": header_text(rec, H_REASON),
        "id": event_id_of(rec),
        "subject": subject_of(rec),
        "type": header_text(rec, "ce_type"),
        "origin_topic": header_text(rec, H_ORIGIN_TOPIC),
        "origin_partition": _int(header_text(rec, H_ORIGIN_PARTITION)),
        "origin_offset": _int(header_text(rec, H_ORIGIN_OFFSET)),
        "attempts": _int(header_text(rec, H_ATTEMPTS)),
        "failed_at": header_text(rec, H_FAILED_AT),
        "error_class": header_text(rec, H_ERROR_CLASS),
        "error_message": header_text(rec, H_ERROR_MESSAGE),
    }


def format_line(rec: ConsumedRecord) -> str:
    """One line per record for ``vigil dlq ls``."""
    s = summary(rec)
    origin = f"{s['origin_topic']}:{s['origin_partition']}:{s['origin_offset']}"
    error = clip(f"{s['error_class']}: {s['error_message']}", 160)
    return (
        f"{s['ref']} reason={s['reason']} id={s['id']} subject={s['subject']} "
        f"origin={origin} attempts={s['attempts']} failed_at={s['failed_at']} error={error}"
    )


def format_full(rec: ConsumedRecord) -> str:
    """The whole record for ``vigil dlq show``: headers decoded, the value as indented JSON
    when it parses (else its bytes' repr, so poison is shown exactly)."""
    body = _json(rec.value)
    value = json.dumps(body, indent=2, ensure_ascii=False) if body is not None else repr(rec.value)
    lines = [ref(rec), f"key: {subject_of(rec)!r}" if rec.key is not None else "key: None", "headers:"]
    lines += [f"  {k}: {_text(v)}" for k, v in rec.headers]
    lines += ["value:", *(f"  {line}" for line in value.splitlines())]
    return "\n".join(lines)


# -- filters ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DlqFilter:
    """Which DLQ records a command acts on; every field given must match."""

    agent: str | None = None
    event_id: str | None = None
    subject: str | None = None
    reason: str | None = None
    partition: int | None = None
    offset: int | None = None

    def __post_init__(self) -> None:
        for name in ("agent", "event_id", "subject", "reason"):
            if getattr(self, name) == "":
                raise ConfigError(f"empty --{name.replace('event_', '')} filter")
        if (self.partition is not None or self.offset is not None) and self.agent is None:
            # offsets are per DLQ partition, so they only mean something within one agent's DLQ
            raise ConfigError("--partition and --offset need --agent")
        for name in ("partition", "offset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name} must be >= 0")

    def matches(self, rec: ConsumedRecord) -> bool:
        return (
            (self.partition is None or rec.partition == self.partition)
            and (self.offset is None or rec.offset == self.offset)
            and (self.reason is None or header_text(rec, H_REASON) == self.reason)
            and (self.subject is None or subject_of(rec) == self.subject)
            and (self.event_id is None or event_id_of(rec) == self.event_id)
        )


def dlq_topic(settings: Settings, agent: str) -> str:
    return settings.topic(topics.dlq_topic(agent).name)


async def dlq_topics(settings: Settings, agent: str | None = None) -> list[str]:
    """The DLQ topic of ``agent`` (which must exist), or every DLQ topic under the prefix."""
    prefix = settings.topic(topics.DLQ_PREFIX)
    existing = [t for t in await kafka.list_topics(settings) if t.startswith(prefix)]
    if agent is None:
        return existing
    name = dlq_topic(settings, agent)
    if name not in existing:
        known = ", ".join(existing) or "none"
        raise TopicNotFoundError(f"no DLQ topic {name!r} for agent {agent!r} (DLQ topics: {known})")
    return [name]


def origin_of(rec: ConsumedRecord) -> tuple[str, str, int, int] | None:
    return origin_key(
        rec.topic,
        header_text(rec, H_ORIGIN_TOPIC),
        _int(header_text(rec, H_ORIGIN_PARTITION)),
        _int(header_text(rec, H_ORIGIN_OFFSET)),
    )


def once_per_origin(records: Sequence[ConsumedRecord]) -> list[ConsumedRecord]:
    """The first of the records (in the given order) of each origin record of each DLQ;
    records without origin headers are all kept."""
    seen: set[tuple[str, str, int, int]] = set()
    kept = []
    for rec in records:
        origin = origin_of(rec)
        if origin is not None:
            if origin in seen:
                continue
            seen.add(origin)
        kept.append(rec)
    return kept


async def find(settings: Settings, flt: DlqFilter) -> list[ConsumedRecord]:
    """Matching committed records up to the DLQs' current end, in DLQ order (topic, partition,
    offset), one per origin record."""
    names = await dlq_topics(settings, flt.agent)
    if not names:
        return []
    found = [r async for r in kafka.read_topics(settings, names, committed_only=True) if flt.matches(r)]
    return once_per_origin(sorted(found, key=lambda r: (r.topic, r.partition, r.offset)))


# -- replay -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Replay:
    """One DLQ record and what re-producing it sends where."""

    source: ConsumedRecord
    topic: str
    record: EncodedRecord
    #: set for records without a key only (see ``replay_of``)
    partition: int | None = None


def replay_of(rec: ConsumedRecord) -> Replay:
    """The original record back, marked with ``vigil_replay``. A keyed record goes through the
    default partitioner, i.e. to its subject's partition, behind any release control record;
    a record without a key goes back to the partition it came from."""
    origin = header_text(rec, H_ORIGIN_TOPIC)
    if not origin:
        raise ConfigError(f"DLQ record {ref(rec)} has no {H_ORIGIN_TOPIC} header: its origin is unknown")
    headers = [(k, v) for k, v in rec.headers if k not in DROPPED_ON_REPLAY]
    headers.append((H_REPLAY, ref(rec).encode()))
    partition = _int(header_text(rec, H_ORIGIN_PARTITION)) if rec.key is None else None
    return Replay(rec, origin, EncodedRecord(rec.key, rec.value, headers), partition)


async def plan_replay(settings: Settings, records: Sequence[ConsumedRecord]) -> list[Replay]:
    """Replays for ``records``, refused as a whole if any origin is unknown or gone: the
    producer would otherwise create a missing topic, or half a replay would go out."""
    plan = [replay_of(r) for r in records]
    if plan:
        existing = set(await kafka.list_topics(settings))
        gone = sorted({p.topic for p in plan if p.topic not in existing})
        if gone:
            refs = [ref(p.source) for p in plan if p.topic in gone]
            raise TopicNotFoundError(
                f"origin topic {gone[0]!r} does not exist (needed by {len(refs)} record(s), first {refs[0]})"
            )
    return plan


async def replay(settings: Settings, plan: Sequence[Replay]) -> int:
    """Send ``plan`` in order; return how many the broker acknowledged (acks=all)."""
    if not plan:
        return 0
    async with kafka.producer(settings) as prod:
        try:
            futures = []
            for p in plan:
                partition = p.partition
                if partition is not None and partition not in await prod.partitions_for(p.topic):
                    partition = None  # the topic shrank or was recreated: let the partitioner pick
                r = p.record
                futures.append(
                    await prod.send(p.topic, value=r.value, key=r.key, headers=r.headers, partition=partition)
                )
            results = await asyncio.gather(*futures, return_exceptions=True)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"replay failed: {type(exc).__name__}: {exc}") from None
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise BrokerUnavailableError(
            f"replay incomplete: {len(plan) - len(failed)} of {len(plan)} acknowledged "
            f"({type(failed[0]).__name__}); replaying again is harmless, the worker skips handled ids"
        )
    return len(plan)


# -- purge ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truncation:
    partition: int
    #: first offset kept before and after; the difference is what was deleted
    before: int
    after: int


async def _offset_ranges(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """(log start, end) per partition of ``topic``; ``kafka`` has no public helper for the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    async with kafka._started(settings, consumer, consumer.start, consumer.stop):  # noqa: SLF001
        parts = consumer.partitions_for_topic(topic)
        if parts is None:  # as in ``kafka.end_offsets``: the first metadata may predate the topic
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
    return {tp.partition: (starts[tp], ends[tp]) for tp in tps}


async def purge(
    settings: Settings, agent: str, *, partition: int | None = None, before_offset: int | None = None
) -> list[Truncation]:
    """Delete the records of ``agent``'s DLQ below ``before_offset`` (default: the current end)
    in every partition, or in ``partition`` only. Kafka can only move a partition's log start
    forward, so this is all-or-prefix, never a filtered delete."""
    (name,) = await dlq_topics(settings, agent)
    ranges = await _offset_ranges(settings, name)
    if partition is not None and partition not in ranges:
        raise ConfigError(f"{name} has no partition {partition} ({len(ranges)} partition(s))")
    targets: dict[int, tuple[int, int]] = {}
    for p, (start, end) in ranges.items():
        if partition is not None and p != partition:
            continue
        # the broker refuses offsets beyond the end; below the start there is nothing to do
        upto = end if before_offset is None else min(before_offset, end)
        if upto > start:
            targets[p] = (start, upto)
    if not targets:
        return []
    async with kafka.admin(settings) as client:
        try:
            low = await client.delete_records(
                {TopicPartition(name, p): RecordsToDelete(upto) for p, (_, upto) in targets.items()}
            )
        except KafkaError as exc:
            raise BrokerUnavailableError(f"cannot purge {name}: {type(exc).__name__}: {exc}") from None
    return [Truncation(tp.partition, targets[tp.partition][0], after) for tp, after in sorted(low.items())]


# -- release ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int


async def release(settings: Settings, agent: str, source_topic: str, subject: str) -> Sent:
    """Produce the release control record for ``subject`` to ``source_topic`` (real name): keyed
    by the subject, it lands on the subject's partition, ordered with its events."""
    if not subject:
        raise ConfigError("empty SUBJECT")
    if source_topic not in await kafka.list_topics(settings):
        raise TopicNotFoundError(f"source topic {source_topic!r} of agent {agent!r} does not exist")
    rec = control_record(agent, subject, CONTROL_RELEASE)
    async with kafka.producer(settings) as prod:
        try:
            fut = await prod.send(source_topic, value=rec.value, key=rec.key, headers=rec.headers)
            meta = await fut
        except KafkaError as exc:
            raise BrokerUnavailableError(f"release not sent: {type(exc).__name__}: {exc}") from None
    return Sent(source_topic, meta.partition, meta.offset)
