"""P1q's peer: a Quix Streams app doing the bench agent's work. JSON value in, a counter per
key in its RocksDB state (with its changelog topic), one JSON reply out per record.

A standalone script run by the Quix venv's interpreter (``ops.bench.quix_venv``):
``<venv>/bin/python ops/bench/quix_app.py --bootstrap ... --source ... --target ...``. It runs
until SIGTERM; the bench reads the rate off the output topic's timestamps.
"""

from __future__ import annotations

import argparse
from typing import Any

from quixstreams import Application, State


def answer(value: dict[str, Any], state: State) -> dict[str, Any]:
    n = state.get("count", 0) + 1
    state.set("count", n)
    return {"conversation_id": value.get("subject"), "in_reply_to": value.get("id"), "sequence": n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quix_app.py")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
        producer_extra_config={"acks": "all"},
    )
    source = app.topic(args.source, value_deserializer="json")
    target = app.topic(args.target, value_serializer="json")
    sdf = app.dataframe(source).apply(answer, stateful=True)
    sdf.to_topic(target)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
