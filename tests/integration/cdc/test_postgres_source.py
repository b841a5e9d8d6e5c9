"""``vigil source postgres`` on a real PostgreSQL (tests/postgres.py) and the real broker:
inserts, updates with before images (REPLICA IDENTITY FULL), deletes, truncate, a transaction of
many rows, the snapshot, one-line refusals, and a SIGKILL restart with nothing lost, order per
key kept and every repeat carrying the same id."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections import defaultdict
from typing import Any

import pytest

from tests.postgres import PostgresServer
from tests.support import VIGIL, Cluster, Proc, free_port, wait_for

pytestmark = pytest.mark.kafka


def _start(
    cluster: Cluster, pg: PostgresServer, db: str, args: tuple[str, ...], name: str, env: dict[str, str]
) -> Proc:
    from tests.support import start_process

    cmd = [
        *VIGIL,
        "source",
        "postgres",
        "--dsn",
        pg.dsn(db),
        "--slot",
        db,
        "--publication",
        "vigil",
        *args,
    ]
    proc = start_process(
        f"source-{name}",
        cmd,
        cluster.env(VIGIL_DATA_DIR=str(cluster.tmp / "data"), **env),
        cluster.tmp / f"{name}.log",
    )
    cluster.procs.append(proc)
    return proc


def wait_streaming(pg: PostgresServer, db: str, proc: Proc) -> None:
    def active() -> bool:
        assert proc.alive(), f"source exited {proc.popen.returncode}: {proc.log()[-3000:]}"
        rows = pg.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (db,), dbname=db)
        return bool(rows and rows[0][0])

    wait_for(active, 60, "the source's replication slot to be active", interval=0.2)


def events(cluster: Cluster, topic: str) -> list[dict[str, Any]]:
    out = []
    for r in cluster.read(topic):
        body = json.loads(r.value or b"null")
        body["_key"] = r.key.decode() if r.key else None
        body["_partition"], body["_offset"] = r.partition, r.offset
        out.append(body)
    return out


def wait_events(
    cluster: Cluster, topic: str, count: int, proc: Proc, timeout: float = 60
) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        assert proc.alive(), f"source exited {proc.popen.returncode}: {proc.log()[-3000:]}"
        got = events(cluster, topic)
        return got if len(got) >= count else None

    return wait_for(enough, timeout, f"{count} events on {topic}", interval=0.3)


def by_subject(evs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each subject's events in the order a consumer sees them, first copy of each id only."""
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(evs, key=lambda e: (e["_partition"], e["_offset"])):
        if e["id"] not in seen:
            seen.add(e["id"])
            out[e["subject"]].append(e)
    return out


