"""Customer events: a sign-up, and what the onboarding fan-out (``agents.onboarding``) derives
from it. Every one is keyed by the customer id."""

from __future__ import annotations

from pydantic import Field

from .payload import Payload
from .registry import registry


@registry.event("customer.signed_up", 1)
class CustomerSignedUpV1(Payload):
    customer_id: str = Field(min_length=1)
    email: str = Field(min_length=3)
    name: str = ""
    company: str = ""
    plan: str = "free"


@registry.event("customer.onboarding.planned", 1)
class CustomerOnboardingPlannedV1(Payload):
    """The onboarding agent's plan for a new customer."""

    customer_id: str = Field(min_length=1)
    signup_id: str = Field(min_length=1, description="id of the customer.signed_up event")
    plan: str


@registry.event("customer.enriched", 1)
class CustomerEnrichedV1(Payload):
    """What the enrichment agent found out about a new customer's company."""

    customer_id: str = Field(min_length=1)
    signup_id: str = Field(min_length=1)
    summary: str


@registry.event("customer.notification.requested", 1)
class CustomerNotificationRequestedV1(Payload):
    """A welcome message the notification agent asks to send."""

    customer_id: str = Field(min_length=1)
    signup_id: str = Field(min_length=1)
    channel: str = "email"
    text: str


CUSTOMER_TYPES = ("customer.signed_up",)
ONBOARDING_TYPES = ("customer.onboarding.planned", "customer.enriched", "customer.notification.requested")
