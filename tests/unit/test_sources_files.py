"""The files source without a broker: globs, the settle rule, and one source's passes over a
real temporary directory with its emits recorded."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from schemas import Envelope
from streams.cli import cli
from streams.core.errors import ConfigError
from streams.core.settings import Settings
from streams.sources.base import event_id
from streams.sources.files import FilesConfig, FilesSource, Stat, matches, settled
from tests.support import REPO, VIGIL


def test_globs_match_the_relative_path_or_a_bare_name() -> None:
    assert matches("a/b/c.csv", ("*.csv",), ())
    assert matches("a/b/c.csv", ("a/*",), ())  # * crosses /
    assert not matches("a/b/c.txt", ("*.csv",), ())
    assert not matches("a/.c.csv.part", (), ("*.part",))
    assert not matches("tmp/x.csv", ("*.csv",), ("tmp/*",))
    assert matches("anything", (), ())


def test_settle_rule() -> None:
    s = 10**9
    written = Stat(size=5, mtime_ns=100 * s, ctime_ns=100 * s)
    assert not settled(written, pending_since=0.0, settle=2, now_mono=1.0, now_ns=101 * s)
    assert settled(written, pending_since=0.0, settle=2, now_mono=1.0, now_ns=102 * s)  # mtime age
    assert settled(written, pending_since=0.0, settle=2, now_mono=2.0, now_ns=100 * s)  # seen unchanged
    renamed = Stat(size=5, mtime_ns=90 * s, ctime_ns=100 * s)
    assert settled(renamed, pending_since=0.0, settle=2, now_mono=0.0, now_ns=100 * s)


class Acks:
    """Acknowledges every send at once; keeps the checkpoint records written."""

    def __init__(self) -> None:
        self.written: list[tuple[str, Any]] = []

    async def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> Any:
        assert key is not None
        self.written.append((key.decode(), None if value is None else json.loads(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class Recording(FilesSource):
    """Events recorded instead of produced; checkpoint writes go to ``Acks``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Envelope[Any]] = []
        self.acks = Acks()
        self._producer = self.acks  # type: ignore[assignment]

    async def emit(
        self, topic: str, event: Envelope[Any], *, checkpoint: Mapping[str, Any] | None = None
    ) -> None:
        assert topic == "files.inbox.v1"
        self.sent.append(event)
        self.stage(checkpoint or {})


