"""`make demo`, the files part: a file dropped in a directory wakes an agent.

Creates a temporary directory, starts ``vigil source files --name inbox --dir DIR`` and a worker
running ``agents.file_watch``'s ``note_file``, waits until both answer ``/readyz``, drops a file
by an atomic rename (written beside the directory, then renamed in: emitted without waiting for
the settle time), prints its ``file.created.v1`` from ``files.inbox.v1`` and the agent's log
line, and fails unless the agent woke within ``DEADLINE`` seconds. Everything it started is
stopped by PID (called by ops/demo.py while Kafka still runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from demo_procs import free_port, say, stop, wait

from streams import Settings, kafka

VIGIL = str(Path(sys.executable).with_name("vigil"))
SOURCE = "inbox"
TOPIC = f"files.{SOURCE}.v1"
DEADLINE = 30.0  # seconds from the rename to the agent's log line


def ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    if proc.poll() is not None:
        raise SystemExit(f"demo: {proc.args[1:3]} exited with {proc.returncode}, see {log}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def run(logs: Path) -> None:
    settings = Settings()
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    run_id = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="vigil-demo-files-"))
    inbox, data = tmp / "inbox", tmp / "worker-data"  # the worker's state comes from the changelog
    inbox.mkdir()
    try:
        # fixed app ids across runs: the source's cursor and the agent's counters carry over;
        # each run drops a new path, so it is a file.created.v1 (the last run's file, gone with
        # its directory, gets its file.deleted.v1, which note_file skips)
        source_port, worker_port = free_port(), free_port()
        source_log, worker_log = logs / "source-files.log", logs / "worker-files.log"
        say(
            f"watching {inbox}: vigil source files --name {SOURCE}, log in .cache/demo-logs/{source_log.name}"
        )
        source = subprocess.Popen(
            [VIGIL, "source", "files", "--name", SOURCE, "--dir", str(inbox)],
            env={**os.environ, "VIGIL_APP_ID": "demo-files", "VIGIL_METRICS_PORT": str(source_port)},
            stdout=source_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((source, "vigil source files"))
        say(f"starting a worker with the note_file agent, log in .cache/demo-logs/{worker_log.name}")
        worker = subprocess.Popen(
            [VIGIL, "worker", "--agents", "note_file"],
            env={
                **os.environ,
                "VIGIL_APP_ID": "demo-files-agent",
                "VIGIL_DATA_DIR": str(data),
                "VIGIL_METRICS_PORT": str(worker_port),
                "VIGIL_FILE_WATCH_SOURCE": SOURCE,
            },
            stdout=worker_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((worker, "worker (note_file)"))
        name = f"orders-{run_id}.csv"
        staged = tmp / f"{name}.part"  # beside the watched directory, so never seen half-written
        # written before the waits: a rename within the same kernel clock tick as the write
        # leaves ctime == mtime, and the source then waits out its settle time (2 s)
        staged.write_text("order,total\n1234,19.90\n1235,5.00\n")
        wait(lambda: ready(source, source_port, source_log), 60, "vigil source files /readyz")
        wait(lambda: ready(worker, worker_port, worker_log), 120, "the worker's /readyz")

        say(f"dropping {name} into the directory (write beside it, then rename in)")
        dropped = time.monotonic()
        staged.rename(inbox / name)

        def woken() -> str | None:
            if worker.poll() is not None:
                raise SystemExit(f"demo: the worker exited, see {worker_log}")
            lines = worker_log.read_text(errors="replace").splitlines()
            return next((line for line in lines if f"note_file: {SOURCE}/{name} created" in line), None)

        line = wait(woken, DEADLINE, f"the note_file agent to handle {name}")
        took = time.monotonic() - dropped

        async def events() -> list[dict[str, Any]]:
            recs = kafka.read_topics(settings, [settings.topic(TOPIC)])
            return [json.loads(r.value) async for r in recs if r.value]

        event = wait(
            lambda: next((e for e in asyncio.run(events()) if e["subject"] == name), None),
            30,
            f"the file event on {settings.topic(TOPIC)}",
        )
        say(f"file event on {settings.topic(TOPIC)} (key {event['subject']}):")
        print(f"    type={event['type']} id={event['id']}")
        print(f"    data={json.dumps(event['data'])}")
        say(f"the agent woke up {took:.2f} s after the rename:")
        print(f"    {line[line.index('note_file:') :].rstrip()}")
    finally:
        for proc, what in reversed(started):
            stop(proc, what)
        shutil.rmtree(tmp, ignore_errors=True)
