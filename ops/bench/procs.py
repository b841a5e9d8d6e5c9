"""Processes the bench starts (workers, baselines, the fake LLM), each stopped by its PID,
and a watch on a consumer group's state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from ops.bench.records import BenchError

REPO = Path(__file__).resolve().parents[2]
VIGIL = [sys.executable, "-c", "from agents.cli import main; main()"]


@dataclass
class Child:
    """A process this bench started; stopped by its PID only."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    #: wall clock (time.time) just before the process was created
    spawned_at: float = field(default_factory=time.time)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BenchError(f"no VmRSS for {self.name}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a graceful stop: commit, close the tables), SIGKILL after ``timeout``."""
        if self.alive():
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: for processes whose state nothing reads afterwards."""
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


def spawn(name: str, args: list[str], env: dict[str, str], workdir: Path) -> Child:
    log = workdir / f"{name}.log"
    with log.open("ab") as handle:
        spawned_at = time.time()
        popen = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Child(name, popen, log, spawned_at)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(url: str) -> None:
    with urllib.request.urlopen(f"{url}/healthz", timeout=1):
        pass


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


class GroupWatch:
    """Polls a consumer group's state every 50 ms and remembers when it last became Stable
    (the moment a worker has its assignment and starts recovering its tables)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.stable_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            previous = ""
            while True:
                try:
                    [response] = await admin.describe_consumer_groups([self.group])
                    state = str(response.groups[0][2])
                except Exception:  # noqa: BLE001 - no coordinator yet, group not created yet
                    state = "unknown"
                now = time.time()
                if state == "Stable" and previous != "Stable":
                    self.stable_since = now
                previous = state
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.stable_since is None:
            raise BenchError(f"group {self.group} was never seen Stable")
        return self.stable_since
