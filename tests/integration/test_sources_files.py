"""``vigil source files`` against the real broker: a slowly written large file is emitted once,
complete; an atomic rename is emitted at once; a SIGKILL mid-stream and a restart lose no file
and re-emit only with the same ids; /healthz and /metrics answer."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from streams.sources.base import event_id
from tests.support import VIGIL, Cluster, Proc, free_port, start_process, wait_for

pytestmark = pytest.mark.kafka

TOPIC = "files.inbox.v1"


def start_files(cluster: Cluster, name: str, directory: Path, *args: str, **env: str) -> Proc:
    proc = start_process(
        name,
        [*VIGIL, "source", "files", "--name", "inbox", "--dir", str(directory), *args],
        cluster.env(**env),
        cluster.tmp / f"{name}.log",
    )
    cluster.procs.append(proc)
    return proc


def events(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.read_json(TOPIC)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def test_slow_writer_is_emitted_once_complete_and_a_rename_at_once(cluster: Cluster) -> None:
    inbox = cluster.tmp / "in"
    inbox.mkdir()
    staged = cluster.tmp / "ready.csv.tmp"  # outside the watched directory
    staged.write_bytes(b"a,b\n1,2\n")
    port = free_port()
    proc = start_files(cluster, "files-slow", inbox, "--settle", "2", VIGIL_METRICS_PORT=str(port))
    wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "the source's /readyz")
    assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")

    chunk = os.urandom(256 * 1024)
    chunks = 40  # 10 MiB over about 4 s
    renamed_seen_at: list[float] = []

    def watch_for_rename() -> None:  # in its own thread: reading must not slow the writer
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e["subject"] == "ready.csv" for e in events(cluster)):
                renamed_seen_at.append(time.monotonic())
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_for_rename)
    with (inbox / "big.bin").open("wb") as f:
        for n in range(chunks):
            f.write(chunk)
            f.flush()
            if n == 4:
                staged.rename(inbox / "ready.csv")  # atomic: emitted without waiting to settle
                watcher.start()
            time.sleep(0.1)  # the slow writer itself, not a wait for a condition
        assert not [e for e in events(cluster) if e["subject"] == "big.bin"], "emitted before complete"
        finished_at = time.monotonic()
    watcher.join()
    assert renamed_seen_at, "the renamed file was never emitted"
    assert renamed_seen_at[0] < finished_at, "the renamed file waited for the writer and the settle time"

    def big() -> list[dict[str, Any]]:
        return [e for e in events(cluster) if e["subject"] == "big.bin"]

    (event,) = wait_for(big, 30, "the event of big.bin")
    assert event["type"] == "file.created.v1"
    assert event["data"]["size"] == chunks * len(chunk)
    assert event["data"]["sha256"] == sha(chunk * chunks)
    assert event["id"] == event_id("files", "inbox", "big.bin", sha(chunk * chunks))
    # the counters move when the source handles the broker's ack, which may come after a
    # reader already sees the record: wait for them rather than read them once
    sent = 'vigil_source_events_total{outcome="sent",source="files:inbox"} 2.0'
    settled = 'vigil_source_lag{kind="files_pending",source="files:inbox"} 0.0'
    wait_for(
        lambda: all(line in get(f"http://127.0.0.1:{port}/metrics")[1] for line in (sent, settled)),
        15,
        "the source's counters to show both events sent and nothing pending",
    )
    assert proc.stop() == 0
    assert len(events(cluster)) == 2


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_loses_nothing_and_reuses_ids(cluster: Cluster) -> None:
    inbox = cluster.tmp / "in"
    inbox.mkdir()
    contents = {f"d{n // 100}/f{n:03d}.txt": f"file {n}\n".encode() * (n + 1) for n in range(300)}
    args = ("--settle", "0.3")
    env = {"VIGIL_SOURCE_FLUSH_INTERVAL": "1.0"}  # the checkpoint trails the acks: re-emissions

    def write_all() -> None:
        for rel, data in contents.items():
            path = inbox / rel
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            time.sleep(0.01)  # about 100 files/s: the kill lands mid-stream

    writer = threading.Thread(target=write_all)
    port = free_port()
    first = start_files(cluster, "files-1", inbox, *args, **env, VIGIL_METRICS_PORT=str(port))
    wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "the first source's /readyz")
    writer.start()  # the source is up: the writer outlasts the kill
    try:
        cluster.wait_records(TOPIC, 60, timeout=60, procs=[first])
        first.stop(signal.SIGKILL)
    finally:
        writer.join()
    before_kill = events(cluster)  # final: the killed producer sends nothing more
    assert len(before_kill) < 300, "the kill did not land mid-stream"
    sent_before = {e["subject"] for e in before_kill}
    # while the source is down: ten files deleted, one rewritten
    deleted = [f"d0/f{n:03d}.txt" for n in range(10)]
    originals = dict(contents)
    for rel in deleted:
        (inbox / rel).unlink()
        del contents[rel]
    contents["d0/f010.txt"] = b"rewritten while the source was down\n"
    (inbox / "d0/f010.txt").write_bytes(contents["d0/f010.txt"])

    expected = {event_id("files", "inbox", rel, sha(data)) for rel, data in contents.items()}
    optional = {event_id("files", "inbox", "d0/f010.txt", sha(originals["d0/f010.txt"]))}
    for rel in deleted:
        ids = {
            event_id("files", "inbox", rel, sha(originals[rel])),
            event_id("files", "inbox", rel, sha(originals[rel]), "deleted"),
        }
        # sent before the kill: its delete must follow; never sent: a delete is allowed, not required
        (expected if rel in sent_before else optional).update(ids)

    second = start_files(cluster, "files-2", inbox, *args, **env)

    def all_ids() -> set[str] | None:
        assert second.alive(), second.log()
        ids = {e["id"] for e in events(cluster)}
        return ids if expected <= ids else None

    ids = wait_for(all_ids, 60, "every expected event after the restart")
    assert ids - optional == expected - optional, f"unexpected ids: {sorted(ids - expected - optional)[:5]}"
    assert sent_before & set(deleted), "no deleted file had been sent before the kill"
    records = events(cluster)
    by_id: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for e in records:
        by_id[e["id"]].add((e["subject"], e["type"], e["data"]["sha256"]))
    assert all(len(v) == 1 for v in by_id.values()), "an id was reused for a different event"
    deletes = {e["subject"] for e in records if e["type"] == "file.deleted.v1"}
    assert {rel for rel in deleted if rel in sent_before} <= deletes <= set(deleted)
    duplicates = len(records) - len(ids)

    # a clean stop writes the checkpoint: a third start emits nothing old
    assert second.stop() == 0
    before = len(records)
    third = start_files(cluster, "files-3", inbox, *args)
    (inbox / "late.txt").write_bytes(b"late")
    wait_for(lambda: any(e["subject"] == "late.txt" for e in events(cluster)), 30, "late.txt")
    assert third.stop() == 0
    assert len(events(cluster)) == before + 1
    print(json.dumps({"records": len(records), "distinct": len(ids), "re_emitted": duplicates}))
