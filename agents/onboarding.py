"""The onboarding fan-out: three agents on ``customers.v1`` (``customer.signed_up.v1``, key =
customer id), each its own consumer group (``streams.core.groups``), so one of them failing,
slow or paused (an open LLM circuit, a spent budget, a backlog) never holds back the others.

- ``onboarding`` drafts an onboarding plan: ``customer.onboarding.planned.v1``;
- ``enrichment`` summarises what the sign-up says about the customer's company:
  ``customer.enriched.v1``;
- ``notification`` writes the welcome message: ``customer.notification.requested.v1``.

All three emit to ``customers.onboarding.v1`` and make one LLM call per sign-up (journaled: a
redelivery neither re-calls nor re-bills it). Not run by a plain ``vigil worker``: start them
with ``vigil worker --agents onboarding,enrichment,notification``. Each agent's model and prompt
can be set on its own (``VIGIL_AGENT__NOTIFICATION__MODEL=...``, ``agents.config``).
"""

from __future__ import annotations

from pydantic import BaseModel

from schemas import (
    CustomerEnrichedV1,
    CustomerNotificationRequestedV1,
    CustomerOnboardingPlannedV1,
    CustomerSignedUpV1,
    Envelope,
    InvalidPayloadError,
)
from streams import Context, runtime

from .llm import agent_prompt


class SignupState(BaseModel):
    """Per customer and agent: sign-ups handled (a re-sent sign-up with a new id counts again)."""

    signups: int = 0
    last: str = ""


def _check(event: Envelope[CustomerSignedUpV1]) -> CustomerSignedUpV1:
    data = event.data
    if event.subject != data.customer_id:
        raise InvalidPayloadError(
            f"subject {event.subject!r} must equal data.customer_id {data.customer_id!r}"
        )
    return data


def _describe(data: CustomerSignedUpV1) -> str:
    who = data.name or data.email
    company = f" of {data.company}" if data.company else ""
    return f"{who}{company} ({data.email}) signed up for the {data.plan} plan."


async def _ask(ctx: Context[SignupState], default_prompt: str, text: str) -> str:
    """One LLM call (journaled as step ``llm``); the agent's prompt can be configured
    (``VIGIL_AGENT__<NAME>__PROMPT``)."""
    messages = [
        {"role": "system", "content": agent_prompt(ctx, default_prompt)},
        {"role": "user", "content": text},
    ]
    reply = await ctx.llm.complete(messages)
    return str(reply.text)


def _counted(ctx: Context[SignupState], event: Envelope[CustomerSignedUpV1]) -> None:
    ctx.state.signups += 1
    ctx.state.last = event.id


@runtime.agent(CustomerSignedUpV1, state=SignupState, emits=[CustomerOnboardingPlannedV1], default=False)
async def onboarding(event: Envelope[CustomerSignedUpV1], ctx: Context[SignupState]) -> None:
    data = _check(event)
    plan = await _ask(ctx, "Draft a three-step onboarding plan for this new customer.", _describe(data))
    _counted(ctx, event)
    await ctx.emit(CustomerOnboardingPlannedV1(customer_id=data.customer_id, signup_id=event.id, plan=plan))


@runtime.agent(CustomerSignedUpV1, state=SignupState, emits=[CustomerEnrichedV1], default=False)
async def enrichment(event: Envelope[CustomerSignedUpV1], ctx: Context[SignupState]) -> None:
    data = _check(event)
    summary = await _ask(
        ctx, "Say in one line what kind of company this customer works for.", _describe(data)
    )
    _counted(ctx, event)
    await ctx.emit(CustomerEnrichedV1(customer_id=data.customer_id, signup_id=event.id, summary=summary))


@runtime.agent(CustomerSignedUpV1, state=SignupState, emits=[CustomerNotificationRequestedV1], default=False)
async def notification(event: Envelope[CustomerSignedUpV1], ctx: Context[SignupState]) -> None:
    data = _check(event)
    text = await _ask(ctx, "Write a two-line welcome email to this new customer.", _describe(data))
    _counted(ctx, event)
    await ctx.emit(
        CustomerNotificationRequestedV1(customer_id=data.customer_id, signup_id=event.id, text=text)
    )
