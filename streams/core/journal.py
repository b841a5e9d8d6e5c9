"""The journal of the event a handler is running: each step's result, recorded durably before
the handler goes on, so a retry, a redelivery after a crash or a rebalance returns it instead
of running the step again (no second LLM request, no second tool side effect, no second charge).

Entries live in the agent's state table, beside the entity, so they share its changelog
partition: key ``JOURNAL_PREFIX + event id + NUL + step``, value the 8-byte time it was
recorded followed by the result's JSON. A step's write is acknowledged by the broker before the
step returns (``PartitionedTable.write_now``), outside any transaction: under exactly_once an
aborted transaction must not take a completed LLM call with it. When the event completes (its
state written, or its dead letter), the entries it touched are deleted in the same write; those
an abandoned code path left behind are swept by age with the handled-id index.

The entity's *meta* (``meta_key(subject)``: per-entity budgets, ...) is written with the steps:
unlike the state, which a failed attempt throws away, it records what was spent and survives
every attempt.

Step names are the caller's, made unique per attempt (``name``, ``name#2``, ...), so a handler
that runs the same code path again finds the same names.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import TypeAdapter
from pydantic_core import to_json

from streams.core.errors import ConfigError
from streams.core.tables import PartitionedTable, TableWrite, stamp
from streams.observability import metrics

T = TypeVar("T")

JOURNAL_PREFIX = b"\x00j\x00"
META_PREFIX = b"\x00m\x00"


def journal_key(event_id: str, step: str) -> bytes:
    return JOURNAL_PREFIX + event_id.encode() + b"\x00" + step.encode()


def meta_key(subject: str) -> bytes:
    return META_PREFIX + subject.encode()


class StepError(ConfigError):
    """A step's result cannot be recorded (not JSON-serialisable)."""

    reason = "step_error"


class Journal:
    """One attempt's view of one event's journal. The dispatcher builds it; handlers reach it
    through ``Context.step`` (and ``ctx.llm``, tools); ``done_writes`` are the deletes the
    event's final write carries."""

    __slots__ = (
        "__weakref__",  # agents.llm keys per-event figures by journal
        "_meta",
        "_meta_dirty",
        "_on_done",
        "_touched",
        "_uses",
        "agent",
        "event_id",
        "outcomes",
        "partition",
        "subject",
        "table",
    )

    def __init__(
        self, agent: str, table: PartitionedTable, partition: int, subject: str, event_id: str
    ) -> None:
        self.agent = agent
        self.table = table
        self.partition = partition
        self.subject = subject
        self.event_id = event_id
        self._uses: dict[str, int] = {}
        self._touched: dict[bytes, None] = {}
        self._meta: dict[str, Any] | None = None
        self._meta_dirty = False
        #: step name -> how it ended in this attempt: "ran" or "replayed" (tests, the harness)
        self.outcomes: dict[str, str] = {}
        self._on_done: list[Callable[[], None]] = []

    # -- steps --------------------------------------------------------------------------------
    def new_attempt(self) -> None:
        """A new run of the handler: step names count from the start again."""
        self._uses.clear()

    def unique(self, name: str) -> str:
        """``name`` the first time in this attempt, then ``name#2``, ``name#3``, ..."""
        if not name:
            raise ConfigError("a step needs a name")
        n = self._uses.get(name, 0) + 1
        self._uses[name] = n
        return name if n == 1 else f"{name}#{n}"

    def recorded(self, step: str) -> bytes | None:
        """The recorded JSON of ``step`` (a name from ``unique``), or None."""
        key = journal_key(self.event_id, step)
        raw = self.table.get(self.partition, key)
        if raw is None:
            return None
        self._touched[key] = None
        return raw[8:]

    async def record(self, step: str, result_json: bytes) -> None:
        """Make ``step``'s result durable (with the entity's meta, if it changed)."""
        key = journal_key(self.event_id, step)
        writes: list[TableWrite] = [(key, stamp(int(time.time() * 1000)) + result_json)]
        if self._meta_dirty and self._meta is not None:
            writes.append(self._meta_write(self._meta))
        started = time.perf_counter()
        await self.table.write_now(self.partition, writes)
        metrics.JOURNAL_WRITE_SECONDS.labels(self.agent).observe(time.perf_counter() - started)
        self._meta_dirty = False
        self._touched[key] = None

    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T] | T],
        *args: Any,
        result_type: type[T] | Any = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` once per event: its result is recorded before this
        returns, and a later attempt gets the recorded result back without running it. The
        result comes back as its JSON decodes (validated as ``result_type`` when given), the
        same on the first run and on a replay. An exception is not recorded: the step runs
        again on the next attempt."""
        step = self.unique(name)
        typed = adapter(result_type) if result_type is not None else None
        raw = self.recorded(step)
        if raw is not None:
            self.outcomes[step] = "replayed"
            metrics.JOURNAL_STEPS.labels(self.agent, "replayed").inc()
            replayed: T = _decode(raw, typed)
            return replayed
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        try:
            encoded = to_json(value)
        except Exception as exc:  # pydantic_core raises several types
            raise StepError(f"step {step!r} returned a value that is not JSON-serialisable: {exc}") from exc
        await self.record(step, encoded)
        self.outcomes[step] = "ran"
        metrics.JOURNAL_STEPS.labels(self.agent, "ran").inc()
        result: T = _decode(encoded, typed)
        return result

    # -- meta ---------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """The entity's meta, read once per attempt; change it, then ``touch_meta()``: it is
        written with the next step (or the event's final write)."""
        if self._meta is None:
            raw = self.table.get(self.partition, meta_key(self.subject))
            self._meta = json.loads(raw) if raw is not None else {}
        return self._meta

    def touch_meta(self) -> None:
        self._meta_dirty = True

    async def save_meta(self) -> None:
        """Make the meta durable now (without a step)."""
        if self._meta_dirty and self._meta is not None:
            await self.table.write_now(self.partition, [self._meta_write(self._meta)])
            self._meta_dirty = False

    def _meta_write(self, meta: dict[str, Any]) -> TableWrite:
        return (meta_key(self.subject), json.dumps(meta).encode())

    # -- completion ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether the event's end has anything to do (meta to save, entries to delete,
        callbacks): most events run no step, and their end costs nothing."""
        return bool(self._touched or self._on_done or self._meta_dirty)

    def done_writes(self) -> list[TableWrite]:
        """The deletion of every entry the event's attempts read or wrote, carried by its final
        write (call ``save_meta`` first: the meta must not wait for it). Runs the ``on_done``
        callbacks: the event is over."""
        out: list[TableWrite] = [(key, None) for key in self._touched]
        self._touched.clear()
        done, self._on_done = self._on_done, []
        for fn in done:
            fn()
        return out

    def on_done(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once when the event is over (handled or dead-lettered): per-event
        figures such as the LLM cost of the event (``agents.llm``)."""
        self._on_done.append(fn)


#: one TypeAdapter per result type: building one costs milliseconds (~3 ms for a dataclass)
_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def adapter(result_type: Any) -> TypeAdapter[Any]:
    try:
        adapter = _ADAPTERS.get(result_type)
    except TypeError:  # an unhashable type expression: built each time
        return TypeAdapter(result_type)
    if adapter is None:
        adapter = _ADAPTERS[result_type] = TypeAdapter(result_type)
    return adapter


def _decode(raw: bytes, typed: TypeAdapter[Any] | None) -> Any:
    return typed.validate_json(raw) if typed is not None else json.loads(raw)
