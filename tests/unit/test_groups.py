"""Per-agent consumer groups: their names, the lag monitor's own groups, readiness over the
apps of one worker (no broker)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streams.adapter.observability import Readiness
from streams.core.groups import agent_group, agent_groups, legacy_group
from streams.core.settings import Settings
from streams.observability.lag import LagMonitor


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)


def test_an_agents_group_is_the_prefixed_app_id_dot_agent() -> None:
    s = settings(topic_prefix="dev.", app_id="shop")
    assert agent_group(s, "onboarding") == "dev.shop.onboarding"
    assert legacy_group(s) == "dev.shop" == s.group_id  # the changelog prefix is unchanged
    assert agent_groups(s, ["a", "b"]) == {"a": "dev.shop.a", "b": "dev.shop.b"}


def test_lag_monitor_reads_each_agents_group_on_its_own_topics() -> None:
    monitor = LagMonitor(
        "127.0.0.1:1",
        "vigil",
        ["in"],
        ["out"],
        groups={"vigil.a": ["in"], "vigil.b": ["in", "other"]},
    )
    assert monitor.groups == {"vigil.a": frozenset({"in"}), "vigil.b": frozenset({"in", "other"})}
    monitor.snapshot = {
        ("vigil.a", "out"): {0: 5},
        ("vigil.b", "out"): {0: 9},
        ("downstream", "out"): {0: 3},
    }
    # the worker's own groups are never "downstream" of it
    assert monitor.downstream_groups("out") == ["downstream"]
    assert monitor.downstream_lag("out") == 3


def test_a_monitor_without_groups_keeps_its_single_group() -> None:
    monitor = LagMonitor("127.0.0.1:1", "own", ["in"], ["out"])
    assert monitor.groups == {"own": frozenset({"in"})}


class FakeRecovery:
    def __init__(self, done: bool) -> None:
        self.completed = asyncio.Event()
        if done:
            self.completed.set()


def fake_app(group: str, *, recovered: bool = True, rebalancing: bool = False) -> Any:
    return SimpleNamespace(
        should_stop=False,
        rebalancing=rebalancing,
        in_recovery=False,
        tables=SimpleNamespace(recovery=FakeRecovery(recovered)),
        vigil_group_id=group,
        conf=SimpleNamespace(id="vigil"),
    )


def test_a_worker_is_ready_when_every_agents_app_is() -> None:
    a, b = fake_app("vigil.a"), fake_app("vigil.b", recovered=False)
    readiness = Readiness(a, b)
    assert readiness.reason() == "vigil.b: waiting for the first partition assignment"
    b.tables.recovery.completed.set()
    assert readiness.ready
    a.rebalancing = True
    assert readiness.reason() == "vigil.a: rebalancing"
    a.rebalancing = False
    readiness.checks.append(lambda: "stalled partitions: t[0] (recover)")
    assert readiness.reason() == "stalled partitions: t[0] (recover)"


def test_one_app_reads_as_before() -> None:
    assert Readiness(fake_app("g", recovered=False)).reason() == "waiting for the first partition assignment"
