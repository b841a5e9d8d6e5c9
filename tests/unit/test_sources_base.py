"""The Source base without a broker: deterministic ids, and the checkpoint that moves only
after the broker acknowledged every event sent before it (a producer whose acks the test
releases one by one)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from schemas import Envelope
from streams.core.errors import BrokerUnavailableError, ConfigError
from streams.core.settings import Settings
from streams.sources.base import Source, event_id


class SlowAcks:
    """A producer whose event acks the test resolves; checkpoint writes ack at once."""

    def __init__(self, checkpoint_topic: str) -> None:
        self.checkpoint_topic = checkpoint_topic
        self.events: list[tuple[str, asyncio.Future[None]]] = []
        self.checkpoints: list[tuple[str, Any]] = []

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if topic == self.checkpoint_topic:
            assert key is not None
            self.checkpoints.append((key.decode(), None if value is None else json.loads(value)))
            fut.set_result(None)
        else:
            self.events.append((topic, fut))
        return fut


class Demo(Source):
    kind = "demo"

    def topics(self) -> list[str]:
        return ["demo.v1"]

    async def run(self) -> None:  # driven by the tests instead
        raise AssertionError("not used")


def envelope(n: int) -> Envelope[Any]:
    return Envelope[Any](
        id=event_id("demo", str(n)), source="t", type="demo.thing.v1", subject=f"s{n}", data={}
    )


def demo() -> tuple[Demo, SlowAcks]:
    src = Demo("d1", Settings(topic_prefix="p."))
    prod = SlowAcks(src.checkpoint.topic)
    src._producer = prod  # type: ignore[assignment]
    return src, prod


def test_event_ids_are_uuid5_of_their_parts() -> None:
    assert event_id("files", "inbox", "a.txt", "00") == event_id("files", "inbox", "a.txt", "00")
    assert event_id("files", "inbox", "a.txt", "00") != event_id("files", "inbox", "a.txt", "01")
    assert event_id("a", "bc") != event_id("ab", "c")  # parts are separated, not concatenated
    assert event_id("x")[14] == "5"  # version nibble


def test_bad_source_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid source name"):
        Demo("a/b", Settings())


async def test_checkpoint_waits_for_every_earlier_ack() -> None:
    src, prod = demo()
    assert src.checkpoint.topic == "p.vigil-source-demo-d1-checkpoint"
    for n in range(3):
        await src.emit("demo.v1", envelope(n), checkpoint={"pos": n})
    src.stage({"other": "x"})  # no event of its own: still behind the three sends
    assert [t for t, _ in prod.events] == ["p.demo.v1"] * 3
    assert src.checkpoint.get("pos") == 2  # visible in memory at once

    flush = asyncio.create_task(src.flush())
    prod.events[2][1].set_result(None)  # the last ack first: not enough
    prod.events[0][1].set_result(None)
    await asyncio.sleep(0.01)
    assert not flush.done()
    assert prod.checkpoints == []
    prod.events[1][1].set_result(None)
    await asyncio.wait_for(flush, 1)
    assert prod.checkpoints == [("pos", 2), ("other", "x")]  # merged: last value per key


async def test_a_failed_send_keeps_the_checkpoint_before_it() -> None:
    src, prod = demo()
    await src.emit("demo.v1", envelope(1), checkpoint={"pos": 1})
    prod.events[0][1].set_exception(OSError("broker gone"))
    with pytest.raises(BrokerUnavailableError, match="1 send"):
        await src.flush()
    assert prod.checkpoints == []


async def test_a_cancelled_flush_leaves_its_batch_to_the_next() -> None:
    src, prod = demo()
    await src.emit("demo.v1", envelope(1), checkpoint={"pos": 1})
    flush = asyncio.create_task(src.flush())
    await asyncio.sleep(0.01)
    flush.cancel()
    await asyncio.gather(flush, return_exceptions=True)
    assert not prod.events[0][1].cancelled()  # the producer's future is untouched
    prod.events[0][1].set_result(None)
    await src.flush()
    assert prod.checkpoints == [("pos", 1)]