def test_inserts_updates_deletes_truncate_and_a_large_transaction(
    cluster: Cluster, postgres: PostgresServer, pg_db: str
) -> None:
    postgres.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10,2), paid boolean)",
        "ALTER TABLE orders REPLICA IDENTITY FULL",
        "CREATE TABLE lines (order_id int, line int, qty int, PRIMARY KEY (order_id, line))",
        dbname=pg_db,
    )
    port = free_port()
    proc = _start(cluster, postgres, pg_db, (), "pg", {"VIGIL_METRICS_PORT": str(port)})
    wait_streaming(postgres, pg_db, proc)
    postgres.execute(
        "INSERT INTO orders VALUES (1, 'ada', 10.50, false), (2, 'bob', 3.00, true)", dbname=pg_db
    )
    postgres.execute("UPDATE orders SET paid = true, total = 11.25 WHERE id = 1", dbname=pg_db)
    postgres.execute("DELETE FROM orders WHERE id = 2", dbname=pg_db)
    postgres.execute("TRUNCATE orders", dbname=pg_db)
    postgres.execute(
        "INSERT INTO lines SELECT 7, g, g * 2 FROM generate_series(1, 500) g",
        "UPDATE lines SET qty = 0 WHERE line = 3",
        dbname=pg_db,
    )

    orders = wait_events(cluster, "db.public.orders.v1", 5, proc)
    ordered = sorted(orders, key=lambda e: e["data"]["source"]["lsn"])
    types = [e["type"].split(".")[-2] for e in ordered]
    assert types == ["created", "created", "updated", "deleted", "truncated"]
    created, _, updated, deleted, truncated = (e["data"] for e in ordered)
    assert created["after"] == {"id": 1, "customer": "ada", "total": "10.50", "paid": False}
    assert created["op"] == "c" and created["before"] is None
    assert updated["op"] == "u"
    assert updated["before"] == {"id": 1, "customer": "ada", "total": "10.50", "paid": False}  # FULL
    assert updated["after"] == {"id": 1, "customer": "ada", "total": "11.25", "paid": True}
    assert deleted["op"] == "d" and deleted["after"] is None and deleted["before"]["customer"] == "bob"
    assert truncated["op"] == "t" and truncated["before"] is None and truncated["after"] is None
    src = created["source"]
    assert (src["schema"], src["table"], src["db"]) == ("public", "orders", pg_db)
    assert isinstance(src["lsn"], int) and isinstance(src["txId"], int) and created["ts_ms"] > 0
    assert all(e["_key"] == e["subject"] for e in orders)

    lines = wait_events(cluster, "db.public.lines.v1", 501, proc)
    assert len(lines) == 501 and len({e["id"] for e in lines}) == 501
    tx_ids = {e["data"]["source"]["txId"] for e in lines}
    assert len(tx_ids) == 1  # the 500 inserts and the update: one transaction
    upd = next(e for e in lines if e["data"]["op"] == "u")
    assert upd["subject"] == "7/3"  # composite key joined with /
    assert upd["data"]["before"] is None  # REPLICA IDENTITY DEFAULT: no before image
    assert upd["data"]["after"] == {"order_id": 7, "line": 3, "qty": 0}
    assert by_subject(lines)["7/3"][-1]["data"]["op"] == "u"  # order per key: insert, then update

    # idle, the slot follows the server's WAL end: WAL of other databases is not retained
    postgres.execute(
        "CREATE TABLE IF NOT EXISTS noise (n int)", "INSERT INTO noise SELECT generate_series(1, 20000)"
    )

    def slot_lag() -> int:
        return int(
            postgres.query(
                "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (pg_db,),
                dbname=pg_db,
            )[0][0]
        )

    wait_for(lambda: slot_lag() < 16_000, 30, "the idle slot to follow the WAL end")

    def scrape() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        line = f'vigil_source_lag{{kind="replication_bytes",source="postgres:{pg_db}"}}'
        return (
            text
            if line in text
            and f'vigil_source_events_total{{outcome="sent",source="postgres:{pg_db}"}} 506.0' in text
            else None
        )

    metrics = wait_for(scrape, 30, "the source's metrics")
    assert "vigil_source_checkpoints_total" in metrics
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200

    # one more large transaction, and a stop right after its events arrived: the clean stop
    # confirms it to the slot (nothing to resend)
    postgres.execute("UPDATE lines SET qty = qty + 1", dbname=pg_db)
    lines = wait_events(cluster, "db.public.lines.v1", 1001, proc)
    proc.stop()
    assert proc.popen.returncode == 0, proc.log()[-2000:]
    last = max(e["data"]["source"]["lsn"] for e in lines)
    confirmed = postgres.query(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (pg_db,),
        dbname=pg_db,
    )[0][0]
    assert confirmed > last, (confirmed, last)


def test_snapshot_reads_existing_rows_then_streams(
    cluster: Cluster, postgres: PostgresServer, pg_db: str
) -> None:
    postgres.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, name text)",
        "INSERT INTO accounts SELECT g, 'a' || g FROM generate_series(1, 300) g",
        dbname=pg_db,
    )
    proc = _start(cluster, postgres, pg_db, ("--snapshot",), "pg", {})
    wait_streaming(postgres, pg_db, proc)
    postgres.execute("INSERT INTO accounts VALUES (301, 'late')", dbname=pg_db)
    postgres.execute("UPDATE accounts SET name = 'changed' WHERE id = 5", dbname=pg_db)
    evs = wait_events(cluster, "db.public.accounts.v1", 302, proc)
    ops = defaultdict(list)
    for e in evs:
        ops[e["data"]["op"]].append(e)
    assert len(ops["r"]) == 300 and len(ops["c"]) == 1 and len(ops["u"]) == 1, {
        k: len(v) for k, v in ops.items()
    }
    assert {e["subject"] for e in ops["r"]} == {str(i) for i in range(1, 301)}
    assert ops["c"][0]["subject"] == "301" and ops["r"][0]["type"] == "db.public.accounts.read.v1"
    assert by_subject(evs)["5"][-1]["data"]["after"]["name"] == "changed"
    # a restart does not take the snapshot again
    proc.stop()
    assert proc.popen.returncode == 0, proc.log()[-2000:]
    again = _start(cluster, postgres, pg_db, ("--snapshot",), "pg2", {})
    wait_streaming(postgres, pg_db, again)
    postgres.execute("DELETE FROM accounts WHERE id = 1", dbname=pg_db)
    evs = wait_events(cluster, "db.public.accounts.v1", 303, again)
    assert len(evs) == 303 and evs and sum(e["data"]["op"] == "r" for e in evs) == 300


