"""``vigil groups migrate`` on the real broker: an old deployment's shared group (the app id)
has committed offsets; the migration copies them to the agent's own group, so the agent's
first start reads only what came after (not the whole topic again)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.core.groups import agent_group
from streams.core.settings import Settings
from tests.support import VIGIL, Cluster, committed_offsets, end_offsets, wait_for

from .chat import message
from .guarantees import IN, OUT, PROBE

pytestmark = pytest.mark.kafka


def commit_as(settings: Settings, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for ``group`` as a worker of that group would have."""

    async def go() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
            consumer.assign(sorted(tps))
            await consumer.commit(tps)
        finally:
            await consumer.stop()

    asyncio.run(go())


def vigil(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VIGIL, *args], env=cluster.env(), capture_output=True, text=True, timeout=60, check=False
    )


def test_migrate_copies_the_shared_groups_offsets_to_each_agents_group(cluster: Cluster) -> None:
    settings = cluster.settings()
    topic = settings.topic(IN)
    cluster.create_topics(IN)
    old = [message(f"old-{i}", "handled by the old deployment", id=f"old-{i}") for i in range(12)]
    cluster.produce(IN, old)
    ends = end_offsets(settings, topic)
    assert sum(ends.values()) == len(old)
    # The old deployment (one group = the app id) handled and committed all of it ...
    commit_as(settings, settings.group_id, topic, ends)
    # ... and partition 0 of the agent's new group was already committed (an earlier run):
    # the migration must not move it.
    group = agent_group(settings, "probe")
    commit_as(settings, group, topic, {0: 0})

    dry = vigil(cluster, "groups", "migrate", *PROBE, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = [json.loads(line) for line in dry.stdout.splitlines()]
    assert committed_offsets(settings, topic, "probe") == {0: 0}, "a dry run committed"
    assert {(m["partition"], m["status"]) for m in planned} == {
        (p, "kept" if p == 0 else "copy") for p in ends
    }, planned

    done = vigil(cluster, "groups", "migrate", *PROBE)
    assert done.returncode == 0, done.stderr
    assert f"copied {len(ends) - 1} offset(s) from {settings.group_id}" in done.stderr, done.stderr
    assert committed_offsets(settings, topic, "probe") == {**ends, 0: 0}

    # The agent's first start: partition 0 (kept at 0) is re-read, the others resume where the
    # old group stopped; a new message on any partition is answered.
    worker = cluster.start_worker(args=PROBE)
    new = message("new-1", "after the move", id="new-1")
    cluster.produce(IN, [new])
    on_zero = [r for r in old if json.loads(r.value or b"{}")["subject"] in subjects_on(cluster, 0)]
    cluster.wait_records(OUT, 1 + len(on_zero), procs=[worker])
    want = end_offsets(settings, topic)
    wait_for(lambda: committed_offsets(settings, topic, "probe") == want, 60, "the agent's group committed")
    replied = sorted(json.loads(r.value or b"{}")["subject"] for r in cluster.read(OUT))
    assert replied == sorted(["new-1", *(json.loads(r.value or b"{}")["subject"] for r in on_zero)])

    # While a worker is in the group, the migration refuses to touch it.
    busy = vigil(cluster, "groups", "migrate", *PROBE)
    assert busy.returncode != 0 and "stop the workers first" in busy.stderr, busy.stderr
    assert worker.stop() == 0


def subjects_on(cluster: Cluster, partition: int) -> set[str]:
    return {json.loads(r.value or b"{}")["subject"] for r in cluster.read(IN) if r.partition == partition}
