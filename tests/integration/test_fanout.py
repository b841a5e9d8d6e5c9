"""The onboarding fan-out on the real broker: three agents on ``customers.v1``, each its own
consumer group in one worker process. One agent's LLM fails every call until its circuit opens;
the other two keep their normal speed, its lag alone grows, and once the fault clears it
handles every sign-up too (nothing lost, nothing twice)."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest

from schemas import RawEnvelope
from streams.core import codec
from streams.core.codec import EncodedRecord
from streams.core.groups import agent_group
from tests.support import Cluster, free_port, wait_for

from .test_observability import scrape

pytestmark = pytest.mark.kafka

IN = "customers.v1"
OUT = "customers.onboarding.v1"
AGENTS = ("onboarding", "enrichment", "notification")
HEALTHY = ("onboarding", "enrichment")
FAILING = "notification"
TYPE_OF = {
    "onboarding": "customer.onboarding.planned.v1",
    "enrichment": "customer.enriched.v1",
    "notification": "customer.notification.requested.v1",
}
#: the bound on one sign-up's handling by a healthy agent (produce -> its output acknowledged):
#: the fake LLM answers in 50 ms; with the circuit of a sibling open on the same topic this
#: used to be the circuit's whole reset time (12 s here) for every agent on the topic
BOUND_S = 5.0


def signup(customer: str) -> EncodedRecord:
    env = RawEnvelope(
        id=str(uuid.uuid4()),
        source="tests",
        type="customer.signed_up.v1",
        subject=customer,
        data={"customer_id": customer, "email": f"{customer}@example.com", "company": "Acme"},
    )
    return codec.encode(env)


def outputs(cluster: Cluster) -> dict[str, list[tuple[str, float]]]:
    """Per agent, (signup id, output record timestamp in s) of each output, in log order."""
    out: dict[str, list[tuple[str, float]]] = defaultdict(list)
    by_type = {t: a for a, t in TYPE_OF.items()}
    for rec in cluster.read(OUT):
        env = json.loads(rec.value or b"{}")
        assert rec.timestamp_ms is not None
        out[by_type[env["type"]]].append((env["data"]["signup_id"], rec.timestamp_ms / 1000))
    return out


def produced_at(cluster: Cluster) -> dict[str, float]:
    """Sign-up id -> the time its record was appended to customers.v1."""
    return {json.loads(r.value or b"{}")["id"]: (r.timestamp_ms or 0) / 1000 for r in cluster.read(IN)}


def lag_of(port: int, group: str, topic: str) -> float | None:
    found = [
        v
        for labels, v in scrape(port, "vigil_consumer_lag_records")
        if labels["group"] == group and labels["topic"] == topic
    ]
    return sum(found) if found else None


def circuit_paused(port: int, agent: str) -> float:
    return sum(
        v
        for labels, v in scrape(port, "vigil_paused_partitions")
        if labels["agent"] == agent and labels["reason"] == "circuit_open"
    )


def handling_times(
    done: list[tuple[str, float]], produced: dict[str, float], ids: set[str]
) -> dict[str, float]:
    return {sid: round(at - produced[sid], 3) for sid, at in done if sid in ids}


def test_one_agents_open_circuit_does_not_slow_its_siblings_and_loses_nothing(cluster: Cluster) -> None:
    settings = cluster.settings()
    cluster.create_topics(IN)
    llm = cluster.start_fake_llm()
    llm.control(latency_ms=50, fail_models="fake-failing")  # the notification agent's model (below)
    port = free_port()
    worker = cluster.start_worker(
        args=["--agents", ",".join(AGENTS)],
        VIGIL_LLM_API_BASE=llm.api_base,
        VIGIL_AGENT__NOTIFICATION__MODEL="openai/fake-failing",
        VIGIL_LLM_NUM_RETRIES="0",
        VIGIL_LLM_CIRCUIT_FAILURES="3",
        VIGIL_LLM_CIRCUIT_RESET="12",
        VIGIL_METRICS_PORT=str(port),
        VIGIL_LAG_INTERVAL="0.5",
    )
    first = [signup(f"c-{i}") for i in range(12)]
    cluster.produce(IN, first)
    ids_first = {json.loads(r.value or b"{}")["id"] for r in first}

    # Wave 1: the healthy agents handle it; the failing one opens its circuit.
    cluster.wait_records(OUT, 2 * len(first), procs=[worker], timeout=90)
    wait_for(lambda: circuit_paused(port, FAILING) > 0, 60, "the notification agent's circuit to open")
    opened_at = time.time()

    # Wave 2, produced while that circuit is open: the siblings on the same topic take each
    # sign-up at their normal speed.
    second = [signup(f"d-{i}") for i in range(12)]
    cluster.produce(IN, second)
    ids_second = {json.loads(r.value or b"{}")["id"] for r in second}
    cluster.wait_records(OUT, 2 * (len(first) + len(second)), procs=[worker], timeout=60)
    produced = produced_at(cluster)
    done = outputs(cluster)
    times = {a: handling_times(done[a], produced, ids_second) for a in HEALTHY}
    wave2 = sorted(produced[s] for s in ids_second)
    stamps: dict[str, Any] = {
        "circuit_open_seen_at": round(opened_at, 3),
        "wave2_produced": [round(wave2[0], 3), round(wave2[-1], 3)],
        **{
            f"{a}_done": [
                round(min(t for s, t in done[a] if s in ids_second), 3),
                round(max(t for s, t in done[a] if s in ids_second), 3),
            ]
            for a in HEALTHY
        },
        **{
            f"{a}_handling_s": [min(times[a].values(), default=None), max(times[a].values(), default=None)]
            for a in HEALTHY
        },
    }
    for agent in HEALTHY:
        assert set(times[agent]) == ids_second, f"{agent} missed wave-2 sign-ups: {stamps}"
        slowest = max(times[agent].values())
        assert slowest < BOUND_S, f"{agent} took {slowest:.2f}s for a sign-up (bound {BOUND_S}s): {stamps}"
    assert done[FAILING] == [], f"notification emitted with its LLM failing: {done[FAILING]}"
    assert circuit_paused(port, FAILING) > 0, f"the circuit closed before wave 2 was handled: {stamps}"
    print("fan-out timestamps:", json.dumps(stamps))

    # Per-agent lag: only the failing agent's group is behind on customers.v1.
    total = len(first) + len(second)
    topic = settings.topic(IN)

    def lags() -> dict[str, float | None]:
        return {a: lag_of(port, agent_group(settings, a), topic) for a in AGENTS}

    wait_for(
        lambda: lags() == {"onboarding": 0.0, "enrichment": 0.0, FAILING: float(total)},
        30,
        f"lag 0/0/{total} of onboarding/enrichment/notification",
    )

    # The fault clears: after the circuit's probe the failing agent handles every sign-up.
    llm.control(fail_models="")
    wait_for(
        lambda: len(outputs(cluster)[FAILING]) >= total and worker.alive(),
        90,
        "the notification agent to catch up",
        interval=0.5,
    )
    done = outputs(cluster)
    for agent in AGENTS:
        got = [sid for sid, _ in done[agent]]
        assert sorted(got) == sorted(ids_first | ids_second), f"{agent}: lost or doubled sign-ups"
    for agent in AGENTS:
        assert cluster.read(f"dlq.{agent}") == [], f"dlq.{agent} is not empty"
    wait_for(lambda: lags() == dict.fromkeys(AGENTS, 0.0), 30, "every agent's lag back to 0")
    caught_up = max(t for _, t in done[FAILING])
    print(f"notification caught up {caught_up - opened_at:.1f}s after its circuit opened")
    assert worker.stop() == 0
