"""Session fixtures: one real Kafka broker per session (ours, started by ops/kafka/kafka.sh
unless one already answers) and one fake LLM server; every test gets its own topic prefix."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import kafka
from tests.support import REPO, Cluster, start_fake_llm, wait_for

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

BOOTSTRAP = os.environ.get("VIGIL_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _broker_ready(bootstrap: str) -> bool:
    return asyncio.run(kafka.broker_ready(bootstrap))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    started = False
    if not _broker_ready(BOOTSTRAP):
        port = BOOTSTRAP.rsplit(":", 1)[1]
        env = {**os.environ, "VIGIL_KAFKA_PORT": port}
        result = subprocess.run(
            [str(REPO / "ops/kafka/kafka.sh"), "up"], env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.fail(f"could not start Kafka: {result.stderr[-2000:]}")
        started = True
    wait_for(lambda: _broker_ready(BOOTSTRAP), 60, "the broker's group coordinator", interval=0.5)
    yield BOOTSTRAP
    if started:
        subprocess.run([str(REPO / "ops/kafka/kafka.sh"), "down"], check=False)


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
