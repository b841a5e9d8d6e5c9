"""Test an agent in memory with the production dispatcher: no broker, no worker.

    async with AgentHarness(support, llm=ScriptedLLM(["Hi!"])) as h:
        out = await h.send(ChatMessageReceivedV2(...), subject="c1")
        assert out.outcome == "ok"
        assert h.emitted(ChatReplyRequestedV1)[0].data.text == "Hi!"
        assert h.state("c1").messages_handled == 1

``send`` builds the envelope, encodes it as a producer would (``streams.core.codec``), wraps it
in a consumed record of the subject's partition and hands it to
``streams.core.dispatcher.Dispatcher``: the same decode, upcast, dedup, retry, journal, emit
and dead-letter code a worker runs, over an in-memory table (``streams.core.tables.MemoryTable``)
and an in-memory publisher. What differs from a worker, on purpose:

- retry waits are zero (``instant_retries=False`` keeps the agent's backoff);
- a handler stopped by a gate (an open circuit, a spent budget) fails the ``send`` after
  ``timeout`` seconds instead of waiting for the gate;
- ``fail_after_step="llm"`` kills the "worker" right after that journaled step was recorded
  (``SimulatedCrash``); ``redeliver`` then hands the same record over again, as the next owner
  of the partition would: recorded steps replay instead of running.

The scripted LLM is ``agents.testing.ScriptedLLM`` (the real ``agents.llm.LLMClient`` over a
scripted Router); the pytest fixture ``agent_harness`` is in ``streams.pytest_plugin``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from aiokafka.partitioner import DefaultPartitioner

from schemas import Envelope, Payload, VigilError, registry, split_type
from streams.core import agent as agent_module
from streams.core import codec, topics
from streams.core.agent import AgentSpec, Handler, Runtime
from streams.core.context import Context
from streams.core.dispatcher import Dispatcher, Outcome
from streams.core.dlq import (
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_REASON,
)
from streams.core.dlq_dedup import DeadLetterMarks
from streams.core.journal import JOURNAL_PREFIX, journal_key, meta_key
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings
from streams.core.state import StateStore
from streams.core.tables import MemoryTable, TableWrite

P = TypeVar("P", bound=Payload)

#: how a ``send`` ended: a dispatcher outcome, or "crashed" (``fail_after_step``)
SendOutcome = Outcome | Literal["crashed"]

SOURCE = "vigil/testing"


class HarnessError(AssertionError):
    """The harness could not do what the test asked (an AssertionError, so pytest shows it as
    the test's failure)."""


class SimulatedCrash(BaseException):
    """The worker "died" right after a journaled step was recorded: a BaseException, so no
    ``except Exception`` in a handler or the dispatcher catches it, and nothing after it runs."""

    retriable = False

    def __init__(self, step: str) -> None:
        super().__init__(f"simulated crash after step {step!r}")
        self.step = step


class HarnessTable(MemoryTable):
    """The agent's state table, with a trigger that crashes after one journal write."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.crash_after: tuple[bytes, str] | None = None

    async def write_now(self, partition: int, writes: Sequence[TableWrite]) -> None:
        await self.write(partition, writes)
        trigger = self.crash_after
        if trigger is not None and any(key == trigger[0] for key, _ in writes):
            self.crash_after = None
            raise SimulatedCrash(trigger[1])


class MemoryPublisher:
    """``streams.core.effects.Publisher`` that keeps every record it is given, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, codec.EncodedRecord]] = []

    async def publish(self, topic: str, records: Sequence[codec.EncodedRecord]) -> None:
        self.sent.extend((topic, r) for r in records)


@dataclass
class Attempt:
    """One run of the handler for the event being sent."""

    number: int
    #: what the attempt raised (None: it returned)
    error: BaseException | None = None
    #: journaled steps of this attempt and how each ended: "ran" or "replayed"
    steps: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetter:
    """A record of the agent's DLQ topic, its ``vigil_*`` headers read back."""

    reason: str
    error_class: str
    error_message: str
    attempts: int
    origin_topic: str
    origin_partition: int
    origin_offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class Sent:
    """What one ``send`` (or ``redeliver``) did."""

    outcome: SendOutcome
    record: ConsumedRecord
    #: the envelope sent (None for raw bytes)
    event: Envelope[Any] | None
    attempts: list[Attempt]
    #: events this send emitted, decoded from the published bytes
    emitted: list[Envelope[Any]]
    dead_letters: list[DeadLetter]

    @property
    def steps(self) -> dict[str, str]:
        """The last attempt's journaled steps (``{"llm": "ran"}``); empty if nothing ran."""
        return self.attempts[-1].steps if self.attempts else {}

    @property
    def error(self) -> BaseException | None:
        """The last attempt's error."""
        return self.attempts[-1].error if self.attempts else None


