"""P1's second reference: a plain Faust pass-through agent with a RocksDB counter table, as a
user would write it on faust-streaming without Vigil. ``stream.events()``, a per-key counter
in a rocksdict table (its changelog written by Faust), one ``app.producer.send`` JSON reply per
record (acks=all, as Vigil's producer).

Run as its own process: ``python -m ops.bench.faust_baseline --bootstrap ... --source ...
--target ... --app-id ... --data-dir ...`` (until SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import faust


def build(bootstrap: str, source: str, target: str, app_id: str, data_dir: str, partitions: int) -> faust.App:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=data_dir,
        autodiscover=False,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        table_standby_replicas=0,
    )
    topic = app.topic(source, key_serializer="raw", value_serializer="raw", partitions=partitions)
    counts = app.Table(
        "counts",
        default=int,
        key_type=str,
        value_type=int,
        partitions=partitions,
        options={"driver": "rocksdict"},
    )

    @app.agent(topic, name="count")
    async def count(stream: Any) -> None:
        async for event in stream.events():
            subject = event.key.decode()
            counts[subject] += 1
            envelope = json.loads(event.value)
            body = {"conversation_id": subject, "in_reply_to": envelope["id"], "sequence": counts[subject]}
            await app.producer.send(target, event.key, json.dumps(body).encode(), None, None, None)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.faust_baseline")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args(argv)
    app = build(args.bootstrap, args.source, args.target, args.app_id, args.data_dir, args.partitions)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    for name in ("faust", "mode"):  # the worker leaves them at DEBUG (Vigil's worker does the same)
        logging.getLogger(name).setLevel(logging.WARNING)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
