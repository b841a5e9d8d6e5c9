"""Journaled steps across SIGKILL, changelog-only restore and a rebalance, on the real broker,
in both processing guarantees (side by side, one prefix each, so their worker starts overlap).

The agent (tests/agents/journaled.py) calls the fake LLM, then POSTs a charge to a tool server
started here, which counts charges per event id; "hold" events then wait for a release file.
Worker A records both steps of every event and is killed with the "hold" events waiting (and,
in exactly_once, with the "quick" events done inside a transaction it never committed); B
restarts on A's data dir and is killed the same way; C restarts with the data dir deleted
(state only from the changelog), D joins its group (a rebalance), then the events are
released. Every step must have run once per event: the fake LLM answered one request per
event and the tool server counted one charge per event; every event's reply is emitted once
(read_committed in exactly_once)."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import Cluster, FakeLLMProc, Proc, keys_on_partition, wait_for

from .chat import message
from .guarantees import IN, OUT

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

JOURNALED = ["--module", "tests.agents.journaled", "--agents", "journaled"]
#: one hold event per partition, so whichever partitions D takes, it replays some
HOLD = [keys_on_partition(f"h{p}-", p, 6, 1)[0] for p in range(6)]
QUICK = [f"q{i}" for i in range(6)]
EVENTS = [f"{s}-1" for s in HOLD + QUICK]

#: request counts per guarantee, printed for the issue's closing note (pytest -s)
COUNTS: dict[str, dict[str, Any]] = {}


class ToolServer:
    """A fake tool: ``POST /charge {"event_id": ...}`` counts a charge of that event."""

    def __init__(self) -> None:
        self.charges: Counter[str] = Counter()
        lock = threading.Lock()
        charges = self.charges

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    charges[body["event_id"]] += 1
                    n = charges[body["event_id"]]
                out = json.dumps({"event_id": body["event_id"], "charge": n}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def replies(cluster: Cluster, *, committed_only: bool) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in cluster.read(OUT, committed_only=committed_only) if r.value]


def pid_of(reply: dict[str, Any]) -> int:
    return int(reply["data"]["text"].split()[1].removeprefix("pid="))


class Run:
    """One guarantee's run: its cluster, fake LLM, tool server and mark directory."""

    def __init__(self, cluster: Cluster, guarantee: str) -> None:
        self.cluster = cluster
        self.guarantee = guarantee
        self.eos = guarantee == "exactly_once"
        self.tool = ToolServer()
        self.llm: FakeLLMProc = cluster.start_fake_llm()
        self.marks = cluster.tmp / "marks"
        self.marks.mkdir(parents=True)
        self.data = cluster.tmp / "data"

    def start(self, name: str, data_dir: Path, **env: str) -> Proc:
        return self.cluster.start_worker(
            name,
            data_dir=data_dir,
            args=JOURNALED,
            JOURNALED_TOOL_URL=self.tool.url,
            JOURNALED_MARK_DIR=str(self.marks),
            VIGIL_LLM_API_BASE=self.llm.api_base,
            VIGIL_PROCESSING_GUARANTEE=self.guarantee,
            **env,
        )

    def held_by(self, *procs: Proc) -> dict[str, int]:
        """Hold events waiting in ``procs`` (their steps returned), by event id."""
        for p in self.cluster.procs:
            if p.name.startswith("worker-"):
                assert p.alive() or p.popen.returncode == -9, f"{p.name} exited:\n{p.log()[-3000:]}"
        pids = {p.pid for p in procs}
        got = {}
        for mark in self.marks.iterdir():
            event_id, _, pid = mark.name.partition(".")
            if pid.isdigit() and int(pid) in pids:
                got[event_id] = int(pid)
        return got

    def wait_held(self, *procs: Proc, count: int = len(HOLD), what: str = "") -> dict[str, int]:
        return wait_for(
            lambda: (held := self.held_by(*procs)) and len(held) >= count and held,
            90,
            f"{count} hold events waiting in {[p.name for p in procs]} {what} ({self.guarantee})",
            interval=0.2,
        )

    def clear_marks(self) -> None:
        for mark in self.marks.iterdir():
            mark.unlink()

    def assert_each_step_ran_once(self, when: str) -> None:
        assert dict(self.tool.charges) == dict.fromkeys(EVENTS, 1), f"tool charges {when}"
        stats = self.llm.stats()
        assert stats["received"] == stats["ok"] == len(EVENTS), f"LLM requests {when}: {stats}"

    def scenario(self) -> None:
        cluster = self.cluster
        cluster.create_topics(IN)
        cluster.produce(
            IN,
            [message(s, "hold on", id=f"{s}-1") for s in HOLD]
            + [message(s, "quick", id=f"{s}-1") for s in QUICK],
        )

        # A: both steps of every event recorded; quick events done, hold events waiting.
        # exactly_once: no commit before the kill, so the quick events' outputs, state and the
        # deletion of their journal entries sit in the open transaction the kill leaves behind
        a = self.start("a", self.data, **({"VIGIL_COMMIT_INTERVAL": "600"} if self.eos else {}))
        self.wait_held(a)
        wait_for(
            lambda: len(replies(cluster, committed_only=False)) >= len(QUICK),
            60,
            f"quick replies ({self.guarantee})",
        )
        self.assert_each_step_ran_once("before the first kill")
        a.kill()
        if self.eos:
            assert replies(cluster, committed_only=True) == [], "A's transaction must still be open"

        # B: same data dir; in exactly_once A's transaction is aborted and the tables rebuilt
        # from the committed changelog, where the steps' records are (outside the transaction)
        self.clear_marks()
        b = self.start("b", self.data)
        self.wait_held(b, what="after the restart")
        if self.eos:
            wait_for(
                lambda: len(replies(cluster, committed_only=True)) >= len(QUICK),
                60,
                "the quick events handled again by B, committed",
            )
            rerun = {pid_of(r) for r in replies(cluster, committed_only=False) if r["subject"] in QUICK}
            assert rerun == {a.pid, b.pid}, "B must have run the quick handlers again (A's output aborted)"
        self.assert_each_step_ran_once("after the restart on the same data dir")
        b.kill()

        # C: data dir deleted, state only from the changelog; then D joins (a rebalance)
        shutil.rmtree(self.data)
        self.clear_marks()
        c = self.start("c", self.data, VIGIL_DRAIN_TIMEOUT="1")
        self.wait_held(c, what="with the data dir deleted")
        self.assert_each_step_ran_once("after the restart from the changelog")
        d = self.start("d", self.cluster.tmp / "data-d", VIGIL_DRAIN_TIMEOUT="1")
        moved = wait_for(lambda: set(self.held_by(d)) or None, 90, f"D replaying ({self.guarantee})")
        self.wait_held(c, d, what="after D joined")
        self.assert_each_step_ran_once("after the rebalance")

        (self.marks / "release").touch()
        wait_for(
            lambda: (
                {r["data"]["in_reply_to"] for r in replies(cluster, committed_only=self.eos)} >= set(EVENTS)
            ),
            90,
            f"every event answered ({self.guarantee})",
            interval=0.5,
        )
        self.assert_each_step_ran_once("at the end")
        final = replies(cluster, committed_only=self.eos)
        answered = Counter(r["data"]["in_reply_to"] for r in final)
        assert answered == dict.fromkeys(EVENTS, 1), f"each event's reply emitted once: {answered}"
        assert {r["data"]["text"].split()[0] for r in final} == {"charge=1"}, (
            "a replay returns the first result"
        )
        COUNTS[self.guarantee] = {
            "events": len(EVENTS),
            "llm_requests": self.llm.stats()["received"],
            "tool_requests": sum(self.tool.charges.values()),
            "max_tool_requests_per_event": max(self.tool.charges.values()),
            "replies": len(final),
            "hold_events_moved_to_d": len(moved),
            "workers": 4,
        }

    def close(self) -> None:
        self.tool.close()


def test_steps_run_once_across_sigkill_changelog_restore_and_rebalance(cluster: Cluster) -> None:
    eos_cluster = Cluster(
        cluster.bootstrap, cluster.prefix[:-1] + "e.", cluster.llm_base, cluster.tmp / "eos"
    )
    runs = [Run(cluster, "at_least_once"), Run(eos_cluster, "exactly_once")]
    try:
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(run.scenario) for run in runs]:
                done.result()
    finally:
        for run in runs:
            run.close()
        eos_cluster.stop_all()
    print("journal request counts:", json.dumps(COUNTS, sort_keys=True))
