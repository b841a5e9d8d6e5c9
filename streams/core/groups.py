"""Consumer group names: every agent is its own consumer group.

The group of agent ``name`` is ``<VIGIL_TOPIC_PREFIX><VIGIL_APP_ID>.<name>`` (``vigil.support``),
so its offsets, lag, pauses, retries and dead letters are its own: one agent's open circuit or
backlog never holds back another agent reading the same topic. The app id itself is unchanged and
still prefixes the changelog topics (``<app id>-<agent>-state-changelog``), so tables keep their
data across the move from the single shared group (the app id) of earlier versions; ``vigil
groups migrate`` copies that group's committed offsets to the agents' groups before their first
start (``streams.kafka.groups``).
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.core.settings import Settings


def agent_group(settings: Settings, agent: str) -> str:
    """The consumer group of ``agent`` (also the prefix of its exactly-once transactional ids)."""
    return f"{settings.group_id}.{agent}"


def legacy_group(settings: Settings) -> str:
    """The group every agent of a worker shared before per-agent groups (the app id)."""
    return settings.group_id


def agent_groups(settings: Settings, agents: Iterable[str]) -> dict[str, str]:
    """Agent name -> its group."""
    return {name: agent_group(settings, name) for name in agents}
