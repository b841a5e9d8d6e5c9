"""An agent for the fault-injection tests: chat messages in, numbered replies out, no LLM.

Each worker process is configured by its test through ``PROBE_*`` environment variables, read
at import. The reply text records when and on which attempt the handler ran, so tests can
assert on timing and retries from the topic alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope
from streams import Context, runtime
from streams.core.retry import Retry


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PROBE_{name}", default)


LATENCY = float(_env("LATENCY_MS", "0")) / 1000
SLOW = float(_env("SLOW_MS", "0")) / 1000  # extra delay for texts starting with "slow"
FAIL_PREFIX = _env("FAIL_PREFIX", "")  # subjects starting with this fail transiently ...
FAIL_ATTEMPTS = int(_env("FAIL_ATTEMPTS", "2"))  # ... on their first N attempts
MARK_DIR = _env("MARK_DIR", "")  # a file per event id is created here when its handler starts


class TransientError(Exception):
    retriable = True


class PermanentError(Exception):
    retriable = False


class ProbeState(BaseModel):
    handled: int = 0


@runtime.agent(
    ChatMessageReceivedV2,
    name="probe",
    state=ProbeState,
    emits=[ChatReplyRequestedV1],
    concurrency=int(_env("CONCURRENCY", "0")) or None,
    max_buffered=int(_env("MAX_BUFFERED", "0")) or None,
    retry=Retry(
        max_attempts=int(_env("MAX_ATTEMPTS", "3")),
        backoff=float(_env("BACKOFF", "0.1")),
        jitter=float(_env("JITTER", "0.05")),
    ),
    on_dead_letter="park" if _env("ON_DEAD_LETTER", "continue") == "park" else "continue",
)
async def probe(event: Envelope[ChatMessageReceivedV2], ctx: Context[ProbeState]) -> None:
    started = time.time()
    text = event.data.text
    if MARK_DIR:
        (Path(MARK_DIR) / event.id).touch()
    if LATENCY:
        await asyncio.sleep(LATENCY)
    if SLOW and text.startswith("slow"):
        await asyncio.sleep(SLOW)
    if text.startswith("boom"):
        raise PermanentError(f"boom on {event.id}")
    if FAIL_PREFIX and event.subject.startswith(FAIL_PREFIX) and ctx.attempt <= FAIL_ATTEMPTS:
        raise TransientError(f"transient failure {ctx.attempt} on {event.id}")
    ctx.state.handled += 1
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=event.subject,
            in_reply_to=event.id,
            sequence=ctx.state.handled,
            text=f"started={started:.6f} done={time.time():.6f} attempt={ctx.attempt} pid={os.getpid()}",
        )
    )
