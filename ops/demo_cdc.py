"""`make demo`, part two: a row inserted in PostgreSQL wakes an agent.

Starts a throwaway PostgreSQL (tests/postgres.py: initdb with wal_level=logical in a temporary
directory), ``vigil source postgres``, and a worker running ``agents.welcome``; inserts a customer
row, prints the change event from ``db.public.customers.v1`` and the agent's log line, then stops
everything it started by PID (called by ops/demo.py while Kafka and the fake LLM still run).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests/postgres.py: the same server the CDC tests use

from demo_procs import say, stop, wait  # noqa: E402 - ops/ is the script's directory

from streams import Settings, kafka  # noqa: E402
from tests.postgres import start_postgres  # noqa: E402

VIGIL = str(Path(sys.executable).with_name("vigil"))
TOPIC = "db.public.customers.v1"


def run(logs: Path) -> None:
    settings = Settings()
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    run_id = uuid.uuid4().hex[:6]
    data: Path | None = None
    say("starting PostgreSQL (initdb in a temporary directory, wal_level=logical)")
    pg = start_postgres()
    try:
        say(f"PostgreSQL {pg.query('SHOW server_version')[0][0]} on 127.0.0.1:{pg.port} (pid {pg.pid})")
        pg.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text)")
        # fixed names across runs: the checkpoint names the server it belongs to, so a new
        # server's slot starts afresh instead of skipping to the last run's LSN
        env = {**os.environ, "VIGIL_APP_ID": "demo-cdc", "VIGIL_METRICS_PORT": "0"}
        slot = "vigil_demo"
        say(f"starting vigil source postgres (slot {slot}), log in .cache/demo-logs/source-postgres.log")
        source = subprocess.Popen(
            [VIGIL, "source", "postgres", "--dsn", pg.dsn(), "--slot", slot, "--publication", "vigil_demo"],
            env=env,
            stdout=(logs / "source-postgres.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((source, "vigil source postgres"))

        def streaming() -> bool:
            if source.poll() is not None:
                raise SystemExit(f"demo: the source exited, see {logs / 'source-postgres.log'}")
            rows = pg.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            return bool(rows and rows[0][0])

        wait(streaming, 60, "the replication slot")
        say("starting a worker with the welcome_customer agent, log in .cache/demo-logs/worker-welcome.log")
        worker_log = logs / "worker-welcome.log"
        data = Path(tempfile.mkdtemp(prefix="vigil-demo-welcome-"))  # its state comes from the changelog
        worker = subprocess.Popen(
            [VIGIL, "worker", "-m", "agents.welcome", "--agents", "welcome_customer"],
            env={
                **env,
                "VIGIL_APP_ID": "demo-welcome",
                "VIGIL_DATA_DIR": str(data),
            },
            stdout=worker_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((worker, "worker (welcome_customer)"))
        name = f"Ada {run_id}"
        say(f"INSERT INTO customers (name, email) VALUES ('{name}', 'ada@example.com')")
        pg.execute("INSERT INTO customers (name, email) VALUES (%s, 'ada@example.com')", params=(name,))

        async def events() -> list[dict[str, Any]]:
            recs = kafka.read_topics(settings, [settings.topic(TOPIC)])
            return [json.loads(r.value) async for r in recs if r.value]

        event = wait(
            lambda: next((e for e in asyncio.run(events()) if e["data"]["after"]["name"] == name), None),
            60,
            f"the change event on {settings.topic(TOPIC)}",
        )
        say(f"change event on {settings.topic(TOPIC)} (key {event['subject']}):")
        print(f"    type={event['type']} id={event['id']}")
        print(f"    data={json.dumps(event['data'])}")

        def woken() -> str | None:
            if worker.poll() is not None:
                raise SystemExit(f"demo: the worker exited, see {worker_log}")
            lines = worker_log.read_text(errors="replace").splitlines()
            return next(
                (line for line in lines if "welcome_customer: customer" in line and name in line), None
            )

        line = wait(woken, 90, "the welcome_customer agent")
        say("the agent woke up:")
        print(f"    {line[line.index('welcome_customer:') :]}")
    finally:
        for proc, what in reversed(started):
            stop(proc, what)
        pg.stop()
        pg.remove()
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)
        say(f"stopped PostgreSQL (pid {pg.pid})")
