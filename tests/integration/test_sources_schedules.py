"""``vigil source schedules`` on the real broker: two instances of the same every-2-s schedule,
the emitting one SIGKILLed midway; consumers see exactly one distinct tick per slot and no
slot missing."""

from __future__ import annotations

import itertools
import json
import re
import signal
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta

import pytest

from streams.sources.base import event_id
from tests.support import VIGIL, Cluster, Proc, free_port, start_process, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CONFIG = """
[[schedule]]
name = "every2"
cron = "*/2 * * * * *"
timezone = "Europe/Berlin"
catchup_window = 120
overlap = "all"
payload = { job = "ping" }
"""
SENT = re.compile(r'^vigil_source_events_total\{outcome="sent",source="schedules:schedules"\} (\S+)$', re.M)


class Instance:
    def __init__(self, cluster: Cluster, name: str) -> None:
        self.port = free_port()
        config = cluster.tmp / "schedules.toml"
        config.write_text(CONFIG)
        self.proc: Proc = start_process(
            name,
            [*VIGIL, "source", "schedules", "--config", str(config)],
            cluster.env(VIGIL_METRICS_PORT=str(self.port)),
            cluster.tmp / f"{name}.log",
        )
        cluster.procs.append(self.proc)

    def sent(self) -> float:
        assert self.proc.alive(), self.proc.log()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                found = SENT.search(r.read().decode())
        except OSError:
            return -1.0
        return float(found.group(1)) if found else 0.0


def test_two_instances_one_sigkilled_emit_each_slot_once(cluster: Cluster) -> None:
    started = time.monotonic()
    a = Instance(cluster, "sched-a")
    wait_for(lambda: a.sent() >= 1, 30, "the first tick of instance a")
    b = Instance(cluster, "sched-b")
    wait_for(lambda: b.sent() >= 0, 30, "instance b's /metrics")

    def emitter() -> tuple[Instance, Instance] | None:
        """The instance whose sent count grows (after b's join settled), and the other."""
        before = (a.sent(), b.sent())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            grew = [a.sent() > before[0], b.sent() > before[1]]
            if grew == [True, False]:
                return a, b
            if grew == [False, True]:
                return b, a
            time.sleep(0.2)
        return None

    wait_for(lambda: time.monotonic() - started > 12, 20, "the first half")
    owner, survivor = wait_for(emitter, 20, "one emitting instance")
    owner.proc.stop(signal.SIGKILL)
    killed_at = datetime.now().astimezone()
    at_kill = survivor.sent()
    # the survivor takes over after the session timeout (6 s), catches up, and goes on
    wait_for(
        lambda: survivor.sent() >= at_kill + 5 and time.monotonic() - started > 30, 45, "the second half"
    )
    assert survivor.proc.stop() == 0

    ticks = cluster.read_json("schedules.v1")
    ids: dict[str, set[str]] = defaultdict(set)
    for t in ticks:
        assert t["subject"] == "every2" and t["type"] == "schedule.tick.v1"
        assert t["data"]["payload"] == {"job": "ping"}
        ids[t["data"]["slot"]].add(t["id"])
    slots = sorted(datetime.fromisoformat(s) for s in ids)
    assert all(len(v) == 1 for v in ids.values()), "a slot with two distinct ids"
    for slot_iso, (only,) in ids.items():
        assert only == event_id("schedule", "every2", slot_iso)
    steps = {b - a for a, b in itertools.pairwise(slots)}
    assert steps == {timedelta(seconds=2)}, f"missing slots: steps {sorted(steps)}"
    assert slots[0] < killed_at < slots[-1] - timedelta(seconds=8), "the kill was not midway"
    assert len(slots) >= 12
    print(json.dumps({"slots": len(slots), "records": len(ticks), "re_emitted": len(ticks) - len(slots)}))
