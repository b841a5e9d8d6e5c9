"""The files demo agent (agents/file_watch.py): bound to files.inbox.v1 by name, opt-in, one
counter per path, one summary line per created file."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

import agents  # noqa: F401 - declares note_file
from agents.file_watch import FileState, note_file
from schemas import Envelope, FileCreatedV1
from streams import runtime
from streams.core import topics
from streams.core.errors import ConfigError


def test_files_topics_resolve_by_name() -> None:
    spec = topics.by_name("files.inbox.v1")
    assert spec.types == ("file.created", "file.modified", "file.deleted")
    assert topics.by_name("files.a.b.v1").name == "files.a.b.v1"  # a source name may hold dots
    for name in ("files.v1", "files..v1", "files.inbox.v2", "file.inbox.v1", "files.inbox"):
        with pytest.raises(ConfigError):
            topics.by_name(name)


def test_note_file_consumes_created_files_of_the_inbox_and_is_opt_in() -> None:
    spec = runtime.agents["note_file"]
    assert (spec.topic, spec.payload.event_type, spec.state) == (
        "files.inbox.v1",
        "file.created.v1",
        FileState,
    )
    assert "note_file" not in {s.name for s in runtime.select(None)}
    assert [s.name for s in runtime.select(["note_file"])] == ["note_file"]


def created(path: str, content_sha: str, size: int, id: str) -> Envelope[FileCreatedV1]:
    data = FileCreatedV1(path=path, size=size, sha256=content_sha, mtime=datetime(2026, 1, 1, tzinfo=UTC))
    return Envelope[FileCreatedV1](
        id=id, source="vigil/files/inbox", type="file.created.v1", subject=path, data=data
    )


async def test_one_counter_per_path_and_a_summary_line(caplog: pytest.LogCaptureFixture) -> None:
    states: dict[str, FileState] = {}

    async def handle(event: Envelope[FileCreatedV1]) -> None:
        # the runtime hands the handler the state of the event's subject (the path)
        ctx = SimpleNamespace(state=states.setdefault(event.subject, FileState()))
        await note_file(event, ctx)  # type: ignore[arg-type]

    caplog.set_level(logging.INFO, logger="agents.file_watch")
    await handle(created("a.csv", "1" * 64, 10, "e1"))
    await handle(created("b/c.txt", "2" * 64, 20, "e2"))
    await handle(created("a.csv", "3" * 64, 30, "e3"))  # deleted, then created again
    assert states["a.csv"] == FileState(created=2, size=30, sha256="3" * 64)
    assert states["b/c.txt"] == FileState(created=1, size=20, sha256="2" * 64)
    assert [r.getMessage() for r in caplog.records] == [
        f"note_file: inbox/a.csv created (#1) size=10 sha256={'1' * 12}",
        f"note_file: inbox/b/c.txt created (#1) size=20 sha256={'2' * 12}",
        f"note_file: inbox/a.csv created (#2) size=30 sha256={'3' * 12}",
    ]
