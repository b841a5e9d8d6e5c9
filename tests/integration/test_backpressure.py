"""Backpressure on the real broker: each trigger (in-flight limit, open LLM circuit, spent token
budget, lagging downstream group) pauses the agent's partitions and resumes them, and no
record is lost or dead-lettered on the way. Pauses are read from the worker's /metrics
(``vigil_paused_partitions{reason}``); losses from the topics."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from tests.support import Cluster, end_offsets, free_port, wait_for

from .chat import message
from .guarantees import IN, OUT, PROBE, assert_exact_sequences, conversations, ids_of, rounds, wait_replied
from .test_observability import commit, scrape

pytestmark = pytest.mark.kafka


def paused(port: int, reason: str) -> float:
    return sum(v for labels, v in scrape(port, "vigil_paused_partitions") if labels["reason"] == reason)


class PauseWatch:
    """Polls the worker's paused-partitions gauge for one reason; remembers the peak."""

    def __init__(self, port: int, reason: str) -> None:
        self.port, self.reason, self.peak = port, reason, 0.0

    def now(self) -> float:
        value = paused(self.port, self.reason)
        self.peak = max(self.peak, value)
        return value


def settled_count(cluster: Cluster, polls: int = 5) -> int:
    """The number of replies once it stopped changing for ``polls`` reads in a row."""
    seen: list[int] = []

    def stable() -> int | None:
        seen.append(len(cluster.read(OUT)))
        tail = seen[-polls:]
        return tail[0] if len(tail) == polls and len(set(tail)) == 1 else None

    return wait_for(stable, 60, "the reply count to settle", interval=0.3)


def produce_support(cluster: Cluster, n: int, prefix: str) -> dict[str, list[str]]:
    cluster.create_topics(IN)
    cluster.produce(IN, [message(f"{prefix}{i}", f"hello {i}", id=f"{prefix}{i}-1") for i in range(n)])
    return {f"{prefix}{i}": [f"{prefix}{i}-1"] for i in range(n)}


def test_in_flight_limit_pauses_and_resumes_without_loss(cluster: Cluster) -> None:
    port = free_port()
    convs = conversations([f"f{i}" for i in range(30)], 10)
    cluster.create_topics(IN)
    cluster.produce(IN, rounds(convs, 0, 10))
    env = {"PROBE_LATENCY_MS": "30", "PROBE_CONCURRENCY": "2", "PROBE_MAX_BUFFERED": "10"}
    worker = cluster.start_worker("a", args=PROBE, VIGIL_METRICS_PORT=str(port), **env)
    watch = PauseWatch(port, "in_flight")
    wait_for(lambda: watch.now() > 0, 60, "the in-flight limit to pause fetching", interval=0.1)
    wait_replied(cluster, 300, [worker])
    wait_for(lambda: watch.now() == 0, 30, "fetching to resume once the buffer drained")
    assert_exact_sequences(cluster, ids_of(convs))
    assert cluster.read("dlq.probe") == []


def test_open_circuit_pauses_instead_of_dead_lettering(cluster: Cluster) -> None:
    llm = cluster.start_fake_llm()
    llm.control(error_rate=1.0, error_status=500)
    port = free_port()
    expected = produce_support(cluster, 12, "c")
    env = {
        "VIGIL_LLM_API_BASE": llm.api_base,
        "VIGIL_LLM_NUM_RETRIES": "0",
        "VIGIL_LLM_CIRCUIT_FAILURES": "2",
        "VIGIL_LLM_CIRCUIT_RESET": "1",
        "VIGIL_METRICS_PORT": str(port),
    }
    worker = cluster.start_worker("a", **env)
    watch = PauseWatch(port, "circuit_open")
    wait_for(lambda: watch.now() > 0, 60, "the open circuit to pause fetching", interval=0.1)
    assert [v for _, v in scrape(port, "vigil_llm_circuit_state")] in ([2.0], [1.0])
    failing_calls = llm.stats().get("error", 0)
    assert failing_calls >= 2
    llm.control(error_rate=0.0)
    wait_replied(cluster, 12, [worker])
    wait_for(lambda: watch.now() == 0, 30, "fetching to resume once the circuit closed")
    assert_exact_sequences(cluster, expected)
    assert cluster.read("dlq.support") == [], "an open circuit must hold records, not dead-letter them"


