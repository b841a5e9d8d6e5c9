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
from streams.core.context import Context
from streams.core.dlq import CONTROL_RELEASE, H_AGENT, H_CONTROL, REASON_PARKED, dead_letter, reason_of
from streams.core.dlq_dedup import DeadLetterMarks
from streams.core.effects import AtLeastOnceEffects, Effects, Output, Publisher
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

    __slots__ = ("entity", "ids", "outputs", "record", "started", "subject", "types")

    def __init__(self) -> None:
        self.started = 0.0
        self.subject: str | None = None
        self.entity: EntityRecord | None = None
        self.record: ConsumedRecord | None = None
        self.outputs: list[Output] = []
        self.ids: list[str] = []
        self.types: list[str] = []


class _NeedsSlowPath(Exception):
    """The record leaves the batch: it is handled on its own, with the full error handling."""

    def __init__(self, failure: BaseException | None = None) -> None:
        super().__init__()
        self.failure = failure


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
        self._typed: type[Envelope[Any]] = Envelope[spec.payload]  # type: ignore[name-defined]
        self._type = spec.payload.event_type
        self._type_bytes = self._type.encode()
        self._base = spec.payload.event_base
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
                outcomes.append(await self._one(record, slow.failure))
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
        try:
            ctx = await self._attempt(event, entity, 1)
        except asyncio.CancelledError:
            raise
        except Blocked:
            raise _NeedsSlowPath from None
        except Exception as exc:  # noqa: BLE001 - retried or dead-lettered on the slow path
            raise _NeedsSlowPath(exc) from None
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
        await self.effects.apply(batch.record, batch.outputs, writes)
        for type_, n in Counter(batch.types).items():
            self._count(type_, "ok", n)
        batch.outputs, batch.ids, batch.types, batch.record = [], [], [], None

    def _decode_fast(self, record: ConsumedRecord) -> Envelope[Payload] | None:
        """The typed envelope straight from the bytes when the record carries the agent's own
        type and version; None for anything else (the slow path explains what is wrong)."""
        if record.value is None or codec.header(record.headers, "ce_type") != self._type_bytes:
            return None
        try:
            event: Envelope[Payload] = self._typed.model_validate_json(record.value)
        except ValidationError:
            return None
        if event.type != self._type or record.key != event.subject.encode():
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
        if base == self._base or not registry.knows(base):
            return False
        try:  # the header could lie: the body decides
            raw = codec.decode(record.value)
        except VigilError:
            return False
        return split_type(raw.type)[0] == base

    # -- one record at a time ------------------------------------------------------------------
    async def _one(self, record: ConsumedRecord, failure: BaseException | None) -> Outcome:
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

        ctx, failure, attempts = await self._run_handler(event, entity, failure)
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
            await self._dead_letter(record, failure, attempts=attempts, type_=event.type, state=park)
            return "dlq"

        assert ctx is not None
        entity.state = ctx.state
        outputs = [self._output(ev) for ev in ctx.pending]
        await self.effects.apply(
            record, outputs, self.store.writes(event.subject, entity, [event.id], _now_ms())
        )
        self._count(event.type, "ok")
        return "ok"

    async def _attempt(self, event: Envelope[Payload], entity: EntityRecord, attempt: int) -> Context[Any]:
        """One run of the handler on a copy of the entity's state."""
        state = self._copy_state(entity.state) if entity.state is not None else None
        ctx: Context[Any] = Context(
            agent=self.spec.name,
            event=event,
            state=state,
            emits=self.spec.emits,
            resources=self.resources,
            attempt=attempt,
        )
        started = time.perf_counter()
        try:
            await self.spec.handler(event, ctx)
        finally:
            self._handler_seconds.observe(time.perf_counter() - started)
        return ctx

    async def _run_handler(
        self, event: Envelope[Payload], entity: EntityRecord, failure: BaseException | None
    ) -> tuple[Context[Any] | None, BaseException | None, int]:
        """Each attempt starts from the stored state; only a successful one is kept. A handler
        stopped by a gate (``Blocked``) waits for it and starts over without using an attempt.
        ``failure`` is the first attempt's error when the batch already ran it."""
        while True:
            try:
                return await self._attempts(event, entity, failure)
            except Blocked as blocked:
                log.info("agent %s: %s is waiting: %s", self.spec.name, event.id, blocked)
                self._count(event.type, "blocked")
                failure = None
                await blocked.wait()

    async def _attempts(
        self, event: Envelope[Payload], entity: EntityRecord, failure: BaseException | None
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
                    return await self._attempt(event, entity, attempts), None, attempts
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
        return registry.parse(raw, target=self.spec.payload)

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
