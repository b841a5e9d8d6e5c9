"""A file dropped in a watched directory wakes an agent, on the real broker: ``vigil source files``
and a worker running ``note_file``; the path's counter survives a delete (skipped by the agent,
not dead-lettered) and counts the re-created file as its second."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support import VIGIL, Cluster, Proc, start_process, wait_for

pytestmark = pytest.mark.kafka


def stage(staging: Path, name: str, content: bytes) -> Path:
    """Written outside the watched directory ahead of time: a rename in the same kernel clock
    tick as the write would leave ctime == mtime and wait out the settle time."""
    tmp = staging / name
    tmp.write_bytes(content)
    return tmp


def line_of(worker: Proc, text: str) -> str | None:
    assert worker.alive(), f"the worker exited:\n{worker.log()[-3000:]}"
    return next((line for line in worker.log().splitlines() if text in line), None)


def test_a_dropped_file_wakes_note_file_and_counts_per_path(cluster: Cluster) -> None:
    inbox, staging = cluster.tmp / "inbox", cluster.tmp / "staging"
    inbox.mkdir()
    staging.mkdir()
    first, again = b"id,total\n1,10\n", b"id,total\n1,11\n"
    staged = [stage(staging, n, c) for n, c in [("a1", first), ("b", b"id,total\n2,20\n"), ("a2", again)]]
    source = start_process(
        "files-inbox",
        [*VIGIL, "source", "files", "--name", "inbox", "--dir", str(inbox)],
        cluster.env(),
        cluster.tmp / "source.log",
    )
    cluster.procs.append(source)
    worker = cluster.start_worker(args=["--agents", "note_file"])

    staged[0].rename(inbox / "a.csv")  # an atomic rename: emitted at once
    staged[1].rename(inbox / "b.csv")
    line = wait_for(lambda: line_of(worker, "note_file: inbox/a.csv created (#1)"), 60, "a.csv's line")
    assert f"size=14 sha256={hashlib.sha256(first).hexdigest()[:12]}" in line
    wait_for(lambda: line_of(worker, "note_file: inbox/b.csv created (#1)"), 30, "b.csv's line")

    (inbox / "a.csv").unlink()
    wait_for(
        lambda: [e for e in cluster.read_json("files.inbox.v1") if e["type"] == "file.deleted.v1"],
        30,
        "a.csv's file.deleted.v1",
    )
    staged[2].rename(inbox / "a.csv")
    line = wait_for(lambda: line_of(worker, "note_file: inbox/a.csv created (#2)"), 30, "a.csv again")
    assert f"sha256={hashlib.sha256(again).hexdigest()[:12]}" in line
    assert [e["type"] for e in cluster.read_json("files.inbox.v1")].count("file.created.v1") == 3
    assert not cluster.read("dlq.note_file"), "the delete was dead-lettered instead of skipped"
    assert source.stop() == 0 and worker.stop() == 0
