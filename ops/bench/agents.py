"""The bench agent: chat messages in, one numbered reply out, no LLM.

Consume, decode, read the entity's state, increment a counter, emit one derived event: the
smallest handler that still runs every step of the pipeline. A message whose text starts with
``sleep=<ms>;`` awaits that long first (``asyncio.sleep`` standing in for an LLM call), so one
worker serves both the no-op and the slow-handler phases. The reply text carries the handler's
start and end times (``time.time()``) and its pid, so the bench reads timing from the topic.

Run with ``vigil worker --agents bench -m ops.bench.agents`` (PYTHONPATH at the repo root).

``bench_journal`` (P7, ``ops.bench.journal``) runs ``BENCH_JOURNAL_STEPS`` journaled no-op
steps per event and replies with each step's time around ``ctx.step`` in milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope
from streams import Context, runtime

SLEEP_PREFIX = "sleep="
PID = os.getpid()
JOURNAL_STEPS = int(os.environ.get("BENCH_JOURNAL_STEPS", "10"))


class BenchState(BaseModel):
    handled: int = 0


def sleep_of(text: str) -> float:
    """Seconds to await for a message text (``sleep=200;...`` -> 0.2), else 0."""
    if not text.startswith(SLEEP_PREFIX):
        return 0.0
    return float(text[len(SLEEP_PREFIX) : text.index(";")]) / 1000


@runtime.agent(ChatMessageReceivedV2, name="bench", state=BenchState, emits=[ChatReplyRequestedV1])
async def bench(event: Envelope[ChatMessageReceivedV2], ctx: Context[BenchState]) -> None:
    started = time.time()
    delay = sleep_of(event.data.text)
    if delay:
        await asyncio.sleep(delay)
    ctx.state.handled += 1
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=event.subject,
            in_reply_to=event.id,
            sequence=ctx.state.handled,
            text=f"{started:.6f} {time.time():.6f} {PID}",
        )
    )


def _noop(n: int) -> int:
    return n


@runtime.agent(
    ChatMessageReceivedV2, name="bench_journal", state=BenchState, emits=[ChatReplyRequestedV1], default=False
)
async def bench_journal(event: Envelope[ChatMessageReceivedV2], ctx: Context[BenchState]) -> None:
    took: list[float] = []
    for n in range(JOURNAL_STEPS):
        started = time.perf_counter()
        await ctx.step("noop", _noop, n)
        took.append(time.perf_counter() - started)
    ctx.state.handled += 1
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=event.subject,
            in_reply_to=event.id,
            sequence=ctx.state.handled,
            text=" ".join(f"{t * 1000:.3f}" for t in took),
        )
    )
