"""The lag arithmetic and the monitor's failure handling, without a broker (the numbers against a
real broker are checked in tests/integration/test_observability.py)."""

from __future__ import annotations

from streams.observability import metrics
from streams.observability.lag import LagMonitor, partition_lag
from tests.support import free_port


def errors() -> float:
    return metrics.REGISTRY.get_sample_value("vigil_lag_scrape_errors_total") or 0.0


def lag_sample(group: str, topic: str, partition: int) -> float | None:
    labels = {"group": group, "topic": topic, "partition": str(partition)}
    return metrics.REGISTRY.get_sample_value("vigil_consumer_lag_records", labels)


def test_partition_lag() -> None:
    assert partition_lag(7, 0, 10) == 3
    assert partition_lag(10, 0, 10) == 0
    # never committed: the whole partition from the low watermark
    assert partition_lag(None, 4, 10) == 6
    assert partition_lag(-1, 4, 10) == 6
    # committed below the low watermark (retention deleted records): only what is left counts
    assert partition_lag(2, 4, 10) == 6
    assert partition_lag(12, 0, 10) == 0


def test_lag_by_group_and_topic_and_largest_downstream_lag() -> None:
    monitor = LagMonitor("127.0.0.1:1", "own", ["in"], ["out"])
    assert monitor.lag("own", "in") is None
    assert monitor.downstream_lag("out") is None
    monitor.snapshot = {
        ("own", "in"): {0: 3, 1: 4},
        ("own", "out"): {0: 100},  # our own group reading what it emits is not downstream
        ("a", "out"): {0: 5, 1: 0},
        ("b", "out"): {0: 1, 1: 8},
    }
    assert monitor.lag("own", "in") == 7
    assert monitor.downstream_groups("out") == ["a", "b"]
    assert monitor.downstream_lag("out") == 9


async def test_unreachable_broker_counts_an_error_and_keeps_the_last_values() -> None:
    monitor = LagMonitor(f"127.0.0.1:{free_port()}", "g", ["t"], [], request_timeout=2)
    monitor.snapshot = {("g", "t"): {0: 42}}
    monitor._export(monitor.snapshot)
    before = errors()

    assert await monitor.tick() is False
    assert await monitor.tick() is False

    assert errors() == before + 2
    assert monitor.lag("g", "t") == 42
    assert lag_sample("g", "t", 0) == 42
    assert monitor.refreshed_at is None
    await monitor.close()
    assert lag_sample("g", "t", 0) is None  # a stopped monitor leaves no stale series