class AgentHarness:
    """One agent, its state table, DLQ marks and outputs, all in memory.

    ``agent`` is the decorated handler, its ``AgentSpec`` or its name in ``runtime`` (default:
    the process-wide ``streams.runtime``). ``llm`` becomes the ``llm`` resource (``ctx.llm``); ``resources`` adds
    others. ``partitions`` spreads subjects over that many partitions with the producer's
    default partitioner (murmur2 of the key)."""

    def __init__(
        self,
        agent: Handler | AgentSpec | str,
        *,
        llm: Any = None,
        resources: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
        runtime: Runtime | None = None,
        partitions: int = 1,
        instant_retries: bool = True,
        timeout: float = 10.0,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        spec = _find_spec(agent, runtime)
        if instant_retries:
            spec = dataclasses.replace(
                spec, retry=dataclasses.replace(spec.retry, backoff=0.0, max_backoff=0.0, jitter=0.0)
            )
        self._attempts: list[Attempt] = []
        self.spec = dataclasses.replace(
            spec,
            handler=self._observed(spec.handler),
            handlers={base: self._observed(h) for base, h in spec.handlers.items()},
        )
        self.settings = settings or Settings(_env_file=None)
        self.resources: dict[str, Any] = dict(resources or {})
        if llm is not None:
            self.resources["llm"] = llm
        self.timeout = timeout
        self.partitions = partitions
        self.table = HarnessTable(spec.table_name)
        self.marks = DeadLetterMarks(MemoryTable(f"{spec.name}-dlq-marks"))
        self.publisher = MemoryPublisher()
        self.dispatcher = self._dispatcher()
        self._offsets: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)
        self._last: Sent | None = None
        self._partitioner = DefaultPartitioner()

    async def __aenter__(self) -> AgentHarness:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def restart(self) -> None:
        """A new dispatcher over the same tables and outputs, as a restarted worker on the same
        RocksDB: nothing held in memory by the old one survives."""
        self.dispatcher = self._dispatcher()

    # -- feeding -------------------------------------------------------------------------------
    async def send(
        self,
        item: Payload | Envelope[Any] | bytes,
        *,
        subject: str | None = None,
        id: str | None = None,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        topic: str | None = None,
        fail_after_step: str | None = None,
    ) -> Sent:
        """Hand one record to the dispatcher and wait until it is done.

        ``item`` is a payload (enveloped with ``subject``, and ``id`` or a fresh ``evt-<n>``),
        a whole ``Envelope``, or raw record bytes (poison: ``key`` and ``headers`` as given).
        ``key`` overrides the record key, ``topic`` the logical source topic (default: the
        topic of the event's type among the agent's topics). ``fail_after_step`` crashes the
        handler right after that journaled step (``"llm"``, ``"llm#2"``, ``"fetch"``) is
        recorded: the outcome is ``"crashed"``, the journal keeps the step, nothing else is
        written; it is a ``HarnessError`` if the step never ran."""
        event: Envelope[Any] | None
        value: bytes | None
        if isinstance(item, bytes):
            event, value = None, item
            record_key = _bytes(key) if key is not None else (subject.encode() if subject else None)
            record_headers = list(headers or [])
            logical = topic or self.spec.topic
        else:
            event = item if isinstance(item, Envelope) else self._envelope(item, subject, id)
            encoded = codec.encode(event)
            value = encoded.value
            record_key = _bytes(key) if key is not None else encoded.key
            record_headers = [*encoded.headers, *(headers or [])]
            logical = topic or self._topic_of(event.type)
        record = self._record(logical, record_key, value, record_headers)
        return await self._dispatch(record, event, fail_after_step)

    async def redeliver(self, sent: Sent | None = None, *, fail_after_step: str | None = None) -> Sent:
        """Hand the same record (same partition and offset) over again, as after a crash or a
        rebalance; default: the last one sent."""
        previous = sent or self._last
        if previous is None:
            raise HarnessError("nothing was sent yet")
        return await self._dispatch(previous.record, previous.event, fail_after_step)

    # -- what happened -------------------------------------------------------------------------
    @property
    def published(self) -> list[tuple[str, codec.EncodedRecord]]:
        """Every record the agent published (emits and dead letters), with its topic."""
        return list(self.publisher.sent)

    @overload
    def emitted(self) -> list[Envelope[Any]]: ...

    @overload
    def emitted(self, type_: type[P]) -> list[Envelope[P]]: ...

    def emitted(self, type_: type[Payload] | None = None) -> list[Envelope[Any]]:
        """Emitted events in order, decoded from their bytes (upcast to ``type_`` if given,
        else to the latest version of each type)."""
        return [e for _, r in self.publisher.sent if (e := self._decode_emitted(r, type_)) is not None]

    @property
    def dead_letters(self) -> list[DeadLetter]:
        dlq = self.settings.topic(self.spec.dlq_topic)
        return [_dead_letter(r) for t, r in self.publisher.sent if t == dlq]

    def state(self, subject: str) -> Any:
        """The subject's stored state (the agent's state model; a fresh one if never written)."""
        return self._store().load(self.partition_of(subject), subject).state

    def parked(self, subject: str) -> bool:
        """Whether the subject is parked (``on_dead_letter="park"`` after a dead letter)."""
        return self._store().load(self.partition_of(subject), subject).parked

    def journal(self, event: Sent | Envelope[Any] | str) -> dict[str, Any]:
        """The recorded steps of an event (``Sent``, envelope or id) as their JSON decodes:
        ``{"llm": {...}, "fetch": ...}``. Only an unfinished event (crashed, retrying) has any:
        its final write deletes them."""
        event_id = _event_id(event)
        prefix = journal_key(event_id, "")
        out: dict[str, Any] = {}
        for partition in sorted(self.table.partitions):
            for key in self.table.keys(partition):
                if key.startswith(prefix):
                    raw = self.table.get(partition, key) or b""
                    out[key[len(prefix) :].decode()] = json.loads(raw[8:])
        return out

    def journal_entries(self) -> int:
        """How many journal entries the table holds (0 once every event has finished)."""
        return sum(
            1 for p in self.table.partitions for k in self.table.keys(p) if k.startswith(JOURNAL_PREFIX)
        )

    def meta(self, subject: str) -> dict[str, Any]:
        """The subject's journal meta (per-entity budgets...), ``{}`` if never written."""
        raw = self.table.get(self.partition_of(subject), meta_key(subject))
        value: dict[str, Any] = json.loads(raw) if raw is not None else {}
        return value

    def partition_of(self, subject: str) -> int:
        if self.partitions == 1:
            return 0
        every = list(range(self.partitions))
        partition: int = self._partitioner(subject.encode(), every, every)
        return partition

    # -- internals -----------------------------------------------------------------------------
    def _dispatcher(self) -> Dispatcher:
        return Dispatcher(
            self.spec, self.settings, self._store(), self.publisher, self.resources, marks=self.marks
        )

    def _store(self) -> StateStore:
        return StateStore(self.table, self.spec.state)

    def _observed(self, handler: Handler) -> Handler:
        async def observed(event: Envelope[Any], ctx: Context[Any]) -> None:
            attempt = Attempt(ctx.attempt)
            self._attempts.append(attempt)
            if ctx.journal is not None:
                ctx.journal.outcomes = attempt.steps  # this attempt's steps only
            try:
                await handler(event, ctx)
            except BaseException as exc:
                attempt.error = exc
                raise

        return observed

    async def _dispatch(
        self, record: ConsumedRecord, event: Envelope[Any] | None, fail_after_step: str | None
    ) -> Sent:
        if fail_after_step is not None:
            if event is None:
                raise HarnessError("fail_after_step needs an event, not raw bytes")
            self.table.crash_after = (journal_key(event.id, fail_after_step), fail_after_step)
        self._attempts = []
        sent_before = len(self.publisher.sent)
        outcome: SendOutcome
        try:
            async with asyncio.timeout(self.timeout):
                outcome = await self.dispatcher.handle(record)
        except SimulatedCrash:
            outcome = "crashed"
            self.restart()  # the worker is gone; the next delivery meets a new one
        except TimeoutError:
            raise HarnessError(
                f"the record was not done after {self.timeout}s: a handler waiting on a gate "
                "(open LLM circuit, spent budget) or a step that never returns"
            ) from None
        finally:
            crash_armed = self.table.crash_after is not None
            self.table.crash_after = None
        if crash_armed and fail_after_step is not None:
            ran = sorted({s for a in self._attempts for s in a.steps})
            raise HarnessError(
                f"fail_after_step={fail_after_step!r} never ran (outcome {outcome!r}, steps: {ran})"
            )
        new = self.publisher.sent[sent_before:]
        dlq = self.settings.topic(self.spec.dlq_topic)
        sent = Sent(
            outcome=outcome,
            record=record,
            event=event,
            attempts=self._attempts,
            emitted=[e for t, r in new if t != dlq and (e := self._decode_emitted(r, None)) is not None],
            dead_letters=[_dead_letter(r) for t, r in new if t == dlq],
        )
        self._last = sent
        return sent

    def _envelope(self, payload: Payload, subject: str | None, id: str | None) -> Envelope[Any]:
        if subject is None:
            raise HarnessError("send(payload) needs subject= (the entity id, the record key)")
        return Envelope[Any](
            id=id or f"evt-{next(self._ids)}",
            source=SOURCE,
            type=payload.event_type,
            subject=subject,
            data=payload,
        )

    def _topic_of(self, type_: str) -> str:
        try:
            name = topics.for_type(type_).name
        except (VigilError, ValueError):
            return self.spec.topic
        return name if name in self.spec.topics else self.spec.topic

    def _record(
        self, logical: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> ConsumedRecord:
        name = self.settings.topic(logical)
        partition = self.partition_of(key.decode(errors="replace")) if key is not None else 0
        offset = self._offsets.get((name, partition), 0)
        self._offsets[(name, partition)] = offset + 1
        return ConsumedRecord(name, partition, offset, key, value, headers, _now_ms())

    def _decode_emitted(
        self, record: codec.EncodedRecord, type_: type[Payload] | None
    ) -> Envelope[Any] | None:
        if _header(record, H_REASON) is not None:
            return None  # a dead letter
        try:
            raw = codec.decode(record.value)
            base, _ = split_type(raw.type)
        except (VigilError, ValueError):
            return None
        if type_ is not None and base != type_.event_base:
            return None
        return registry.parse(raw, target=type_)


def _find_spec(agent: Handler | AgentSpec | str, rt: Runtime | None) -> AgentSpec:
    if isinstance(agent, AgentSpec):
        return agent
    if rt is None:
        rt = agent_module.runtime  # looked up now: tests may swap it
    agents = rt.agents
    if isinstance(agent, str):
        if agent not in agents:
            raise HarnessError(f"no agent named {agent!r} (known: {', '.join(sorted(agents)) or 'none'})")
        return agents[agent]
    for spec in agents.values():
        if spec.handler is agent or any(h is agent for h in spec.handlers.values()):
            return spec
    name = getattr(agent, "__name__", repr(agent))
    raise HarnessError(f"{name} is not a declared agent of this runtime (is its module imported?)")


def _header(record: codec.EncodedRecord, name: str) -> bytes | None:
    return codec.header(record.headers, name)


def _dead_letter(record: codec.EncodedRecord) -> DeadLetter:
    def text(name: str) -> str:
        return (_header(record, name) or b"").decode(errors="replace")

    def number(name: str) -> int:
        return int(text(name) or -1)

    return DeadLetter(
        reason=text(H_REASON),
        error_class=text(H_ERROR_CLASS),
        error_message=text(H_ERROR_MESSAGE),
        attempts=number(H_ATTEMPTS),
        origin_topic=text(H_ORIGIN_TOPIC),
        origin_partition=number(H_ORIGIN_PARTITION),
        origin_offset=number(H_ORIGIN_OFFSET),
        key=record.key,
        value=record.value,
        headers=list(record.headers),
    )


def _event_id(event: Sent | Envelope[Any] | str) -> str:
    if isinstance(event, str):
        return event
    if isinstance(event, Sent):
        if event.event is None:
            raise HarnessError("raw bytes have no event id")
        return event.event.id
    return event.id


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = [
    "AgentHarness",
    "Attempt",
    "DeadLetter",
    "HarnessError",
    "HarnessTable",
    "MemoryPublisher",
    "Sent",
    "SimulatedCrash",
]
