from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams import Settings
from streams.core.settings import Settings as S

VIGIL = str(Path(sys.executable).with_name("vigil"))


def run(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return subprocess.run(
        [VIGIL, *args], capture_output=True, text=True, env={**base, **(env or {})}, input=stdin, timeout=60
    )


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TOPIC_PREFIX", "dev.")
    monkeypatch.setenv("VIGIL_PARTITIONS", "3")
    s = S(_env_file=None)  # type: ignore[call-arg]
    assert s.kafka_bootstrap == "127.0.0.1:9092" and s.app_id == "vigil" and s.partitions == 3
    assert s.topic("chat.messages.v1") == "dev.chat.messages.v1" and s.group_id == "dev.vigil"
    monkeypatch.delenv("VIGIL_TOPIC_PREFIX")
    assert Settings(_env_file=None).topic("x") == "x"  # type: ignore[call-arg]


def test_unreachable_broker_is_one_line_error() -> None:
    result = run("topics", "ls", env={"VIGIL_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ("send", "--type", "chat.message.received.v2", "--subject", "c"),
            "",
            "--type needs --subject and --data",
        ),
        (("send", "--type", "chat.message.received.v2", "--subject", "c", "--data", "{"), "", "not JSON"),
        (
            ("send",),
            '{"type": "chat.message.received.v9", "subject": "c", "data": {}}\n',
            "line 1: unknown version",
        ),
        (("send",), "[1]\n", "line 1: expected a JSON object"),
        (("send", "--raw"), "x\n", "--raw needs --topic"),
        (("tail", "t", "--max", "0"), "", "--max"),
        (("worker", "--agents", "nope"), "", "unknown agent 'nope'"),
    ],
)
def test_bad_arguments(args: tuple[str, ...], stdin: str, message: str) -> None:
    result = run(*args, stdin=stdin, env={"VIGIL_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_invalid_setting_is_reported() -> None:
    result = run("topics", "ls", env={"VIGIL_PARTITIONS": "zero"})
    assert result.returncode == 1 and "invalid setting partitions" in result.stderr


def test_schemas_export(tmp_path: Path) -> None:
    result = run("schemas", "--out", str(tmp_path))
    assert result.returncode == 0
    assert (tmp_path / "chat.message.received.v2.schema.json").exists()
    assert (tmp_path / "envelope.schema.json").exists()
