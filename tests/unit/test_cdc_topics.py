"""Database change topics are recognised by name (one per table), so an agent can consume a
table's changes; the demo's welcome agent binds to db.public.customers.v1."""

from __future__ import annotations

import pytest

from streams.core import topics
from streams.core.errors import ConfigError


def test_change_topics_and_types_resolve_by_name() -> None:
    spec = topics.by_name("db.public.orders.v1")
    assert spec.types == tuple(
        f"db.public.orders.{op}" for op in ("created", "updated", "deleted", "read", "truncated")
    )
    assert topics.for_type("db.public.orders.updated.v1").name == "db.public.orders.v1"
    assert topics.for_type("db.sales.order_lines.truncated.v1").name == "db.sales.order_lines.v1"
    for name in ("db.public.v1", "db.public.orders.v2", "dbx.public.orders.v1", "db..orders.v1"):
        with pytest.raises(ConfigError):
            topics.by_name(name)
    with pytest.raises(ConfigError):
        topics.for_type("db.public.orders.exploded.v1")


def test_the_welcome_agent_consumes_created_customers() -> None:
    import agents.welcome  # noqa: F401 - declares welcome_customer
    from streams import runtime

    spec = runtime.agents["welcome_customer"]
    assert (spec.topic, spec.payload.event_type) == (
        "db.public.customers.v1",
        "db.public.customers.created.v1",
    )
