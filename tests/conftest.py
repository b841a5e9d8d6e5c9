"""Session fixtures: one real Kafka broker per session and one fake LLM server; every test gets
its own topic prefix. The broker comes from ``VIGIL_TEST_BROKER`` (tests/brokers.py): ``local``
(default: ours, started by ops/kafka/kafka.sh unless one already answers), ``testcontainers``
or ``external``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import kafka
from tests.brokers import BrokerPlan, BrokerSelectionError, select_broker
from tests.support import REPO, Cluster, start_fake_llm, wait_for

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _broker_ready(bootstrap: str) -> bool:
    return asyncio.run(kafka.broker_ready(bootstrap))


def _wait_ready(bootstrap: str, what: str) -> None:
    wait_for(lambda: _broker_ready(bootstrap), 60, f"the group coordinator of {what}", interval=0.5)


def _local_broker(bootstrap: str) -> Iterator[str]:
    """Reuse the broker at ``bootstrap`` if it answers, else start ours on its port (stopped after)."""
    started = False
    if not _broker_ready(bootstrap):
        port = bootstrap.rsplit(":", 1)[1]
        env = {**os.environ, "VIGIL_KAFKA_PORT": port}
        result = subprocess.run(
            [str(REPO / "ops/kafka/kafka.sh"), "up"], env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.fail(f"could not start Kafka: {result.stderr[-2000:]}")
        started = True
    try:
        _wait_ready(bootstrap, f"the local broker at {bootstrap}")
        yield bootstrap
    finally:
        if started:
            subprocess.run([str(REPO / "ops/kafka/kafka.sh"), "down"], check=False)


def _container_broker(image: str) -> Iterator[str]:
    """A throwaway KRaft broker from testcontainers, configured like ops/kafka/kafka.sh's."""
    from testcontainers.community.kafka import KafkaContainer  # lazy: only with Docker

    container = (
        KafkaContainer(image)
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_NUM_PARTITIONS", "6")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )
    container.start()
    try:
        bootstrap = container.get_bootstrap_server()
        _wait_ready(bootstrap, f"the testcontainers broker ({image})")
        yield bootstrap
    finally:
        container.stop()


def _broker_plan() -> BrokerPlan:
    try:
        return select_broker(os.environ)
    except BrokerSelectionError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: one line, no chained traceback


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    plan = _broker_plan()
    if plan.kind == "testcontainers":
        assert plan.image is not None
        yield from _container_broker(plan.image)
        return
    assert plan.bootstrap is not None
    if plan.kind == "external":  # never started or stopped here
        _wait_ready(plan.bootstrap, f"the external broker at {plan.bootstrap}")
        yield plan.bootstrap
        return
    yield from _local_broker(plan.bootstrap)


@pytest.fixture(scope="session")
def fake_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    llm = start_fake_llm(tmp_path_factory.mktemp("fake-llm"), dict(os.environ))
    yield llm.api_base
    llm.proc.stop()


@pytest.fixture
def cluster(kafka_bootstrap: str, fake_llm: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(kafka_bootstrap, f"t{uuid.uuid4().hex[:10]}.", fake_llm, tmp_path)
    try:
        yield c
    finally:
        c.stop_all()
