"""Test helpers shared by unit and integration tests: processes stopped by PID, waits with
deadlines (never bare sleeps), and readers that collect records from topics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from streams import kafka
from streams.core.groups import agent_group
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings

REPO = Path(__file__).resolve().parent.parent
VIGIL = [str(Path(sys.executable).with_name("vigil"))]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """A child process we started; stopped by its PID only."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        if self.alive():
            os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_process(name: str, args: list[str], env: dict[str, str], log_path: Path) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    popen = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    handle.close()
    return Proc(name, popen, log_path)


@dataclass
class FakeLLMProc:
    proc: Proc
    url: str

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    def healthy(self) -> bool:
        assert self.proc.alive(), f"fake-llm exited: {self.proc.log()}"
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=5) as r:
            return dict(json.loads(r.read()))

    def control(self, **faults: Any) -> None:
        req = urllib.request.Request(
            f"{self.url}/_control",
            data=json.dumps(faults).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5).close()


def start_fake_llm(log_dir: Path, env: dict[str, str], *args: str) -> FakeLLMProc:
    """``vigil fake-llm`` on a free port, returned once /healthz answers."""
    port = free_port()
    proc = start_process(
        f"fake-llm-{port}", [*VIGIL, "fake-llm", "--port", str(port), *args], env, log_dir / f"llm-{port}.log"
    )
    llm = FakeLLMProc(proc, f"http://127.0.0.1:{port}")
    wait_for(llm.healthy, 30, "fake-llm /healthz")
    return llm


@dataclass
class Cluster:
    """What one test needs to talk to Vigil: isolated by a unique topic/group prefix."""

    bootstrap: str
    prefix: str
    llm_base: str
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        return Settings(kafka_bootstrap=self.bootstrap, topic_prefix=self.prefix, **overrides)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        env.update(
            VIGIL_KAFKA_BOOTSTRAP=self.bootstrap,
            VIGIL_TOPIC_PREFIX=self.prefix,
            VIGIL_LLM_API_BASE=self.llm_base,
            VIGIL_LLM_MODEL="openai/fake",
            VIGIL_METRICS_PORT="0",
            VIGIL_WEB_PORT="0",
            VIGIL_COMMIT_INTERVAL="0.5",
            VIGIL_SESSION_TIMEOUT="6",  # the broker's minimum: a killed worker's partitions move fast
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(REPO),  # workers import test agents: vigil worker -m tests.agents.probe
        )
        env.update(extra)
        return env

    def start_worker(
        self, name: str = "w1", data_dir: Path | None = None, args: Sequence[str] = (), **env: str
    ) -> Proc:
        data = data_dir or self.tmp / f"data-{name}"
        proc = start_process(
            f"worker-{name}",
            [*VIGIL, "worker", *args],
            self.env(VIGIL_DATA_DIR=str(data), **env),
            self.tmp / f"worker-{name}.log",
        )
        self.procs.append(proc)
        return proc

    def start_fake_llm(self, *args: str) -> FakeLLMProc:
        """A fake LLM of this test's own, so fault injection cannot leak into other tests."""
        llm = start_fake_llm(self.tmp, self.env(), *args)
        self.procs.append(llm.proc)
        return llm

    def create_topics(self, *names: str, partitions: int = 6) -> None:
        settings = self.settings(partitions=partitions)
        asyncio.run(kafka.create_topics(settings, [self.prefix + n for n in names]))

    def produce(self, topic: str, records: list[Any]) -> None:
        asyncio.run(kafka.produce(self.settings(), self.prefix + topic, records))

    def read(self, topic: str, *, committed_only: bool = False) -> list[ConsumedRecord]:
        async def go() -> list[ConsumedRecord]:
            topics = [self.prefix + topic]
            return [
                r async for r in kafka.read_topics(self.settings(), topics, committed_only=committed_only)
            ]

        return asyncio.run(go())

    def read_json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.read(topic) if r.value is not None]

    def wait_records(
        self, topic: str, count: int, timeout: float = 90, procs: list[Proc] | None = None
    ) -> list[ConsumedRecord]:
        def enough() -> list[ConsumedRecord] | None:
            for p in procs or []:
                assert p.alive(), f"{p.name} exited with {p.popen.returncode}:\n{p.log()[-3000:]}"
            recs = self.read(topic)
            return recs if len(recs) >= count else None

        try:
            return wait_for(enough, timeout, f"{count} records on {self.prefix}{topic}", interval=0.5)
        except AssertionError:
            logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in (procs or self.procs))
            raise AssertionError(
                f"expected {count} records on {self.prefix}{topic}, have {len(self.read(topic))}\n{logs}"
            ) from None

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop()


def committed_offsets(settings: Settings, topic: str, agent: str | None = None) -> dict[int, int]:
    """The committed offset per partition of ``topic`` of ``agent``'s group, read back through
    the admin client (what a restarted worker resumes from); partitions never committed are
    absent. Without ``agent``: the lowest over the agents' groups (``<app id>.<agent>``) that
    committed on ``topic``."""

    async def go() -> dict[int, int]:
        async with kafka.admin(settings) as client:
            if agent is not None:
                groups = [agent_group(settings, agent)]
            else:
                prefix = f"{settings.group_id}."
                groups = sorted(
                    str(g[0]) for g in await client.list_consumer_groups() if str(g[0]).startswith(prefix)
                )
            found: dict[int, int] = {}
            for group in groups:
                got = await client.list_consumer_group_offsets(group)
                for tp, meta in got.items():
                    if tp.topic == topic and meta.offset >= 0:
                        found[tp.partition] = min(meta.offset, found.get(tp.partition, meta.offset))
        return found

    return asyncio.run(go())


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    return asyncio.run(kafka.end_offsets(settings, topic))


def partition_of(key: str, partitions: int) -> int:
    """The partition the default producer partitioner (murmur2, as Java's) picks for ``key``."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def keys_on_partition(prefix: str, partition: int, partitions: int, count: int) -> list[str]:
    keys: list[str] = []
    n = 0
    while len(keys) < count:
        key = f"{prefix}{n}"
        if partition_of(key, partitions) == partition:
            keys.append(key)
        n += 1
    return keys
