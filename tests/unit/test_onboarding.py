"""The onboarding fan-out's three agents in memory (streams.testing): each emits its own
derived event for a sign-up, with one journaled LLM call; a redelivery calls nothing again."""

from __future__ import annotations

from typing import Any

import pytest

from agents import onboarding
from agents.testing import ScriptedLLM
from schemas import (
    CustomerEnrichedV1,
    CustomerNotificationRequestedV1,
    CustomerOnboardingPlannedV1,
    CustomerSignedUpV1,
    Payload,
)
from streams import runtime
from streams.core import topics
from streams.testing import AgentHarness

SIGNUP = CustomerSignedUpV1(customer_id="cus-1", email="ann@acme.test", name="Ann", company="Acme")
CASES: list[tuple[Any, type[Payload], str]] = [
    (onboarding.onboarding, CustomerOnboardingPlannedV1, "plan"),
    (onboarding.enrichment, CustomerEnrichedV1, "summary"),
    (onboarding.notification, CustomerNotificationRequestedV1, "text"),
]


@pytest.mark.parametrize(("agent", "emits", "field"), CASES)
async def test_each_agent_emits_its_own_event_once(agent: object, emits: type[Payload], field: str) -> None:
    llm = ScriptedLLM(["the answer"])
    async with AgentHarness(agent, llm=llm) as h:  # type: ignore[arg-type]
        out = await h.send(SIGNUP, subject="cus-1", id="signup-1")
        assert out.outcome == "ok"
        again = await h.redeliver(out)  # same record again (after a crash): dedup, nothing runs
        assert again.outcome == "duplicate"
        [event] = h.emitted(emits)
        assert event.subject == "cus-1" and event.data.signup_id == "signup-1"  # type: ignore[attr-defined]
        assert getattr(event.data, field) == "the answer"
        assert h.state("cus-1").signups == 1
        assert len(llm.requests) == 1
        assert "Ann of Acme (ann@acme.test) signed up for the free plan." in str(llm.requests[0])


def test_the_fan_out_reads_customers_and_writes_its_own_topic() -> None:
    for agent, emits, _ in CASES:
        spec = runtime.agents[agent.__name__]
        assert spec.topics == ("customers.v1",) and not spec.default
        assert topics.for_type(emits.event_type).name == "customers.onboarding.v1"
        assert spec.emits == (emits,)


async def test_a_subject_that_is_not_the_customer_is_dead_lettered() -> None:
    async with AgentHarness(onboarding.onboarding, llm=ScriptedLLM([])) as h:
        out = await h.send(SIGNUP, subject="someone-else")
        assert out.outcome == "dlq"
        assert h.emitted() == []
