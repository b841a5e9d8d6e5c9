"""Item 6 of issue 14, the ceiling of the client path: the same bare loop on two Kafka
clients, on the same input records. Each record is decoded (``json.loads`` of the envelope),
counted per key in a dict, and answered with one small JSON reply; the replies of a batch are
awaited (acks=all) before the batch's offsets are committed.

- ``aiokafka``: ``getmany`` / ``send`` / ``gather`` / ``commit`` (the client Faust runs on);
- ``confluent``: confluent-kafka (librdkafka) ``consume`` / ``produce`` / ``flush`` / ``commit``.

A standalone script (stdlib plus the client): ``confluent`` runs under the Quix Streams venv,
which brings confluent-kafka, with ``<venv>/bin/python ops/bench/ceiling.py confluent ...``.
The bench reads the rate off the output topic's timestamps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


def reply(key: bytes | None, value: bytes | None, counts: dict[bytes | None, int]) -> bytes:
    envelope: dict[str, Any] = json.loads(value or b"{}")
    n = counts[key] = counts.get(key, 0) + 1
    body = {"conversation_id": envelope.get("subject"), "in_reply_to": envelope.get("id"), "sequence": n}
    return json.dumps(body).encode()


async def aiokafka_loop(bootstrap: str, source: str, target: str, group: str, count: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    counts: dict[bytes | None, int] = {}
    try:
        done = 0
        while done < count:
            batch = await consumer.getmany(timeout_ms=1000)
            futures = [
                await producer.send(target, value=reply(m.key, m.value, counts), key=m.key)
                for msgs in batch.values()
                for m in msgs
            ]
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
            done += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()


def confluent_loop(bootstrap: str, source: str, target: str, group: str, count: int) -> None:
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    consumer.subscribe([source])
    counts: dict[bytes | None, int] = {}
    try:
        done = 0
        while done < count:
            batch = [m for m in consumer.consume(num_messages=2000, timeout=0.1) if m.error() is None]
            for m in batch:
                value = reply(m.key(), m.value(), counts)
                while True:
                    try:
                        producer.produce(target, value=value, key=m.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
            if batch:
                if producer.flush(60) != 0:
                    raise RuntimeError("replies not acknowledged within 60 s")
                consumer.commit(asynchronous=False)
            done += len(batch)
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ceiling.py")
    parser.add_argument("client", choices=["aiokafka", "confluent"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    if args.client == "aiokafka":
        asyncio.run(aiokafka_loop(args.bootstrap, args.source, args.target, args.group, args.count))
    else:
        confluent_loop(args.bootstrap, args.source, args.target, args.group, args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
