"""Events per second of ``vigil source postgres`` on this machine (one JSON line).

A throwaway PostgreSQL (tests/postgres.py) and the local broker: ``--rows`` rows inserted in
``--transactions`` transactions while the source streams (inserts start once the slot is active;
the clock stops when the last event is on the topic), then the same number of existing rows
through ``--snapshot`` (op r). Also reports where the checkpoint stands after SIGTERM: the slot's
confirmed flush LSN against the server's WAL end. Usage: .venv/bin/python ops/cdc_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from streams import Settings, kafka  # noqa: E402
from tests.postgres import PostgresServer, start_postgres  # noqa: E402

VIGIL = str(Path(sys.executable).with_name("vigil"))


def on_topic(settings: Settings, topic: str) -> int:
    try:
        return sum(asyncio.run(kafka.end_offsets(settings, settings.topic(topic))).values())
    except Exception:  # noqa: BLE001 - the topic may not exist yet
        return 0


def wait(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("cdc_bench: timed out")
        time.sleep(0.05)


def source(
    pg: PostgresServer, db: str, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    prof = os.environ.get("CDC_BENCH_PROFILE")
    pre = [sys.executable, "-m", "cProfile", "-o", f"{prof}.{db}", VIGIL] if prof else [VIGIL]
    cmd = [
        *pre[:-1],
        pre[-1],
        "source",
        "postgres",
        "--dsn",
        pg.dsn(db),
        "--slot",
        db,
        "--publication",
        "bench",
        *args,
    ]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def active(pg: PostgresServer, db: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise SystemExit(f"cdc_bench: the source exited ({proc.returncode})")
    rows = pg.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (db,), dbname=db)
    return bool(rows and rows[0][0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--transactions", type=int, default=4)
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    env = {**os.environ, "VIGIL_TOPIC_PREFIX": prefix, "VIGIL_METRICS_PORT": "0"}
    settings = Settings(topic_prefix=prefix)
    logs = REPO / ".cache" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    pg = start_postgres()
    result: dict[str, object] = {"rows": args.rows, "transactions": args.transactions}
    try:
        # -- streaming
        pg.create_database("stream")
        pg.execute("CREATE TABLE items (id int PRIMARY KEY, payload text)", dbname="stream")
        proc = source(pg, "stream", env, logs / "cdc-stream.log")
        wait(lambda: active(pg, "stream", proc), 60)
        per = args.rows // args.transactions
        started = time.monotonic()
        for t in range(args.transactions):
            pg.execute(
                f"INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series({t * per}, {(t + 1) * per - 1}) g",
                dbname="stream",
            )
        committed = time.monotonic()
        wait(lambda: on_topic(settings, "db.public.items.v1") >= per * args.transactions, 300)
        done = time.monotonic()
        result["stream_events_per_s"] = round(per * args.transactions / (done - started))
        result["stream_seconds_after_last_commit"] = round(done - committed, 2)
        proc.terminate()
        proc.wait(60)
        lag = pg.query(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots"
            " WHERE slot_name = 'stream'",
            dbname="stream",
        )[0][0]
        result["bytes_behind_after_sigterm"] = int(lag)

        # -- snapshot
        pg.create_database("snap")
        pg.execute(
            "CREATE TABLE items (id int PRIMARY KEY, payload text)",
            f"INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, {args.rows}) g",
            dbname="snap",
        )
        started = time.monotonic()
        proc = source(
            pg, "snap", {**env, "VIGIL_TOPIC_PREFIX": prefix + "s."}, logs / "cdc-snap.log", "--snapshot"
        )
        snap_settings = Settings(topic_prefix=prefix + "s.")
        wait(lambda: on_topic(snap_settings, "db.public.items.v1") >= args.rows, 300)
        result["snapshot_events_per_s_incl_start"] = round(args.rows / (time.monotonic() - started))
        proc.terminate()
        proc.wait(60)
    finally:
        pg.stop()
        pg.remove()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
