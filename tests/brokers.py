"""Which Kafka broker the test session uses, chosen by ``VIGIL_TEST_BROKER``:

- ``local`` (default, CI): the jar broker of ops/kafka/kafka.sh at ``VIGIL_TEST_KAFKA_BOOTSTRAP``
  (default 127.0.0.1:9092), reused if it answers, else started on that port and stopped after;
- ``testcontainers``: a throwaway broker from testcontainers' Kafka module (needs a Docker
  engine and ``pip install 'testcontainers[kafka]'``);
- ``external``: ``VIGIL_KAFKA_BOOTSTRAP`` as given; nothing is started or stopped.

``select_broker`` is pure (the probes are passed in) so a unit test covers it without Docker;
tests/conftest.py acts on its answer."""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

BrokerKind = Literal["local", "testcontainers", "external"]
KINDS: tuple[BrokerKind, ...] = ("local", "testcontainers", "external")
DEFAULT_LOCAL_BOOTSTRAP = "127.0.0.1:9092"
# Confluent's image, the one testcontainers' KafkaContainer knows how to configure (KRaft).
DEFAULT_TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:7.6.0"


class BrokerSelectionError(RuntimeError):
    """The requested broker cannot be used; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class BrokerPlan:
    kind: BrokerKind
    bootstrap: str | None  # None for testcontainers: known once the container runs
    image: str | None = None  # testcontainers only


def docker_answers(env: Mapping[str, str] = os.environ) -> bool:
    """A Docker engine answers ``GET /_ping`` at ``DOCKER_HOST`` (default: the local socket).
    Raw socket, not the docker SDK: the SDK leaks its socket when no engine answers. Endpoints
    this probe cannot speak (ssh://, TLS) count as answering: testcontainers reports on those."""
    host = env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if env.get("DOCKER_TLS_VERIFY") or not host.startswith(("unix://", "tcp://")):
        return True
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(3)
            try:
                sock.connect(host.removeprefix("unix://"))
            except OSError:
                sock.close()
                raise
        else:
            address, _, port = host.removeprefix("tcp://").rstrip("/").rpartition(":")
            sock = socket.create_connection((address, int(port)), timeout=3)
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0].split()
        return len(status) >= 2 and status[1] == b"200"
    except (OSError, ValueError):
        return False


def testcontainers_installed() -> bool:
    return importlib.util.find_spec("testcontainers") is not None


def select_broker(
    env: Mapping[str, str],
    *,
    has_testcontainers: Callable[[], bool] = testcontainers_installed,
    has_docker: Callable[[], bool] = docker_answers,
) -> BrokerPlan:
    kind = env.get("VIGIL_TEST_BROKER", "").strip() or "local"
    if kind == "local":
        return BrokerPlan("local", env.get("VIGIL_TEST_KAFKA_BOOTSTRAP") or DEFAULT_LOCAL_BOOTSTRAP)
    if kind == "external":
        bootstrap = env.get("VIGIL_KAFKA_BOOTSTRAP", "").strip()
        if not bootstrap:
            raise BrokerSelectionError(
                "VIGIL_TEST_BROKER=external needs VIGIL_KAFKA_BOOTSTRAP (host:port of the broker to use)"
            )
        return BrokerPlan("external", bootstrap)
    if kind == "testcontainers":
        if not has_testcontainers():
            raise BrokerSelectionError(
                "VIGIL_TEST_BROKER=testcontainers needs the testcontainers package: "
                "pip install 'testcontainers[kafka]' (or use VIGIL_TEST_BROKER=local)"
            )
        if not has_docker():
            raise BrokerSelectionError(
                "VIGIL_TEST_BROKER=testcontainers needs a Docker engine, and none answers "
                "(is the daemon running? DOCKER_HOST?); use VIGIL_TEST_BROKER=local without Docker"
            )
        image = env.get("VIGIL_TEST_KAFKA_IMAGE") or DEFAULT_TESTCONTAINERS_IMAGE
        return BrokerPlan("testcontainers", None, image)
    raise BrokerSelectionError(f"VIGIL_TEST_BROKER={kind!r} is not one of {', '.join(KINDS)}")
