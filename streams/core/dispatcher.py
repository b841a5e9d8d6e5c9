"""One record through one agent: dead-lettered before? -> decode -> validate/upcast -> dedup ->
park check -> handler (retried per the agent's policy) -> emit -> state.

Every outcome is durable before ``handle`` returns: emitted events and dead letters are
acknowledged by the broker, the state write is queued to the changelog (flushed before the
offset commit); a dead letter is written with its mark in the input partition's window
(``streams.core.dlq_dedup``), so a redelivered record that was dead-lettered is skipped, not
dead-lettered again. Nothing here raises for a bad record or a failing handler; broker trouble is
retried until it clears or the task is cancelled, so a record is never acked unhandled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

from tenacity import RetryCallState

from schemas import Envelope, InvalidEnvelopeError, Payload, VigilError, registry
from streams.core import codec, topics
from streams.core.agent import AgentSpec
from streams.core.backpressure import Blocked
from streams.core.context import Context
from streams.core.dlq import CONTROL_RELEASE, H_AGENT, H_CONTROL, REASON_PARKED, dead_letter, reason_of
from streams.core.dlq_dedup import DeadLetterMarks
from streams.core.effects import AtLeastOnceEffects, Effects, Output, Publisher, StateWrite
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings
from streams.core.state import EntityRecord, StateStore
from streams.observability import metrics

log = logging.getLogger(__name__)

Outcome = Literal["ok", "duplicate", "dlq", "parked", "control"]


class ParkedError(VigilError):
    """A record of a subject that is parked after an earlier record was dead-lettered."""

    reason = REASON_PARKED

    def __init__(self, subject: str) -> None:
        super().__init__(
            f"subject {subject!r} is parked; run `vigil dlq release {subject}` after fixing the cause"
        )


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
        self.effects = effects or AtLeastOnceEffects(spec.name, publisher, store, self.marks)
        self.resources = resources
        self.dlq_topic = settings.topic(spec.dlq_topic)

    async def handle(self, record: ConsumedRecord) -> Outcome:
        if self.marks.seen(record):
            return await self._dead_lettered_before(record)
        control = codec.header(record.headers, H_CONTROL)
        if control is not None:
            return await self._control(record, control)
        try:
            event = self._decode(record)
        except VigilError as exc:
            await self._dead_letter(record, exc, attempts=0, type_="unknown")
            return "dlq"

        try:
            entity = self.store.load(event.subject)
        except VigilError as exc:
            await self._dead_letter(record, exc, attempts=0, type_=event.type)
            return "dlq"
        if entity.has_handled(event.id):
            metrics.EVENTS.labels(self.spec.name, event.type, "duplicate").inc()
            return "duplicate"
        if entity.parked and self.spec.on_dead_letter == "park":
            await self._dead_letter(record, ParkedError(event.subject), attempts=0, type_=event.type)
            metrics.EVENTS.labels(self.spec.name, event.type, "parked").inc()
            return "parked"

        ctx, failure, attempts = await self._run_handler(event, entity)
        if failure is not None:
            log.warning(
                "agent %s: handler failed on %s after %d attempt(s): %r",
                self.spec.name,
                event.id,
                attempts,
                failure,
            )
            park = None
            if self.spec.on_dead_letter == "park":
                entity.parked = True
                park = StateWrite(event.subject, self.store.encode(entity, None))
            await self._dead_letter(record, failure, attempts=attempts, type_=event.type, state=park)
            return "dlq"

        assert ctx is not None
        entity.state = ctx.state
        outputs = [self._output(ev) for ev in ctx.pending]
        await self.effects.apply(
            record, outputs, StateWrite(event.subject, self.store.encode(entity, event.id))
        )
        metrics.EVENTS.labels(self.spec.name, event.type, "ok").inc()
        return "ok"

    async def _run_handler(
        self, event: Envelope[Payload], entity: EntityRecord
    ) -> tuple[Context[Any] | None, BaseException | None, int]:
        """Each attempt starts from the stored state; only a successful one is kept. A handler
        stopped by a gate (``Blocked``) waits for it and starts over without using an attempt."""
        while True:
            try:
                return await self._attempts(event, entity)
            except Blocked as blocked:
                log.info("agent %s: %s is waiting: %s", self.spec.name, event.id, blocked)
                metrics.EVENTS.labels(self.spec.name, event.type, "blocked").inc()
                await blocked.wait()

    async def _attempts(
        self, event: Envelope[Payload], entity: EntityRecord
    ) -> tuple[Context[Any] | None, BaseException | None, int]:
        attempts = 0

        def on_retry(_: RetryCallState) -> None:
            metrics.EVENTS.labels(self.spec.name, event.type, "retried").inc()

        retrying = self.spec.retry.retrying(before_sleep=on_retry)
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    state = entity.state.model_copy(deep=True) if entity.state is not None else None
                    ctx: Context[Any] = Context(
                        agent=self.spec.name,
                        event=event,
                        state=state,
                        emits=self.spec.emits,
                        resources=self.resources,
                        attempt=attempts,
                    )
                    started = time.perf_counter()
                    try:
                        await self.spec.handler(event, ctx)
                    finally:
                        metrics.HANDLER_SECONDS.labels(self.spec.name).observe(time.perf_counter() - started)
                    return ctx, None, attempts
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
            entity = self.store.load(subject)
        except VigilError as exc:
            await self._dead_letter(record, exc, attempts=0, type_="control")
            return "dlq"
        if entity.parked:
            entity.parked = False
            await self.effects.apply(record, [], StateWrite(subject, self.store.encode(entity, None)))
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
                entity = self.store.load(event.subject)
            except VigilError:
                pass  # dead-lettered as poison: there is no subject to park
            else:
                type_ = event.type
                if not entity.parked:
                    entity.parked = True
                    park = StateWrite(event.subject, self.store.encode(entity, None))
                    await self.effects.apply(record, [], park)
        metrics.EVENTS.labels(self.spec.name, type_, "duplicate").inc()
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
        return Output(self.settings.topic(topics.for_type(event.type).name), codec.encode(event))

    async def _dead_letter(
        self,
        record: ConsumedRecord,
        exc: BaseException,
        *,
        attempts: int,
        type_: str,
        state: StateWrite | None = None,
    ) -> None:
        reason = reason_of(exc)
        letter = dead_letter(record, exc, agent=self.spec.name, attempts=attempts)
        await self.effects.apply(record, [Output(self.dlq_topic, letter)], state, mark=True)
        metrics.DLQ_RECORDS.labels(self.spec.name, reason).inc()
        metrics.EVENTS.labels(self.spec.name, type_, "dlq").inc()
