"""The baselines: what plain aiokafka does on the same broker, topics and partitions.

- ``consume_produce``: a group consumer's ``getmany`` batch, each record sent on, the sends
  awaited (acks=all), then the offsets committed: the loop Vigil's worker is judged against.
- ``age``: produce -> consume latency of a plain consumer; run as a child process
  (``python -m ops.bench.raw age ...``) so it does not share a core with the paced producer,
  as a worker does not.
- ``read_changelog``: a plain read of a topic from the beginning to its end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from aiokafka import AIOKafkaConsumer

from . import topics


async def consume_produce(bootstrap: str, source: str, target: str, group: str, count: int) -> None:
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = topics.new_producer(bootstrap)
    await consumer.start()
    await producer.start()
    try:
        done = 0
        while done < count:
            batch = await consumer.getmany(timeout_ms=1000)
            futures = [
                await producer.send(target, value=m.value, key=m.key, headers=list(m.headers or ()))
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


async def read_changelog(bootstrap: str, topic: str) -> tuple[int, float]:
    """Records read and seconds taken, seeking to the beginning of every partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        started = time.perf_counter()
        end = await topics.assign_at(consumer, topic)
        remaining = {tp for tp in end if await consumer.position(tp) < end[tp]}
        count = 0
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, msgs in batch.items():
                count += len(msgs)
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return count, time.perf_counter() - started
    finally:
        await consumer.stop()


async def age(bootstrap: str, topic: str, count: int) -> list[float]:
    """Print ``ready`` once positioned at the end of ``topic``, then return the age in ms
    (receive time minus record timestamp) of the next ``count`` records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topics.partitions(consumer, topic)
        end = await consumer.end_offsets(tps)
        await topics.assign_at(consumer, topic, {tp.partition: o for tp, o in end.items()})
        print("ready", flush=True)
        ages: list[float] = []
        while len(ages) < count:
            batch = await consumer.getmany(timeout_ms=1000)
            now = time.time() * 1000
            ages.extend(now - m.timestamp for msgs in batch.values() for m in msgs)
        return ages
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.raw")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("age", help="print the produce->consume age (ms) of the next COUNT records as JSON")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    ages = asyncio.run(age(args.bootstrap, args.topic, args.count))
    json.dump(ages, sys.stdout)
    print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
