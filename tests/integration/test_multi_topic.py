"""An agent over two topics on the real broker: the worker subscribes both, one entity state
per subject across them; topics of different partition counts are refused at start."""

from __future__ import annotations

import subprocess
import uuid
from collections import defaultdict

import pytest

from schemas import RawEnvelope
from streams.core import codec
from streams.core.codec import EncodedRecord
from tests.support import VIGIL, Cluster

from .chat import message

pytestmark = pytest.mark.kafka

AGENT = ["--module", "tests.agents.two_topics", "--agents", "two_topics"]
CHAT, SLACK, OUT = "chat.messages.v1", "slack.events.v1", "chat.replies.v1"


def slack(subject: str, text: str) -> EncodedRecord:
    env = RawEnvelope(
        id=str(uuid.uuid4()),
        source="tests",
        type="slack.message.v1",
        subject=subject,
        data={
            "event_id": f"Ev{uuid.uuid4().hex[:8]}",
            "event": {"type": "message", "text": text, "channel": "C1"},
        },
    )
    return codec.encode(env)


def test_both_topics_feed_one_state_per_subject(cluster: Cluster) -> None:
    cluster.create_topics(CHAT, SLACK)
    subjects = [f"s-{i}" for i in range(4)]
    cluster.produce(CHAT, [message(s, f"chat {k}") for s in subjects for k in range(2)])
    cluster.produce(SLACK, [slack(s, f"slack {k}") for s in subjects for k in range(2)])
    worker = cluster.start_worker(args=AGENT)
    cluster.wait_records(OUT, 16, procs=[worker])
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for env in cluster.read_json(OUT):
        by_subject[env["subject"]].append(env["data"])
    for s in subjects:
        got = by_subject[s]
        # one state across both topics: the sequence counts every event of the subject once
        assert sorted(d["sequence"] for d in got) == [1, 2, 3, 4], got
        assert sorted(d["text"] for d in got) == ["chat.message.received.v2"] * 2 + ["slack.message.v1"] * 2
    assert worker.stop() == 0


def test_topics_of_different_partition_counts_are_refused(cluster: Cluster) -> None:
    cluster.create_topics(CHAT, partitions=6)
    cluster.create_topics(SLACK, partitions=3)
    done = subprocess.run(
        [*VIGIL, "worker", *AGENT], env=cluster.env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "different partition counts" in done.stderr and "its state is co-partitioned" in done.stderr, (
        done.stderr
    )
