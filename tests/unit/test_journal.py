"""Journaled steps through the dispatcher over an in-memory table: a retry replays what an
earlier attempt recorded, the event's final write (or its dead letter) deletes its entries,
the entity's meta outlives failed attempts, and the sweep forgets abandoned entries."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope
from streams import Context, Runtime, Settings
from streams.core import codec
from streams.core.backpressure import Blocked
from streams.core.dispatcher import Dispatcher
from streams.core.dlq import H_ERROR_CLASS, H_ERROR_MESSAGE
from streams.core.journal import JOURNAL_PREFIX, META_PREFIX, StepError, journal_key, meta_key
from streams.core.retry import Retry
from streams.core.state import StateStore, expired_ids, id_key, stamp
from streams.core.tables import str_key
from tests.unit.test_dispatcher import PARTITION, Counter, Entities, MemoryPublisher, record, reply


def make(
    handler: Any, *, max_attempts: int = 3, park: bool = False, table: Entities | None = None
) -> tuple[Dispatcher, Entities, MemoryPublisher]:
    """The dispatcher of test_dispatcher.make, retrying at once (no backoff); ``table``: the
    state another dispatcher left (a restarted worker's restored table)."""
    rt = Runtime()
    rt.agent(
        ChatMessageReceivedV2,
        name="count",
        state=Counter,
        emits=[ChatReplyRequestedV1],
        retry=Retry(max_attempts=max_attempts, backoff=0, jitter=0),
        on_dead_letter="park" if park else "continue",
    )(handler)
    table = table if table is not None else Entities()
    pub = MemoryPublisher()
    settings = Settings(topic_prefix="p.", _env_file=None)  # type: ignore[call-arg]
    return Dispatcher(rt.agents["count"], settings, StateStore(table, Counter), pub, {}), table, pub


def journal_keys(table: Entities) -> list[bytes]:
    return [k for k in table.keys(PARTITION) if k.startswith(JOURNAL_PREFIX)]


class Flaky(Exception):
    retriable = True


class Ledger:
    """A side effect that counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def charge(self, event_id: str, amount: int) -> dict[str, Any]:
        self.calls.append(event_id)
        return {"charged": amount, "call": len(self.calls)}

    async def acharge(self, event_id: str) -> int:
        self.calls.append(event_id)
        return len(self.calls)


async def test_a_retry_replays_the_recorded_step_and_the_final_write_deletes_it() -> None:
    ledger = Ledger()
    failures = {"left": 1}
    results: list[Any] = []
    outcomes: list[dict[str, str]] = []
    recorded_before_failure: list[bytes] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        results.append(await ctx.step("charge", ledger.charge, event.id, amount=3))
        assert ctx.journal is not None
        outcomes.append(dict(ctx.journal.outcomes))
        if failures["left"]:
            failures["left"] -= 1
            recorded_before_failure.extend(journal_keys(table))
            raise Flaky("after the charge")
        await reply(event, ctx)

    d, table, pub = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert ledger.calls == ["e1"], "the retry must not charge again"
    assert results == [{"charged": 3, "call": 1}] * 2, "the replay returns the recorded result"
    assert outcomes == [{"charge": "ran"}, {"charge": "replayed"}]
    assert recorded_before_failure == [journal_key("e1", "charge")]
    assert journal_keys(table) == [], "the event's final write deletes its journal"
    assert table["c1"]["state"] == {"n": 1} and len(pub.sent) == 1
    # a redelivery of the handled event is a duplicate: nothing runs, nothing is recorded
    assert await d.handle(record(id="e1")) == "duplicate"
    assert ledger.calls == ["e1"] and journal_keys(table) == []


async def test_a_step_is_recorded_before_the_handler_goes_on() -> None:
    seen: list[bytes | None] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("a", lambda: {"x": 1})
        seen.append(table.get(PARTITION, journal_key(event.id, "a")))
        await reply(event, ctx)

    d, table, _ = make(handler)
    before = int(time.time() * 1000)
    assert await d.handle(record(id="e1")) == "ok"
    [raw] = seen
    assert raw is not None and json.loads(raw[8:]) == {"x": 1}
    assert int.from_bytes(raw[:8], "little", signed=True) >= before, "8-byte ms stamp first"


async def test_a_dead_lettered_event_deletes_its_journal_entries() -> None:
    ledger = Ledger()

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("charge", ledger.acharge, event.id)
        raise Flaky("always")

    d, table, pub = make(handler, max_attempts=3, park=True)
    assert await d.handle(record(id="e1")) == "dlq"
    assert ledger.calls == ["e1"], "three attempts, one charge"
    assert journal_keys(table) == []
    assert table["c1"]["parked"] is True
    [(topic, _)] = pub.sent
    assert topic == "p.dlq.count"


async def test_a_permanent_failure_dead_letters_at_once_and_deletes_the_journal() -> None:
    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("charge", lambda: 1)
        raise ValueError("a bug: not retried")

    d, table, pub = make(handler)
    assert await d.handle(record(id="e1")) == "dlq"
    assert journal_keys(table) == [] and len(pub.sent) == 1


async def test_step_names_repeat_as_name_2_and_count_again_on_each_attempt() -> None:
    ledger = Ledger()
    attempts: list[list[Any]] = []
    names: list[list[str]] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        got = [await ctx.step("x", ledger.acharge, event.id) for _ in range(3)]
        attempts.append(got)
        assert ctx.journal is not None
        names.append(list(ctx.journal.outcomes))
        if ctx.attempt == 1:
            assert sorted(journal_keys(table)) == sorted(
                journal_key(event.id, s) for s in ("x", "x#2", "x#3")
            )
            raise Flaky("once")
        await reply(event, ctx)

    d, table, _ = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert ledger.calls == ["e1"] * 3
    assert attempts == [[1, 2, 3], [1, 2, 3]], "each name replays its own result"
    assert names == [["x", "x#2", "x#3"]] * 2
    assert journal_keys(table) == []


async def test_an_empty_step_name_is_refused() -> None:
    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("", lambda: 1)

    d, _, pub = make(handler)
    assert await d.handle(record(id="e1")) == "dlq"
    assert codec.header(pub.sent[0][1].headers, H_ERROR_MESSAGE) == b"a step needs a name"


class Quote(BaseModel):
    amount: int
    currency: str = "EUR"


async def test_result_type_gives_the_same_model_on_the_first_run_and_on_a_replay() -> None:
    got: list[Any] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        got.append(await ctx.step("quote", lambda: Quote(amount=5), result_type=Quote))
        got.append(await ctx.step("n", lambda: "7", result_type=int))  # JSON "7" validates as int
        if ctx.attempt == 1:
            raise Flaky("once")
        await reply(event, ctx)

    d, _, _ = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert got == [Quote(amount=5), 7, Quote(amount=5), 7]
    assert all(type(g) is t for g, t in zip(got, [Quote, int, Quote, int], strict=True))


async def test_a_result_that_does_not_fit_result_type_fails_the_step() -> None:
    errors: list[BaseException] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        try:
            await ctx.step("quote", lambda: {"amount": "lots"}, result_type=Quote)
        except ValidationError as exc:
            errors.append(exc)
            raise

    d, table, _ = make(handler)
    assert await d.handle(record(id="e1")) == "dlq"
    assert len(errors) == 1, "a validation error is a bug in the step: not retried"
    assert journal_keys(table) == []


async def test_a_result_that_is_not_json_is_a_step_error_and_is_not_recorded() -> None:
    errors: list[BaseException] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        try:
            await ctx.step("sock", lambda: object())
        except StepError as exc:
            errors.append(exc)
            assert journal_keys(table) == []
            raise

    d, table, pub = make(handler)
    assert await d.handle(record(id="e1")) == "dlq"
    [exc] = errors
    assert "'sock'" in str(exc) and "not JSON-serialisable" in str(exc)
    assert codec.header(pub.sent[0][1].headers, H_ERROR_CLASS) == b"streams.core.journal.StepError"


async def test_a_failing_step_is_not_recorded_and_runs_again() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise Flaky("tool down")
        return "ok"

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        assert await ctx.step("tool", flaky) == "ok"
        await reply(event, ctx)

    d, table, _ = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert len(calls) == 2 and journal_keys(table) == []


async def test_meta_survives_a_failed_attempt_and_the_event() -> None:
    spent: list[int] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        assert ctx.journal is not None
        meta = ctx.journal.meta
        spent.append(meta.get("spent", 0))
        meta["spent"] = meta.get("spent", 0) + 10  # what an LLM call spent, attempt or not
        ctx.journal.touch_meta()
        if ctx.attempt == 1:
            raise Flaky("after spending")
        await reply(event, ctx)

    d, table, _ = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert spent == [0, 10], "the failed attempt's spending is seen by the retry"
    raw = table.get(PARTITION, meta_key("c1"))
    assert raw is not None and json.loads(raw) == {"spent": 20}
    assert await d.handle(record(id="e2", offset=1)) == "ok"
    assert spent == [0, 10, 20, 30]
    assert json.loads(table.get(PARTITION, meta_key("c1")) or b"") == {"spent": 40}
    assert table["c1"]["state"] == {"n": 2}


async def test_meta_is_written_with_the_next_step() -> None:
    at_step: list[Any] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        assert ctx.journal is not None
        ctx.journal.meta["reserved"] = 100
        ctx.journal.touch_meta()
        await ctx.step("llm", lambda: "reply")
        at_step.append(table.get(PARTITION, meta_key(event.subject)))
        await reply(event, ctx)

    d, table, _ = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert at_step == [b'{"reserved": 100}']


async def test_a_batch_journals_each_event_and_deletes_every_entry_with_its_write() -> None:
    ledger = Ledger()
    writes: list[list[bytes]] = []

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("charge", ledger.acharge, event.id)
        await ctx.step("charge", ledger.acharge, event.id)
        await reply(event, ctx)

    d, table, pub = make(handler)
    real_write = table.write

    async def spy(partition: int, batch: Any) -> None:
        writes.append([k for k, v in batch if v is None])
        await real_write(partition, batch)

    table.write = spy  # type: ignore[method-assign]
    outcomes = await d.handle_many([record(id=f"e{i}", offset=i) for i in range(4)])
    assert outcomes == ["ok"] * 4
    assert ledger.calls == [f"e{i}" for i in range(4) for _ in range(2)]
    assert journal_keys(table) == []
    # one durable write for the whole batch (fast handlers), carrying every deletion
    deleted = [k for w in writes for k in w]
    assert sorted(deleted) == sorted(
        journal_key(f"e{i}", s) for i in range(4) for s in ("charge", "charge#2")
    )
    assert len(pub.sent) == 4 and table["c1"]["state"] == {"n": 4}


async def test_a_failure_inside_a_batch_replays_on_the_slow_path() -> None:
    ledger = Ledger()

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("charge", ledger.acharge, event.id)
        if event.id == "e2" and ctx.attempt == 1:
            raise Flaky("once")
        await reply(event, ctx)

    d, table, pub = make(handler)
    outcomes = await d.handle_many([record(id=f"e{i}", offset=i) for i in range(1, 4)])
    assert outcomes == ["ok"] * 3
    assert ledger.calls == ["e1", "e2", "e3"], "e2's retry on the slow path replayed its charge"
    assert journal_keys(table) == [] and table["c1"]["state"] == {"n": 3}
    assert [json.loads(r.value or b"")["data"]["in_reply_to"] for _, r in pub.sent] == ["e1", "e2", "e3"]


async def test_a_handler_stopped_by_a_gate_replays_its_steps_when_it_starts_over() -> None:
    ledger = Ledger()
    blocked = {"left": 1}

    async def handler(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("charge", ledger.acharge, event.id)
        if blocked["left"]:
            blocked["left"] -= 1
            raise Blocked("circuit open", retry_at=time.monotonic())
        await reply(event, ctx)

    d, table, _ = make(handler)
    assert await d.handle(record(id="e1")) == "ok"
    assert ledger.calls == ["e1"] and journal_keys(table) == []


async def test_a_redelivery_to_a_new_dispatcher_replays_what_the_crashed_one_recorded() -> None:
    """A crash after the step: the table (restored from the changelog) holds the entry, a new
    dispatcher (a new process, a new journal) replays it and then deletes it."""
    ledger = Ledger()

    async def crashes(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("charge", ledger.acharge, event.id)
        raise asyncio.CancelledError  # stands for SIGKILL: nothing after the step runs

    d, table, _ = make(crashes)
    with pytest.raises(asyncio.CancelledError):
        await d.handle(record(id="e1"))
    assert journal_keys(table) == [journal_key("e1", "charge")]

    async def resumed(event: Envelope[Any], ctx: Context[Counter]) -> None:
        await ctx.step("charge", ledger.acharge, event.id)
        await reply(event, ctx)

    d2, _, pub = make(resumed, table=table)
    assert await d2.handle(record(id="e1")) == "ok"
    assert ledger.calls == ["e1"] and journal_keys(table) == [] and len(pub.sent) == 1


# -- the sweep --------------------------------------------------------------------------------
def test_expired_ids_include_old_journal_entries_but_never_meta_or_entities() -> None:
    def entry(event_id: str, step: str, ms: int) -> tuple[bytes, bytes]:
        return journal_key(event_id, step), stamp(ms) + b'{"r":1}'

    entries = sorted(
        [
            (id_key("old"), stamp(100)),
            (id_key("new"), stamp(900)),
            entry("gone", "llm", 100),
            entry("gone", "llm#2", 499),
            entry("live", "llm", 500),
            entry("live", "tool", 900),
            (meta_key("c1"), json.dumps({"spent": 1}).encode()),  # no stamp: must never be read as one
            (meta_key("\x00\x00"), b"\x00" * 8),  # a meta value that looks like an old stamp
            (str_key("c1"), b"{}"),
        ]
    )
    assert id_key("z") < JOURNAL_PREFIX < META_PREFIX < str_key("a"), "the key order the sweep relies on"
    assert list(expired_ids(entries, 500)) == [
        id_key("old"),
        journal_key("gone", "llm"),
        journal_key("gone", "llm#2"),
    ]


def test_expired_ids_stop_at_the_first_key_past_the_journal() -> None:
    class Once:
        """Entries that fail if read past the first meta key (the sweep must stop there)."""

        def __iter__(self) -> Any:
            yield journal_key("e", "s"), stamp(1) + b"1"
            yield meta_key("c1"), stamp(1)
            raise AssertionError("read past the journal")

    assert list(expired_ids(Once(), 500)) == [journal_key("e", "s")]


async def test_the_journal_writes_through_a_producer_outside_any_transaction(tmp_path: Any) -> None:
    """Under exactly_once a recorded step must outlive the abort of the transaction open when
    the worker died: ``FaustTable.write_now`` sends through the app's plain producer, which
    must not be transactional (Faust gives each transaction a producer of its own)."""
    from streams.adapter.app import create_app

    settings = Settings(data_dir=tmp_path, processing_guarantee="exactly_once", _env_file=None)  # type: ignore[call-arg]
    app: Any = create_app(settings)
    app.in_worker = True  # as ``vigil worker`` runs it: Faust's in_transaction mode
    assert app.in_transaction
    # what the producer's on_start builds (``kafka_producer(app)`` returns it once started)
    producer = app.producer._new_producer()
    try:
        txn = producer._txn_manager
        assert txn is not None, "idempotent in exactly_once mode"
        assert txn.transactional_id is None, "the journal's producer is transactional"
    finally:
        await producer.stop()  # never started: closes its client