def test_one_line_refusals(cluster: Cluster, postgres: PostgresServer, pg_db: str) -> None:
    postgres.execute("CREATE ROLE plain LOGIN", dbname=pg_db)
    env = cluster.env()

    def run(dsn: str) -> subprocess.CompletedProcess[str]:
        cmd = [*VIGIL, "source", "postgres", "--dsn", dsn, "--slot", "s1", "--publication", "p1"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    denied = run(postgres.dsn(pg_db, user="plain"))
    assert denied.returncode == 1
    assert denied.stderr.strip().splitlines() == [
        "Error: role 'plain' lacks the REPLICATION privilege (ALTER ROLE plain REPLICATION)"
    ]
    unreachable = run("host=127.0.0.1 port=1 dbname=x connect_timeout=2")
    assert unreachable.returncode == 1
    lines = unreachable.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot connect to PostgreSQL:"), lines


@pytest.mark.slow
def test_sigkill_restart_loses_nothing_keeps_key_order_and_repeats_ids(
    cluster: Cluster, postgres: PostgresServer, pg_db: str
) -> None:
    postgres.execute("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)", dbname=pg_db)
    # a slow checkpoint: the kill lands before the first one, so the restart resends for sure
    first = _start(cluster, postgres, pg_db, (), "pg", {"VIGIL_SOURCE_FLUSH_INTERVAL": "60"})
    wait_streaming(postgres, pg_db, first)
    expected: dict[int, list[int]] = defaultdict(list)

    def write(batch: range, n: int) -> None:
        postgres.execute(
            f"INSERT INTO items SELECT g, {n} FROM generate_series({batch.start}, {batch.stop - 1}) g"
            f" ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
            dbname=pg_db,
        )
        for i in batch:
            expected[i].append(n)

    for t in range(10):  # 10 transactions of 100 rows
        write(range(t * 100, t * 100 + 100), 0)
    wait_events(cluster, "db.public.items.v1", 1, first)
    first.kill()
    for t in range(5):  # while the source is down: updates of half the rows, then new rows
        write(range(t * 100, t * 100 + 100), 1)
    write(range(1000, 1200), 1)
    second = _start(cluster, postgres, pg_db, (), "pg2", {})
    wait_streaming(postgres, pg_db, second)
    for t in range(3):  # and after the restart
        write(range(t * 100, t * 100 + 100), 2)
    total = sum(len(v) for v in expected.values())
    evs = wait_events(cluster, "db.public.items.v1", total, second, timeout=90)

    def complete() -> list[dict[str, Any]] | None:
        got = events(cluster, "db.public.items.v1")
        return got if len({e["id"] for e in got}) >= total else None

    evs = wait_for(complete, 60, f"{total} distinct changes", interval=0.5)
    ids: dict[str, str] = {}
    for e in evs:  # a repeat is the same event: same id, same body
        body = json.dumps({k: v for k, v in e.items() if not k.startswith("_")}, sort_keys=True)
        assert ids.setdefault(e["id"], body) == body
    assert len(ids) == total  # every change once after dedup: no loss, no extra effect
    assert len(evs) > total  # the kill came before the first checkpoint: some were resent
    seen = by_subject(evs)
    assert set(seen) == {str(i) for i in expected}
    for key, ns in expected.items():
        assert [e["data"]["after"]["n"] for e in seen[str(key)]] == ns, key
    second.stop(signal.SIGTERM)
    assert second.popen.returncode == 0, second.log()[-2000:]


@pytest.mark.slow
def test_a_snapshot_cut_by_sigkill_is_taken_again_and_repeats_are_absorbed(
    cluster: Cluster, postgres: PostgresServer, pg_db: str
) -> None:
    rows = 10_000  # the kill must land inside the snapshot (it reads ~3k rows/s here)
    postgres.execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text)",
        f"INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, {rows}) g",
        dbname=pg_db,
    )
    first = _start(cluster, postgres, pg_db, ("--snapshot",), "pg", {})
    wait_events(cluster, "db.public.big.v1", 1, first)
    first.kill()
    got = len(events(cluster, "db.public.big.v1"))
    assert got < rows, "the snapshot finished before the kill: nothing was cut"
    second = _start(cluster, postgres, pg_db, ("--snapshot",), "pg2", {})
    wait_streaming(postgres, pg_db, second)
    postgres.execute("UPDATE big SET v = 'after' WHERE id = 1", dbname=pg_db)

    def complete() -> list[dict[str, Any]] | None:
        assert second.alive(), second.log()[-3000:]
        evs = events(cluster, "db.public.big.v1")
        return evs if len({e["id"] for e in evs}) >= rows + 1 else None

    evs = wait_for(complete, 90, f"{rows} read rows and the update")
    reads = {e["id"]: e for e in evs if e["data"]["op"] == "r"}
    assert len(reads) == rows  # re-read unchanged rows carry their first ids
    assert {e["subject"] for e in reads.values()} == {str(i) for i in range(1, rows + 1)}
    assert [e["data"]["after"]["v"] for e in by_subject(evs)["1"]][-1] == "after"
    assert "taking the snapshot again" in second.log()
