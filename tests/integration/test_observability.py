"""The worker's /healthz, /readyz and /metrics, and its consumer-lag series, on the real broker
with the probe agent in worker processes. Lag is held still by slow records at the head of
every partition (the committed offset cannot pass them), so the exported numbers can be
compared exactly with the broker's end and committed offsets."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.core.groups import agent_group
from streams.core.settings import Settings
from streams.observability.lag import LagMonitor
from tests.support import (
    REPO,
    Cluster,
    Proc,
    committed_offsets,
    end_offsets,
    free_port,
    keys_on_partition,
    start_process,
    wait_for,
)

from .chat import message
from .guarantees import IN, OUT, PROBE, wait_replied

pytestmark = pytest.mark.kafka

LagSeries = dict[tuple[str, int], float]


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body; 0 while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of ``name`` on the worker's /metrics; none while it does not listen yet."""
    status, body = http_get(port, "/metrics")
    assert status in (0, 200), f"/metrics answered {status}"
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == name
    ]


def lag_series(port: int, group: str) -> LagSeries:
    return {
        (labels["topic"], int(labels["partition"])): value
        for labels, value in scrape(port, "vigil_consumer_lag_records")
        if labels["group"] == group
    }


def worker_ready(port: int) -> float:
    [(_, value)] = scrape(port, "vigil_worker_ready")
    return value


def expected(topic: str, lags: dict[int, int]) -> LagSeries:
    return {(topic, p): float(n) for p, n in lags.items()}


def produce_slow_heads(cluster: Cluster, partitions: int = 6) -> None:
    """A slow record at offset 0 of every partition of IN, then more records behind them."""
    heads = [keys_on_partition("head-", p, partitions, 1)[0] for p in range(partitions)]
    cluster.produce(IN, [message(k, "slow head", id=f"{k}-1") for k in heads])
    cluster.produce(IN, [message(f"s{i}", "m", id=f"s{i}-1") for i in range(30)])


