"""Readiness probe for the local broker (exit 0 when ready), run by kafka.sh with the venv's
python. The check itself is ``streams.kafka.broker_ready``, shared with the test fixtures."""

from __future__ import annotations

import asyncio
import sys

from streams.kafka import broker_ready

if __name__ == "__main__":
    sys.exit(0 if asyncio.run(broker_ready(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092")) else 1)
