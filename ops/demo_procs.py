"""What every part of ``make demo`` needs to run processes: progress lines, waiting on a
condition with a deadline, stopping a process by its PID, a free port."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """The predicate's first truthy value; exits the demo with one line after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM to this PID only, SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    say(f"stopped {name} (pid {proc.pid})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
