"""Records of one lane (one partition, one subject) through one agent: dead-lettered before? ->
decode -> validate/upcast -> dedup -> park check -> handler (retried per the agent's policy) ->
emit -> state.

The common case runs as a batch: consecutive records of the lane are decoded once (typed, from
the bytes), handled one after the other on the entity's state in memory, and made durable
together: their outputs acknowledged by the broker, then one state write carrying all their
handled ids. A batch costs one broker round trip however many records it holds; once its
handlers have run ``MAX_BATCH_SECONDS`` it is made durable before the next record, so slow
handlers (an LLM call) publish and save record by record. Anything
else (a dead letter, a control record, a parked subject, a handler that failed once, a gate)
first makes the batch so far durable, then takes the record-at-a-time path with the full
error handling.

Every outcome is durable before ``handle_many`` returns: emitted events and dead letters are
acknowledged by the broker, the state write is applied locally and queued to the changelog
(flushed before the offset commit); a dead letter is written with its mark in the input
partition's window (``streams.core.dlq_dedup``), so a redelivered record that was dead-lettered
is skipped, not dead-lettered again. Nothing here raises for a bad record or a failing handler;
broker trouble is retried until it clears or the task is cancelled, so a record is never acked
unhandled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError
from tenacity import RetryCallState

from schemas import Envelope, InvalidEnvelopeError, Payload, VigilError, registry, split_type
from streams.core import codec, topics
from streams.core.agent import AgentSpec
from streams.core.backpressure import Blocked
from streams.core.context import Context, current_event
from streams.core.dlq import CONTROL_RELEASE, H_AGENT, H_CONTROL, REASON_PARKED, dead_letter, reason_of
from streams.core.dlq_dedup import DeadLetterMarks
from streams.core.effects import AtLeastOnceEffects, Effects, Output, Publisher
from streams.core.journal import Journal
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings
from streams.core.state import EntityRecord, StateStore, state_copier
from streams.core.tables import TableWrite
from streams.observability import metrics

log = logging.getLogger(__name__)

Outcome = Literal["ok", "duplicate", "dlq", "parked", "control", "ignored"]


class ParkedError(VigilError):
    """A record of a subject that is parked after an earlier record was dead-lettered."""

    reason = REASON_PARKED

    def __init__(self, subject: str) -> None:
        super().__init__(
            f"subject {subject!r} is parked; run `vigil dlq release {subject}` after fixing the cause"
        )


#: a batch is made durable once its handlers have run this long: fast handlers share a round
#: trip, slow ones (an LLM call) publish and save after each record, as if unbatched
MAX_BATCH_SECONDS = 0.05


class _Batch:
    """Handled records of one entity whose writes are not applied yet."""

    __slots__ = ("entity", "extra", "ids", "outputs", "record", "started", "subject", "types")

    def __init__(self) -> None:
        self.started = 0.0
        self.subject: str | None = None
        self.entity: EntityRecord | None = None
        self.record: ConsumedRecord | None = None
        self.outputs: list[Output] = []
        self.ids: list[str] = []
        self.types: list[str] = []
        #: journal entries of the batch's events, deleted with its write
        self.extra: list[TableWrite] = []


class _EntityLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _NeedsSlowPath(Exception):
    """The record leaves the batch: it is handled on its own, with the full error handling."""

    def __init__(self, failure: BaseException | None = None, journal: Journal | None = None) -> None:
        super().__init__()
        self.failure = failure
        self.journal = journal


class Dispatcher:
    def __init__(
        self,
        spec: AgentSpec,
        settings: Settings,
        store: StateStore,
        publisher: Publisher,
        resources: Mapping[str, Any],
        effects: Effects | None = None,
        marks: DeadLetterMarks | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.store = store
        self.marks = marks if marks is not None else DeadLetterMarks()
        self.effects = effects or AtLeastOnceEffects(spec.name, publisher, store.table, self.marks)
        self.resources = resources
        self.dlq_topic = settings.topic(spec.dlq_topic)
        #: the agent's own types and versions, by ``ce_type`` header: decoded straight from the bytes
        self._typed: dict[bytes, tuple[str, type[Envelope[Any]]]] = {
            p.event_type.encode(): (p.event_type, Envelope[p])  # type: ignore[valid-type]
            for p in spec.payloads
        }
        self._targets: dict[str, type[Payload]] = {p.event_base: p for p in spec.payloads}
        self._handlers = {p.event_type: spec.handler_for(p.event_base) for p in spec.payloads}
        #: an agent of several topics sees one subject's records in several lanes: one at a time
        self._entity_locks: dict[tuple[int, bytes], _EntityLock] | None = {} if len(spec.topics) > 1 else None
        self._counters: dict[tuple[str, str], Any] = {}
        self._handler_seconds = metrics.HANDLER_SECONDS.labels(spec.name)
        self._topics: dict[str, str] = {}
        self._copy_state = state_copier(spec.state)

    # -- entry points ------------------------------------------------------------------------
    async def handle(self, record: ConsumedRecord) -> Outcome:
        [outcome] = await self.handle_many([record])
        return outcome

    async def handle_many(self, records: Sequence[ConsumedRecord]) -> list[Outcome]:
        """Records of one partition and one key, in offset order."""
        if self._entity_locks is None or not records:
            return await self._handle_many(records)
        key = (records[0].partition, records[0].key or b"")
        held = self._entity_locks.get(key)
        if held is None:
            held = self._entity_locks[key] = _EntityLock()
        held.users += 1
        try:
            async with held.lock:
                return await self._handle_many(records)
        finally:
            held.users -= 1
            if not held.users:
                del self._entity_locks[key]

    async def _handle_many(self, records: Sequence[ConsumedRecord]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        batch = _Batch()
        for record in records:
            try:
                outcomes.append(await self._batched(record, batch))
                if batch.ids and time.monotonic() - batch.started >= MAX_BATCH_SECONDS:
                    await self._flush(batch)
            except _NeedsSlowPath as slow:
                await self._flush(batch)
                batch.entity = None  # the record-at-a-time path may change the entity: read it again
                outcomes.append(await self._one(record, slow.failure, slow.journal))
        await self._flush(batch)
        return outcomes

    # -- the batch ---------------------------------------------------------------------------
    async def _batched(self, record: ConsumedRecord, batch: _Batch) -> Outcome:
        if self.marks.seen(record) or codec.header(record.headers, H_CONTROL) is not None:
            raise _NeedsSlowPath
        event = self._decode_fast(record)
        if event is None:
            if self._other_type(record):
                self._count(codec.header(record.headers, "ce_type"), "ignored")
                return "ignored"
            try:
                event = self._decode(record)  # another version (upcast), or a bad record
            except VigilError:
                raise _NeedsSlowPath from None
        if batch.entity is None or batch.subject != event.subject:
            await self._flush(batch)
            try:
                batch.entity = self.store.load(record.partition, event.subject)
            except VigilError:
                raise _NeedsSlowPath from None
            batch.subject = event.subject
        entity = batch.entity
        if event.id in batch.ids or self.store.handled(record.partition, entity, event.id):
            self._count(event.type, "duplicate")
            return "duplicate"
        if entity.parked and self.spec.on_dead_letter == "park":
            raise _NeedsSlowPath
        started = time.monotonic()
        journal = Journal(self.spec.name, self.store.table, record.partition, event.subject, event.id)
        try:
            ctx = await self._attempt(event, entity, 1, journal)
        except asyncio.CancelledError:
            raise
        except Blocked:
            raise _NeedsSlowPath(None, journal) from None
        except Exception as exc:  # noqa: BLE001 - retried or dead-lettered on the slow path
            raise _NeedsSlowPath(exc, journal) from None
        if journal.busy:
            await journal.save_meta()
            batch.extra.extend(journal.done_writes())
        entity.state = ctx.state
        if not batch.ids:
            batch.started = started
        batch.outputs.extend(self._output(ev) for ev in ctx.pending)
        batch.ids.append(event.id)
        batch.types.append(event.type)
        batch.record = record
        return "ok"

    async def _flush(self, batch: _Batch) -> None:
        if not batch.ids or batch.entity is None or batch.record is None or batch.subject is None:
            return
        writes = self.store.writes(batch.subject, batch.entity, batch.ids, _now_ms())
        if batch.extra:
            writes.extend(batch.extra)
            batch.extra = []
        await self.effects.apply(batch.record, batch.outputs, writes)
        for type_, n in Counter(batch.types).items():
            self._count(type_, "ok", n)
        batch.outputs, batch.ids, batch.types, batch.record = [], [], [], None

    def _decode_fast(self, record: ConsumedRecord) -> Envelope[Payload] | None:
        """The typed envelope straight from the bytes when the record carries the agent's own
        type and version; None for anything else (the slow path explains what is wrong)."""
        if record.value is None:
            return None
        typed = self._typed.get(codec.header(record.headers, "ce_type") or b"")
        if typed is None:
            return None
        try:
            event: Envelope[Payload] = typed[1].model_validate_json(record.value)
        except ValidationError:
            return None
        if event.type != typed[0] or record.key != event.subject.encode():
            return None
        return event

    def _other_type(self, record: ConsumedRecord) -> bool:
        """A record of another registered event type sharing the agent's topic: not for it."""
        type_ = codec.header(record.headers, "ce_type")
        if type_ is None:
            return False
        try:
            base, _ = split_type(type_.decode())
        except (ValueError, VigilError, UnicodeDecodeError):
            return False
        if base in self._targets or not registry.knows(base):
            return False
        try:  # the header could lie: the body decides
            raw = codec.decode(record.value)
        except VigilError:
            return False
        return split_type(raw.type)[0] == base

    # -- one record at a time ------------------------------------------------------------------
    async def _one(
        self, record: ConsumedRecord, failure: BaseException | None, journal: Journal | None = None
    ) -> Outcome:
        if self.marks.seen(record):
            return await self._dead_lettered_before(record)
        control = codec.header(record.headers, H_CONTROL)
        if control is not None:
            return await self._control(record, control)
        if self._other_type(record):
            self._count(codec.header(record.headers, "ce_type"), "ignored")
            return "ignored"
        try:
            event = self._decode(record)
        except VigilError as exc:
            await self._dead_letter(record, exc, attempts=0, type_="unknown")
            return "dlq"

        try:
            entity = self.store.load(record.partition, event.subject)
        except VigilError as exc:
            await self._dead_letter(record, exc, attempts=0, type_=event.type)
            return "dlq"
        if self.store.handled(record.partition, entity, event.id):
            self._count(event.type, "duplicate")
            return "duplicate"
        if entity.parked and self.spec.on_dead_letter == "park":
            await self._dead_letter(record, ParkedError(event.subject), attempts=0, type_=event.type)
            self._count(event.type, "parked")
            return "parked"

        if journal is None or journal.event_id != event.id:
            journal = Journal(self.spec.name, self.store.table, record.partition, event.subject, event.id)
        ctx, failure, attempts = await self._run_handler(event, entity, failure, journal)
        await journal.save_meta()
        if failure is not None:
            log.warning(
                "agent %s: handler failed on %s after %d attempt(s): %r",
                self.spec.name,
                event.id,
                attempts,
                failure,
            )
            park: list[TableWrite] = []
            if self.spec.on_dead_letter == "park":
                entity.parked = True
                park = self.store.writes(event.subject, entity, [], _now_ms())
            park.extend(journal.done_writes())  # the event is over: so is its journal
            await self._dead_letter(record, failure, attempts=attempts, type_=event.type, state=park)
            return "dlq"

        assert ctx is not None
        entity.state = ctx.state
        outputs = [self._output(ev) for ev in ctx.pending]
        writes = self.store.writes(event.subject, entity, [event.id], _now_ms())
        writes.extend(journal.done_writes())
        await self.effects.apply(record, outputs, writes)
        self._count(event.type, "ok")
        return "ok"

    async def _attempt(
        self, event: Envelope[Payload], entity: EntityRecord, attempt: int, journal: Journal
    ) -> Context[Any]:
        """One run of the handler on a copy of the entity's state; the journal outlives it."""
        journal.new_attempt()
        state = self._copy_state(entity.state) if entity.state is not None else None
        ctx: Context[Any] = Context(
            agent=self.spec.name,
            event=event,
            state=state,
            emits=self.spec.emits,
            resources=self.resources,
            attempt=attempt,
            journal=journal,
        )
        started = time.perf_counter()
        token = current_event.set(event)
        try:
            await self._handlers[event.type](event, ctx)
        finally:
            current_event.reset(token)
            self._handler_seconds.observe(time.perf_counter() - started)
        return ctx

    async def _run_handler(
        self,
        event: Envelope[Payload],
        entity: EntityRecord,
        failure: BaseException | None,
        journal: Journal,
    ) -> tuple[Context[Any] | None, BaseException | None, int]:
        """Each attempt starts from the stored state; only a successful one is kept. A handler
        stopped by a gate (``Blocked``) waits for it and starts over without using an attempt.
        ``failure`` is the first attempt's error when the batch already ran it."""
        while True:
            try:
                return await self._attempts(event, entity, failure, journal)
            except Blocked as blocked:
                log.info("agent %s: %s is waiting: %s", self.spec.name, event.id, blocked)
                self._count(event.type, "blocked")
                failure = None
                await blocked.wait()

    async def _attempts(
        self,
        event: Envelope[Payload],
        entity: EntityRecord,
        failure: BaseException | None,
        journal: Journal,
    ) -> tuple[Context[Any] | None, BaseException | None, int]:
        retry = self.spec.retry
        done = 0
        if failure is not None:
            done = 1
            if not retry.should_retry(failure) or retry.max_attempts == 1:
                return None, failure, done
            self._count(event.type, "retried")
            await asyncio.sleep(retry.wait_after(1))

        def on_retry(_: RetryCallState) -> None:
            self._count(event.type, "retried")

        # tenacity only once a record failed: the common path builds no retry machinery
        retrying = retry.retrying(before_sleep=on_retry, done=done)
        attempts = done
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = done + attempt.retry_state.attempt_number
                    return await self._attempt(event, entity, attempts, journal), None, attempts
        except (asyncio.CancelledError, Blocked):
            raise
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried or dead-lettered, never acked silently
            return None, exc, attempts
        raise AssertionError("tenacity stopped without a result")  # pragma: no cover

    async def _control(self, record: ConsumedRecord, action: bytes) -> Outcome:
        agent = codec.header(record.headers, H_AGENT)
        if agent is not None and agent.decode(errors="replace") != self.spec.name:
            return "control"  # addressed to another agent on the same topic
        if action.decode(errors="replace") != CONTROL_RELEASE or record.key is None:
            exc = InvalidEnvelopeError(f"unknown control record {action!r} (key {record.key!r})")
            await self._dead_letter(record, exc, attempts=0, type_="control")
            return "dlq"
        subject = record.key.decode(errors="replace")
        try:
            entity = self.store.load(record.partition, subject)
        except VigilError as exc:
            await self._dead_letter(record, exc, attempts=0, type_="control")
            return "dlq"
        if entity.parked:
            entity.parked = False
            await self.effects.apply(record, [], self.store.writes(subject, entity, [], _now_ms()))
            log.info("agent %s: subject %r released", self.spec.name, subject)
        return "control"

    async def _dead_lettered_before(self, record: ConsumedRecord) -> Outcome:
        """A redelivery (after a crash or a rebalance) of a record whose dead letter is already
        written: nothing runs again. Under ``park``, the subject is parked as it was right after
        that dead letter (at-least-once writes the state and the mark one after the other)."""
        log.info(
            "agent %s: %s:%d@%d was dead-lettered before; skipped",
            self.spec.name,
            record.topic,
            record.partition,
            record.offset,
        )
        type_ = "unknown"
        if self.spec.on_dead_letter == "park":
            try:
                event = self._decode(record)
                entity = self.store.load(record.partition, event.subject)
            except VigilError:
                pass  # dead-lettered as poison: there is no subject to park
            else:
                type_ = event.type
                if not entity.parked:
                    entity.parked = True
                    park = self.store.writes(event.subject, entity, [], _now_ms())
                    await self.effects.apply(record, [], park)
        self._count(type_, "duplicate")
        return "duplicate"

    def _decode(self, record: ConsumedRecord) -> Envelope[Payload]:
        raw = codec.decode(record.value)
        if record.key != raw.subject.encode():
            # State lives on the partition of the key; a mismatched key would split an entity.
            shown = record.key.decode(errors="replace") if record.key is not None else None
            raise InvalidEnvelopeError(
                f"record key {shown!r} must equal the envelope subject {raw.subject!r}"
            )
        try:
            base = split_type(raw.type)[0]
        except (ValueError, VigilError):
            base = ""  # registry.parse explains what is wrong with the type
        return registry.parse(raw, target=self._targets.get(base, self.spec.payload))

    def _output(self, event: Envelope[Payload]) -> Output:
        topic = self._topics.get(event.type)
        if topic is None:
            topic = self._topics[event.type] = self.settings.topic(topics.for_type(event.type).name)
        return Output(topic, codec.encode(event))

    def _count(self, type_: str | bytes | None, outcome: str, n: int = 1) -> None:
        name = type_.decode(errors="replace") if isinstance(type_, bytes) else (type_ or "unknown")
        counter = self._counters.get((name, outcome))
        if counter is None:
            counter = self._counters[(name, outcome)] = metrics.EVENTS.labels(self.spec.name, name, outcome)
        counter.inc(n)

    async def _dead_letter(
        self,
        record: ConsumedRecord,
        exc: BaseException,
        *,
        attempts: int,
        type_: str,
        state: Sequence[TableWrite] = (),
    ) -> None:
        reason = reason_of(exc)
        letter = dead_letter(record, exc, agent=self.spec.name, attempts=attempts)
        await self.effects.apply(record, [Output(self.dlq_topic, letter)], state, mark=True)
        metrics.DLQ_RECORDS.labels(self.spec.name, reason).inc()
        self._count(type_, "dlq")


def _now_ms() -> int:
    return int(time.time() * 1000)
