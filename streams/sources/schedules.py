"""The schedules source: named cron schedules become ``schedule.tick.v1`` events on
``schedules.v1`` (key = subject = schedule name), one event per slot across instances.

``vigil source schedules --config FILE`` (``[[schedule]]`` tables, see ``streams.sources.cron``).

- **Ids.** ``uuid5(schedule, NAME, slot in UTC)``: the same (schedule, slot) is the same event
  whoever emits it and however often.
- **At most one emitter per schedule.** Every instance with the same ``VIGIL_APP_ID`` and
  ``--name`` joins one consumer group on a small coordination topic
  (``<app_id>-source-schedules-<name>-coordination``, 12 partitions, never written); a schedule
  belongs to partition ``crc32(name) % partitions`` and only the member assigned that partition
  emits it. A dead member's partitions move after ``VIGIL_SESSION_TIMEOUT`` seconds. On a
  revoke the owner stops, waits for its acks and writes its checkpoint before the group moves
  on; the new owner re-reads the checkpoint before emitting. A member SIGKILLed between an ack
  and its checkpoint write makes the next owner emit that slot again, with the same id.
- **Checkpoint.** Per schedule ``{"after": <UTC ISO>}``: every slot up to it was emitted (or
  skipped by policy). A schedule seen for the first time starts at its takeover; nothing is
  back-filled.
- **Missed slots.** Slots that came due less than three times ``VIGIL_SESSION_TIMEOUT`` s before
  a takeover (what a failover or a rebalance takes) fire as usual; older ones, from while no
  instance ran, follow the schedule's ``catchup_window`` and ``overlap``
  (``streams.sources.cron.plan``).
- ``vigil_source_lag{kind="slots_behind"}``: due slots not yet emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from schemas import Envelope
from schemas.sources import ScheduleTickV1
from streams import kafka
from streams.core.errors import BrokerUnavailableError, ConfigError
from streams.core.settings import Settings
from streams.sources import metrics
from streams.sources.base import Source, SourceSettings, event_id
from streams.sources.cron import Schedule, plan

log = logging.getLogger(__name__)

TOPIC = "schedules.v1"
COORDINATION_PARTITIONS = 12
#: the longest sleep between looks at the schedules (ownership changes wake it earlier)
MAX_SLEEP = 1.0

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def partition_of(schedule: str, partitions: int) -> int:
    return zlib.crc32(schedule.encode()) % partitions


class SchedulesSource(Source):
    kind: ClassVar[str] = "schedules"

    def __init__(
        self,
        name: str,
        schedules: Sequence[Schedule],
        settings: Settings,
        options: SourceSettings | None = None,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(name, settings, options)
        if not schedules:
            raise ConfigError("no schedules configured")
        self.schedules = {s.name: s for s in schedules}
        self.clock = clock
        self.coordination_topic = settings.topic(f"{settings.app_id}-source-schedules-{name}-coordination")
        self.group_id = settings.topic(f"{settings.app_id}-source-schedules-{name}")
        #: schedules this instance emits -> the moment from which their slots count as on time
        self.owned: dict[str, datetime] = {}
        self.takeover_grace = timedelta(seconds=3 * settings.session_timeout)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def topics(self) -> list[str]:
        return [TOPIC]

    # -- ownership ---------------------------------------------------------------------------
    async def take(self, names: Sequence[str]) -> None:
        """Become the emitter of ``names`` (after a group assignment)."""
        async with self._lock:
            await self.checkpoint.load()  # the previous owner flushed before giving them up
            now = self.clock()
            self.owned = {n: now - self.takeover_grace for n in names}
            for n in names:
                if n not in self.checkpoint:
                    self.stage({n: {"after": now.isoformat()}})  # new: starts now
            if names:
                log.info("source %s emits %s", self.label, ", ".join(sorted(names)))
            self._wake.set()

    async def release(self) -> None:
        """Stop emitting; make what was emitted durable before anyone else takes over."""
        async with self._lock:
            self.owned = {}
            await self.flush()

    # -- emitting ----------------------------------------------------------------------------
    def last(self, name: str) -> datetime | None:
        value = self.checkpoint.get(name)
        return datetime.fromisoformat(value["after"]) if value else None

    async def tick(self) -> datetime | None:
        """Emit every slot due now; return when the next one comes due (None: nothing owned)."""
        async with self._lock:
            now = self.clock()
            behind = 0
            soonest: datetime | None = None
            for name, since in sorted(self.owned.items()):
                schedule = self.schedules[name]
                p = plan(schedule, self.last(name), since, now)
                behind += len(p.fire)
                self.set_lag("slots_behind", behind)
                for slot in p.fire:
                    await self._emit_tick(schedule, slot)
                    behind -= 1
                if p.skipped:
                    metrics.SOURCE_EVENTS.labels(self.label, "skipped").inc(p.skipped)
                    log.warning("schedule %s: %d slot(s) skipped by its catch-up policy", name, p.skipped)
                if p.advance_to is not None and (not p.fire or p.advance_to > p.fire[-1]):
                    self.stage({name: {"after": p.advance_to.isoformat()}})
                upcoming = schedule.next_slot(self.last(name) or since)  # past: more to emit now
                soonest = upcoming if soonest is None else min(soonest, upcoming)
            self.set_lag("slots_behind", 0)
            return soonest

    async def _emit_tick(self, schedule: Schedule, slot: datetime) -> None:
        slot_iso = slot.isoformat().replace("+00:00", "Z")
        data = ScheduleTickV1(
            schedule=schedule.name,
            slot=slot,
            slot_local=schedule.local(slot),
            timezone=schedule.timezone,
            payload=schedule.payload,
        )
        event = Envelope[Any](
            id=event_id("schedule", schedule.name, slot_iso),
            source=f"vigil/schedules/{self.name}",
            type=ScheduleTickV1.event_type,
            subject=schedule.name,
            time=self.clock(),
            data=data,
        )
        await self.emit(TOPIC, event, checkpoint={schedule.name: {"after": slot.isoformat()}})

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        await kafka.create_topics(
            self.settings, [self.coordination_topic], partitions=COORDINATION_PARTITIONS
        )
        session_ms = int(self.settings.session_timeout * 1000)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(500, session_ms // 5),
            rebalance_timeout_ms=max(session_ms, 10000),
        )
        consumer.subscribe([self.coordination_topic], listener=_Ownership(self, consumer))
        try:
            await asyncio.wait_for(consumer.start(), 30)
        except (KafkaError, OSError, TimeoutError) as exc:
            await consumer.stop()
            raise BrokerUnavailableError(
                f"cannot join group {self.group_id} at {self.settings.kafka_bootstrap} ({type(exc).__name__})"
            ) from None
        poller = asyncio.create_task(self._poll(consumer))
        try:
            while not self.stopping.is_set():
                if poller.done():
                    poller.result()
                soonest = await self.tick()
                wait = MAX_SLEEP
                if soonest is not None:
                    wait = min(wait, max(0.0, (soonest - self.clock()).total_seconds()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            await self.release()  # durable before the group hands the schedules on
            await consumer.stop()

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        """Keep the group membership alive (the topic carries no records)."""
        while not self.stopping.is_set():
            await consumer.getmany(timeout_ms=500)


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: SchedulesSource, consumer: AIOKafkaConsumer) -> None:
        self.source = source
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.source.release()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        parts = self.consumer.partitions_for_topic(self.source.coordination_topic) or set()
        count = len(parts) or COORDINATION_PARTITIONS
        mine = {tp.partition for tp in assigned}
        names = [n for n in self.source.schedules if partition_of(n, count) in mine]
        await self.source.take(names)