def commit(settings: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` like a downstream consumer that has read that far."""

    async def go() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()

    asyncio.run(go())


def test_readyz_is_503_until_assigned_and_during_a_rebalance(cluster: Cluster, tmp_path: Path) -> None:
    """Worker b starts while worker a drains a slow record (up to VIGIL_DRAIN_TIMEOUT): b answers
    /healthz at once but is not ready until the rebalance a is holding up completes; a is not
    ready while it rebalances."""
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.create_topics(IN)
    env = {"PROBE_SLOW_MS": "10000", "PROBE_MARK_DIR": str(marks), "VIGIL_DRAIN_TIMEOUT": "4"}
    port_a, port_b = free_port(), free_port()
    a = cluster.start_worker("a", args=PROBE, VIGIL_METRICS_PORT=str(port_a), **env)
    wait_for(lambda: http_get(port_a, "/healthz")[0] == 200, 60, "a: /healthz")
    wait_for(lambda: http_get(port_a, "/readyz")[0] == 200, 60, "a: /readyz 200")
    assert worker_ready(port_a) == 1

    cluster.produce(IN, [message("s1", "slow one", id="slow-1")])
    wait_for(lambda: (marks / "slow-1").exists(), 60, "a: the slow handler to start")
    b = cluster.start_worker("b", args=PROBE, VIGIL_METRICS_PORT=str(port_b), **env)
    wait_for(lambda: http_get(port_b, "/healthz")[0] == 200, 60, "b: /healthz")
    status, body = http_get(port_b, "/readyz")
    assert status == 503, body
    assert "not ready: " in body
    assert worker_ready(port_b) == 0

    seen_a: list[tuple[int, str]] = []

    def both_ready() -> bool:
        for p in (a, b):
            assert p.alive(), f"{p.name} exited:\n{p.log()[-3000:]}"
        seen_a.append(http_get(port_a, "/readyz"))
        return seen_a[-1][0] == 200 and http_get(port_b, "/readyz")[0] == 200

    wait_for(both_ready, 90, "both workers ready after the rebalance", interval=0.05)
    assert (503, "not ready: rebalancing\n") in seen_a, sorted(set(seen_a))
    assert worker_ready(port_a) == worker_ready(port_b) == 1
    assert http_get(port_b, "/healthz") == (200, "ok\n")


@pytest.mark.slow
def test_own_group_lag_matches_the_broker_grows_and_falls_to_zero(cluster: Cluster) -> None:
    settings = cluster.settings()
    topic, group = settings.topic(IN), agent_group(settings, "probe")
    cluster.create_topics(IN)
    produce_slow_heads(cluster)
    port = free_port()
    env = {"VIGIL_METRICS_PORT": str(port), "VIGIL_LAG_INTERVAL": "0.5", "PROBE_SLOW_MS": "15000"}
    worker = cluster.start_worker(args=PROBE, **env)

    def lag_is(want: LagSeries) -> bool:
        assert worker.alive(), worker.log()[-3000:]
        return lag_series(port, group) == want

    # Nothing can be committed past the slow heads: the lag is every record of each partition.
    ends = end_offsets(settings, topic)
    assert sum(ends.values()) == 36
    wait_for(lambda: lag_is(expected(topic, ends)), 60, f"lag == end offsets {ends}")

    cluster.produce(IN, [message(f"t{i}", "m", id=f"t{i}-1") for i in range(30)])
    grown = end_offsets(settings, topic)
    assert sum(grown.values()) == 66
    wait_for(lambda: lag_is(expected(topic, grown)), 30, f"lag to grow to {grown}")

    # The heads finish, everything is committed, the lag falls to 0.
    wait_for(lambda: lag_is(expected(topic, dict.fromkeys(grown, 0))), 90, "lag 0 on every partition")
    assert committed_offsets(settings, topic) == grown
    assert [v for _, v in scrape(port, "vigil_lag_scrape_errors_total")] == [0]


def test_downstream_group_lag_on_the_emitted_topic(cluster: Cluster) -> None:
    settings = cluster.settings()
    out, downstream = settings.topic(OUT), f"{cluster.prefix}downstream"
    cluster.create_topics(IN, OUT)
    # The downstream group exists before the worker starts (groups are rediscovered every 30 s).
    commit(settings, downstream, {TopicPartition(out, 0): 0})
    cluster.produce(
        IN, [message(k, "m", id=f"{k}-1") for p in range(6) for k in keys_on_partition("k-", p, 6, 4)]
    )
    port = free_port()
    worker = cluster.start_worker(args=PROBE, VIGIL_METRICS_PORT=str(port), VIGIL_LAG_INTERVAL="0.5")
    wait_replied(cluster, 24, [worker])

    ends = end_offsets(settings, out)
    assert sum(ends.values()) >= 24 and all(ends.values()), ends
    # Even partitions read half way; odd ones never committed count whole.
    read = {p: ends[p] // 2 for p in ends if p % 2 == 0}
    commit(settings, downstream, {TopicPartition(out, p): n for p, n in read.items()})
    want = expected(out, {p: ends[p] - read.get(p, 0) for p in ends})
    wait_for(lambda: lag_series(port, downstream) == want, 60, f"downstream lag {want}")
    # the worker's own group reads only its source topic
    assert {t for t, _ in lag_series(port, agent_group(settings, "probe"))} == {settings.topic(IN)}

    # The number backpressure reads, from a monitor of our own against the same broker.
    async def read_lag() -> tuple[int | None, int | None]:
        monitor = LagMonitor(
            settings.kafka_bootstrap, agent_group(settings, "probe"), [settings.topic(IN)], [out]
        )
        try:
            await monitor.refresh()
            return monitor.lag(downstream, out), monitor.downstream_lag(out)
        finally:
            await monitor.close()

    total = int(sum(want.values()))
    assert asyncio.run(read_lag()) == (total, total)


@pytest.mark.slow
def test_prometheus_scrapes_the_worker_and_serves_its_lag(cluster: Cluster, tmp_path: Path) -> None:
    """A real Prometheus (Debian's binary) with the project's config and alert rules, pointed at
    one worker every second; the lag read back through its HTTP API is the broker's."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus not found on PATH: install Debian's `prometheus` package (`make deps` does)")
    settings = cluster.settings()
    topic = settings.topic(IN)
    cluster.create_topics(IN)
    produce_slow_heads(cluster)
    port = free_port()
    env = {"VIGIL_METRICS_PORT": str(port), "VIGIL_LAG_INTERVAL": "0.5", "PROBE_SLOW_MS": "600000"}
    worker = cluster.start_worker(args=PROBE, VIGIL_DRAIN_TIMEOUT="2", **env)
    want = expected(topic, end_offsets(settings, topic))
    group = agent_group(settings, "probe")
    wait_for(lambda: worker.alive() and lag_series(port, group) == want, 60, "worker lag")

    prom = start_prometheus(exe, port, tmp_path)
    cluster.procs.append(prom.proc)

    def prom_lag() -> LagSeries:
        assert prom.proc.alive(), prom.proc.log()[-3000:]
        query = f'vigil_consumer_lag_records{{group="{group}"}}'
        return {
            (r["metric"]["topic"], int(r["metric"]["partition"])): float(r["value"][1])
            for r in prom.query(query)
        }

    wait_for(lambda: prom_lag() == want, 60, f"Prometheus to serve the lag {want}", interval=0.5)
    [up] = prom.query(f'up{{job="vigil-worker",instance="127.0.0.1:{port}"}}')
    assert up["value"][1] == "1"
    assert prom.proc.stop() == 0


class PrometheusProc:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def ready(self) -> bool:
        assert self.proc.alive(), self.proc.log()[-3000:]
        return http_get(self.port, "/-/ready")[0] == 200


def start_prometheus(exe: str, worker_port: int, tmp: Path) -> PrometheusProc:
    """ops/prometheus/prometheus.yml with its alert rules, scraping only ``worker_port``, every 1 s."""
    ops = REPO / "ops/prometheus"
    config = yaml.safe_load((ops / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ops / f) for f in config["rule_files"]]
    [job] = config["scrape_configs"]
    job.pop("file_sd_configs")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    args = [
        exe,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    prom = PrometheusProc(start_process(f"prometheus-{port}", args, {}, tmp / "prometheus.log"), port)
    wait_for(prom.ready, 60, "Prometheus /-/ready")
    return prom
