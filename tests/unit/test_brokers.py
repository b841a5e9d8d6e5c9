"""VIGIL_TEST_BROKER selects the session's broker (tests/brokers.py); no Docker needed here."""

from __future__ import annotations

import socketserver
import threading
from pathlib import Path

import pytest

from tests.brokers import BrokerPlan, BrokerSelectionError, docker_answers, select_broker


def never() -> bool:
    raise AssertionError("probed although the selection did not need it")


def test_default_is_the_local_jar_broker() -> None:
    assert select_broker({}, has_testcontainers=never, has_docker=never) == BrokerPlan(
        "local", "127.0.0.1:9092"
    )
    assert select_broker({"VIGIL_TEST_BROKER": " "}).kind == "local"
    plan = select_broker({"VIGIL_TEST_BROKER": "local", "VIGIL_TEST_KAFKA_BOOTSTRAP": "127.0.0.1:19092"})
    assert plan == BrokerPlan("local", "127.0.0.1:19092")


def test_external_uses_the_bootstrap_as_given() -> None:
    env = {"VIGIL_TEST_BROKER": "external", "VIGIL_KAFKA_BOOTSTRAP": "k1:9092,k2:9092"}
    assert select_broker(env, has_testcontainers=never, has_docker=never) == BrokerPlan(
        "external", "k1:9092,k2:9092"
    )


def test_external_without_a_bootstrap_is_a_clear_error() -> None:
    with pytest.raises(
        BrokerSelectionError, match=r"^VIGIL_TEST_BROKER=external needs VIGIL_KAFKA_BOOTSTRAP"
    ):
        select_broker({"VIGIL_TEST_BROKER": "external"})


def test_testcontainers_with_docker_takes_the_broker_from_a_container() -> None:
    env = {"VIGIL_TEST_BROKER": "testcontainers"}
    plan = select_broker(env, has_testcontainers=lambda: True, has_docker=lambda: True)
    assert plan == BrokerPlan("testcontainers", None, "confluentinc/cp-kafka:7.6.0")
    env["VIGIL_TEST_KAFKA_IMAGE"] = "confluentinc/cp-kafka:7.9.0"
    assert select_broker(env, has_testcontainers=lambda: True, has_docker=lambda: True).image == (
        "confluentinc/cp-kafka:7.9.0"
    )


def test_testcontainers_without_docker_or_the_package_is_a_one_line_error() -> None:
    env = {"VIGIL_TEST_BROKER": "testcontainers"}
    with pytest.raises(BrokerSelectionError) as no_docker:
        select_broker(env, has_testcontainers=lambda: True, has_docker=lambda: False)
    assert "needs a Docker engine" in str(no_docker.value) and "\n" not in str(no_docker.value)
    with pytest.raises(BrokerSelectionError) as no_package:
        select_broker(env, has_testcontainers=lambda: False, has_docker=never)
    assert "pip install 'testcontainers[kafka]'" in str(no_package.value)
    assert "\n" not in str(no_package.value)


class FakeEngine(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK")


def test_the_docker_probe_pings_the_engine_at_docker_host(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    host = {"DOCKER_HOST": f"unix://{path}"}
    assert docker_answers(host) is False  # nothing listens
    with pytest.raises(BrokerSelectionError, match="needs a Docker engine"):
        select_broker(
            {"VIGIL_TEST_BROKER": "testcontainers", **host},
            has_testcontainers=lambda: True,
            has_docker=lambda: docker_answers(host),
        )
    with socketserver.UnixStreamServer(str(path), FakeEngine) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            assert docker_answers(host) is True
        finally:
            server.shutdown()
            thread.join(5)


def test_an_unknown_value_is_a_clear_error() -> None:
    with pytest.raises(BrokerSelectionError, match=r"VIGIL_TEST_BROKER='docker' is not one of local, "):
        select_broker({"VIGIL_TEST_BROKER": "docker"}, has_testcontainers=never, has_docker=never)