def test_spent_token_budget_pauses_until_the_window_rolls_over(cluster: Cluster) -> None:
    port = free_port()
    expected = produce_support(cluster, 10, "b")
    env = {
        # one call of the support agent costs ~40 tokens: a 2 s window admits about two calls
        "VIGIL_LLM_AGENT_TOKENS_PER_WINDOW": "60",
        "VIGIL_LLM_BUDGET_WINDOW": "2",
        "VIGIL_CONCURRENCY": "1",
        "VIGIL_METRICS_PORT": str(port),
    }
    worker = cluster.start_worker("a", **env)
    watch = PauseWatch(port, "budget")
    wait_for(lambda: watch.now() > 0, 60, "the spent budget to pause fetching", interval=0.1)
    wait_replied(cluster, 10, [worker], timeout=90)
    wait_for(lambda: watch.now() == 0, 30, "fetching to resume in a fresh window", interval=0.2)
    # The work needed several windows' worth of tokens: the pauses spread it over them.
    tokens = sum(v for _, v in scrape(port, "vigil_llm_tokens_total"))
    assert tokens > 2 * 60, tokens
    assert_exact_sequences(cluster, expected)
    assert cluster.read("dlq.support") == []


def commit_downstream(cluster: Cluster, group: str, offsets: dict[int, int]) -> None:
    commit(
        cluster.settings(), group, {TopicPartition(cluster.prefix + OUT, p): o for p, o in offsets.items()}
    )


def test_lagging_downstream_group_pauses_the_producer_stage(cluster: Cluster) -> None:
    """A group that consumes the agent's output stops at offset 0: once its lag passes the high
    mark the agent pauses; when the group catches up below the low mark the agent resumes."""
    port = free_port()
    downstream = f"{cluster.prefix}downstream"
    convs = conversations([f"d{i}" for i in range(20)], 10)
    cluster.create_topics(IN, OUT)
    commit_downstream(cluster, downstream, dict.fromkeys(range(6), 0))
    cluster.produce(IN, rounds(convs, 0, 10))
    env = {
        "PROBE_LATENCY_MS": "20",
        "PROBE_CONCURRENCY": "4",
        "VIGIL_DOWNSTREAM_LAG_HIGH": "40",
        "VIGIL_DOWNSTREAM_LAG_LOW": "10",
        "VIGIL_LAG_INTERVAL": "0.3",
        "VIGIL_METRICS_PORT": str(port),
    }
    worker = cluster.start_worker("a", args=PROBE, **env)
    watch = PauseWatch(port, "downstream_lag")
    wait_for(lambda: watch.now() > 0, 60, "the downstream lag to pause the agent", interval=0.1)
    # While paused, the running records finish and nothing new starts.
    assert settled_count(cluster) < 200, "the agent should have stopped well before the end"
    assert watch.now() > 0
    # The downstream group catches up: lag 0 < low mark, the agent resumes; repeat to the end.
    while True:
        ends = end_offsets(cluster.settings(), cluster.prefix + OUT)
        commit_downstream(cluster, downstream, ends)
        if sum(ends.values()) >= 200:
            break
        wait_for(
            lambda ends=ends: (
                sum(end_offsets(cluster.settings(), cluster.prefix + OUT).values()) > sum(ends.values())
            ),
            60,
            "the agent to resume after the downstream group caught up",
            interval=0.2,
        )
    wait_replied(cluster, 200, [worker])
    wait_for(lambda: watch.now() == 0, 30, "fetching to run again")
    assert_exact_sequences(cluster, ids_of(convs))
    assert cluster.read("dlq.probe") == []
