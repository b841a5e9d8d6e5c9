"""ops/deps.sh decides what to install from what is on PATH: run it with a PATH of stubs, so each
case (all present, a tool missing as root and as a user, an old Java, no ensurepip) is real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

DEPS = REPO / "ops/deps.sh"
CORE = ("bash", "dirname", "readlink", "head")  # what the script itself runs besides the tools


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def fake_path(tmp_path: Path) -> Path:
    """A PATH holding the core utilities and stubs of every tool deps.sh looks for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in CORE:
        real = shutil.which(name)
        assert real is not None, name
        (bin_dir / name).symlink_to(real)
    stub(bin_dir, "java", "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2")
    for name in ("mvn", "promtool", "prometheus"):
        stub(bin_dir, name, "exit 0")
    stub(bin_dir, "id", "echo 1000")
    stub(bin_dir, "apt-cache", "exit 0")  # knows every package
    stub(bin_dir, "apt-get", f'echo "$DEBIAN_FRONTEND $*" >> {tmp_path}/apt.log')
    return bin_dir


def run(bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": str(bin_dir), "PYTHON": sys.executable, "VENV": str(bin_dir / "no-venv"), **env}
    return subprocess.run(["/bin/bash", str(DEPS)], env=full, capture_output=True, text=True, timeout=30)


def apt_log(bin_dir: Path) -> list[str]:
    log = bin_dir.parent / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_everything_present_is_a_silent_no_op(fake_path: Path) -> None:
    result = run(fake_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert apt_log(fake_path) == []


def test_a_missing_tool_as_a_user_fails_with_one_line_naming_the_package(fake_path: Path) -> None:
    (fake_path / "promtool").unlink()
    result = run(fake_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "deps: missing Debian package(s) prometheus; install them with: sudo apt-get install -y prometheus"
    ]
    assert apt_log(fake_path) == []


def test_missing_tools_as_root_are_installed_with_apt(fake_path: Path) -> None:
    (fake_path / "mvn").unlink()
    (fake_path / "prometheus").unlink()
    stub(fake_path, "id", "echo 0")
    result = run(fake_path, DEBIAN_FRONTEND="")
    assert result.returncode == 0, result.stderr
    assert apt_log(fake_path) == [" update -q", "noninteractive install -y -q maven prometheus"]


def test_java_older_than_17_or_absent_needs_the_java_package(fake_path: Path) -> None:
    stub(fake_path, "java", "echo 'openjdk version \"11.0.2\" 2019-01-15' >&2")
    assert "install -y openjdk-17-jre-headless" in run(fake_path).stderr
    (fake_path / "java").unlink()
    (fake_path / "apt-cache").unlink()  # a release without openjdk-17 (Debian trixie)
    assert "install -y default-jre-headless" in run(fake_path).stderr


def test_python_without_ensurepip_needs_python3_venv_until_the_venv_exists(fake_path: Path) -> None:
    stub(fake_path, "python3", "exit 1")
    assert "install -y python3-venv" in run(fake_path, PYTHON="python3").stderr
    venv = fake_path.parent / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin/python")
    assert run(fake_path, PYTHON="python3", VENV=str(venv)).returncode == 0
