"""Events emitted inside ``ctx.step`` are recorded with its result and emitted again when a
retry replays the step, with the same derived ids (in-memory table, no broker)."""

from __future__ import annotations

import json
from typing import Any

from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope
from streams import Context, Runtime, Settings
from streams.core.dispatcher import Dispatcher
from streams.core.journal import JOURNAL_PREFIX
from streams.core.retry import Retry
from streams.core.state import StateStore
from streams.core.tables import MemoryTable

from .test_dispatcher import PARTITION, Counter, MemoryPublisher, record


async def test_a_replayed_step_emits_what_it_emitted_once_more_with_the_same_ids() -> None:
    runs: list[str] = []
    attempts = 0

    async def notify(ctx: Context[Counter], event: Envelope[Any]) -> int:
        runs.append(event.id)
        await ctx.emit(
            ChatReplyRequestedV1(
                conversation_id=event.subject, in_reply_to=event.id, sequence=1, text="from step"
            )
        )
        return 7

    async def handler(event: Envelope[ChatMessageReceivedV2], ctx: Context[Counter]) -> None:
        nonlocal attempts
        attempts += 1
        got = await ctx.step("notify", notify, ctx, event, result_type=int)
        assert got == 7
        if attempts == 1:
            raise RuntimeError("fails after the step, once")
        await ctx.emit(
            ChatReplyRequestedV1(
                conversation_id=event.subject, in_reply_to=event.id, sequence=2, text="after"
            )
        )

    rt = Runtime()
    rt.agent(
        ChatMessageReceivedV2,
        name="count",
        state=Counter,
        emits=[ChatReplyRequestedV1],
        retry=Retry(max_attempts=3, backoff=0.001, max_backoff=0.001, jitter=0, on=(RuntimeError,)),
    )(handler)
    table = MemoryTable()
    pub = MemoryPublisher()
    settings = Settings(topic_prefix="p.", _env_file=None)  # type: ignore[call-arg]
    d = Dispatcher(rt.agents["count"], settings, StateStore(table, Counter), pub, {})

    assert await d.handle(record(id="e1")) == "ok"
    assert runs == ["e1"] and attempts == 2
    sent = [json.loads(r.value) for _, r in pub.sent]  # type: ignore[arg-type]
    assert [(e["data"]["text"], e["data"]["sequence"]) for e in sent] == [("from step", 1), ("after", 2)]
    assert len({e["id"] for e in sent}) == 2
    assert not [k for k in table.keys(PARTITION) if k.startswith(JOURNAL_PREFIX)]  # pruned
