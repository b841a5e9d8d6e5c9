"""A database change waking an agent: ``welcome_customer`` handles each new row of
``public.customers`` (``db.public.customers.created.v1`` from ``vigil source postgres`` or
``vigil source debezium``), drafts a welcome note with the LLM and logs it.

Not declared by ``import agents``: run it with ``vigil worker -m agents.welcome --agents
welcome_customer`` (``make demo`` does)."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from schemas import Envelope
from schemas.cdc import ChangeV1, change_models
from streams import Context, runtime

log = logging.getLogger(__name__)

CustomerCreated = change_models("public", "customers")["c"]


class WelcomeState(BaseModel):
    welcomed: int = 0
    last_note: str = ""


@runtime.agent(CustomerCreated, state=WelcomeState)
async def welcome_customer(event: Envelope[ChangeV1], ctx: Context[WelcomeState]) -> None:
    row = event.data.after or {}
    name = row.get("name") or row.get("email") or event.subject
    reply = await ctx.llm.complete(
        [{"role": "user", "content": f"Write a one-line welcome note for our new customer {name}."}]
    )
    ctx.state.welcomed += 1
    ctx.state.last_note = reply.text
    log.info("welcome_customer: customer %s (%s) welcomed: %s", event.subject, name, reply.text)
