"""An agent for the journal tests: an LLM call, then a tool-like step that POSTs to the test's
fake tool server, then (texts starting with "hold") a wait for a release file, so the test can
SIGKILL the worker after both steps were recorded and before the event completes.

Configured by ``JOURNALED_*`` environment variables, read at import:
``TOOL_URL`` (the tool server), ``MARK_DIR`` (a file ``<event id>.<pid>`` is created there once
the steps returned, and the handler waits for ``MARK_DIR/release``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
from pydantic import BaseModel

import agents  # noqa: F401 - provides the ``llm`` resource
from schemas import ChatMessageReceivedV2, ChatReplyRequestedV1, Envelope
from streams import Context, runtime
from streams.core.retry import Retry

TOOL_URL = os.environ.get("JOURNALED_TOOL_URL", "")
MARK_DIR = os.environ.get("JOURNALED_MARK_DIR", "")


class Charged(BaseModel):
    event_id: str
    charge: int  # the tool server's count of charges of this event


class JournaledState(BaseModel):
    handled: int = 0


async def charge(event_id: str) -> Charged:
    """The side effect: one POST per call, counted by the tool server."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{TOOL_URL}/charge", json={"event_id": event_id}) as response,
    ):
        response.raise_for_status()
        return Charged.model_validate(await response.json())


async def held(event_id: str) -> None:
    marks = Path(MARK_DIR)
    (marks / f"{event_id}.{os.getpid()}").touch()
    while not (marks / "release").exists():  # noqa: ASYNC110 - another process creates it
        await asyncio.sleep(0.05)


@runtime.agent(
    ChatMessageReceivedV2,
    name="journaled",
    state=JournaledState,
    emits=[ChatReplyRequestedV1],
    retry=Retry(max_attempts=5, backoff=0.2, jitter=0.1),
    default=False,
)
async def journaled(event: Envelope[ChatMessageReceivedV2], ctx: Context[JournaledState]) -> None:
    text = event.data.text
    reply = await ctx.llm.complete([{"role": "user", "content": f"summarise {event.id}: {text}"}])
    charged = (await ctx.step("charge", charge, event.id, result_type=Charged)).charge
    if text.startswith("hold") and MARK_DIR:
        await held(event.id)
    ctx.state.handled += 1
    await ctx.emit(
        ChatReplyRequestedV1(
            conversation_id=event.subject,
            in_reply_to=event.id,
            sequence=ctx.state.handled,
            text=f"charge={charged} pid={os.getpid()} {reply.text}",
        )
    )