def source(root: Path, **config: Any) -> Recording:
    src = Recording("inbox", FilesConfig(directory=root, settle=0.0, **config), Settings())
    src.check()
    return src


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_created_modified_unchanged_deleted(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.csv").write_bytes(b"one")
    (tmp_path / "skip.tmp").write_bytes(b"x")
    src = source(tmp_path, exclude=("*.tmp",))
    await src.step(scan=True)
    (created,) = src.sent
    assert (created.type, created.subject) == ("file.created.v1", "sub/a.csv")
    assert created.id == event_id("files", "inbox", "sub/a.csv", sha(b"one"))
    assert created.data.model_dump(mode="json")["size"] == 3

    await src.step(scan=True)  # nothing changed: nothing sent
    path = tmp_path / "sub" / "a.csv"
    path.write_bytes(b"one")  # same content, new mtime: the cursor moves, no event
    os.utime(path, ns=(1, 1))
    await src.step(scan=True)
    assert len(src.sent) == 1
    assert src.checkpoint.get("sub/a.csv")["mtime_ns"] == 1

    path.write_bytes(b"two!")
    await src.step(scan=True)
    modified = src.sent[-1]
    assert (modified.type, modified.id) == (
        "file.modified.v1",
        event_id("files", "inbox", "sub/a.csv", sha(b"two!")),
    )

    path.unlink()
    await src.step(scan=True)
    deleted = src.sent[-1]
    assert deleted.type == "file.deleted.v1"
    assert deleted.data.model_dump(mode="json")["sha256"] == sha(b"two!")  # the last emitted version
    assert "sub/a.csv" not in src.checkpoint
    assert len(src.sent) == 3


async def test_a_file_still_being_written_waits(tmp_path: Path) -> None:
    src = Recording("inbox", FilesConfig(directory=tmp_path, settle=30.0), Settings())
    src.check()
    (tmp_path / "growing.bin").write_bytes(b"x" * 10)
    await src.step(scan=True)
    assert src.sent == []
    assert list(src.pending) == ["growing.bin"]
    # an atomic rename into the directory keeps the old mtime: emitted at once
    staged = tmp_path.parent / f"{tmp_path.name}-staging.bin"
    staged.write_bytes(b"done")
    os.utime(staged, ns=(10**9, 10**9))
    staged.rename(tmp_path / "done.bin")
    await src.step(scan=True)
    assert [e.subject for e in src.sent] == ["done.bin"]


async def test_a_restart_with_the_same_cursor_emits_nothing_again(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    first = source(tmp_path)
    await first.step(scan=True)
    again = source(tmp_path)
    again.checkpoint.stage(dict(first.checkpoint.items()))  # what the topic would hold
    await again.step(scan=True)
    assert len(first.sent) == 1
    assert again.sent == []


async def test_intents_are_durable_before_the_events(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    src = source(tmp_path)
    await src.step(scan=True)
    digest = sha(b"a")
    assert src.acks.written[0][0] == "a"
    assert src.acks.written[0][1]["pending"] == "file.created.v1"  # written before the send
    assert len(src.sent) == 1
    await src.flush()
    assert src.acks.written[-1] == (
        "a",
        {"size": 1, "mtime_ns": os.stat(tmp_path / "a").st_mtime_ns, "sha256": digest},
    )


async def test_after_a_crash_an_intent_is_sent_again_or_deleted(tmp_path: Path) -> None:
    (tmp_path / "kept").write_bytes(b"k")
    st = os.stat(tmp_path / "kept")
    src = source(tmp_path)
    # what a source SIGKILLed between its sends and its checkpoint left behind
    src.checkpoint.stage(
        {
            "kept": {
                "size": 1,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha(b"k"),
                "pending": "file.modified.v1",
            },
            "gone": {"size": 1, "mtime_ns": 1, "sha256": sha(b"g"), "pending": "file.created.v1"},
        }
    )
    await src.step(scan=True)
    by_subject = {e.subject: e for e in src.sent}
    assert by_subject["kept"].type == "file.modified.v1"  # same type and id as before the crash
    assert by_subject["kept"].id == event_id("files", "inbox", "kept", sha(b"k"))
    assert by_subject["gone"].type == "file.deleted.v1"  # a delete is never lost
    assert by_subject["gone"].id == event_id("files", "inbox", "gone", sha(b"g"), "deleted")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_directory_is_one_line(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "x"
    if kind == "file":
        target.write_text("")
    with pytest.raises(ConfigError, match=r"cannot watch .*: (no such directory|not a directory)"):
        source(target)
    result = CliRunner().invoke(cli, ["source", "files", "--name", "n", "--dir", str(target)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: cannot watch ")


def test_unreadable_directory_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_METRICS_PORT="0", LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONPATH=str(REPO))
    try:
        out = subprocess.run(
            [*prefix, *VIGIL, "source", "files", "--name", "n", "--dir", str(locked)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        locked.chmod(0o700)
    assert out.returncode == 1, out
    assert out.stderr == f"Error: cannot watch {locked}: Permission denied\n"


def test_bad_schedule_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('[[schedule]]\nname = "a"\ncron = "* * * * *"\ntimezone = "Nowhere/City"\n')
    result = CliRunner().invoke(cli, ["source", "schedules", "--config", str(config)])
    assert result.exit_code == 1
    assert (
        result.output
        == f"Error: {config}: schedule 'a': timezone: unknown time zone 'Nowhere/City' (an IANA name such as Europe/Berlin)\n"
    )
