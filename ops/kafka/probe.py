"""Readiness probe for the local broker: "ready" means a metadata request and a group
coordinator lookup both answer, because the first group join after a cold start otherwise
races the creation of __consumer_offsets (GroupCoordinatorNotAvailable)."""

from __future__ import annotations

import asyncio
import sys

from aiokafka.client import AIOKafkaClient, CoordinationType  # type: ignore[import-untyped]


async def probe(bootstrap: str) -> None:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        await asyncio.wait_for(client.coordinator_lookup(CoordinationType.GROUP, "vigil-probe"), 10)
    finally:
        await client.close()


if __name__ == "__main__":
    try:
        asyncio.run(probe(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
        print(f"not ready: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
