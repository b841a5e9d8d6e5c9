"""The Quix Streams virtualenv: ``.cache/bench/quix-venv`` with ``quixstreams`` pinned (it
brings confluent-kafka, i.e. librdkafka), kept apart from Vigil's venv so neither's
dependencies constrain the other's. Created on first use with ``python -m venv`` and pip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ops.bench.procs import REPO

QUIXSTREAMS = "3.28.1"
VENV = REPO / ".cache" / "bench" / "quix-venv"
_CHECK = "import confluent_kafka, quixstreams; print(quixstreams.__version__)"


def python() -> Path:
    return VENV / "bin" / "python"


def _version() -> str | None:
    if not python().exists():
        return None
    done = subprocess.run([str(python()), "-c", _CHECK], capture_output=True, text=True, timeout=120)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure(say: object = print) -> Path | str:
    """The venv's interpreter, creating or updating the venv if needed; or why it cannot be."""
    if _version() == QUIXSTREAMS:
        return python()
    log = say if callable(say) else print
    log(f"creating {VENV} with quixstreams=={QUIXSTREAMS} (pip, from PyPI)")
    try:
        if not python().exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=300
            )
        pip = [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        done = subprocess.run(
            [*pip, f"quixstreams=={QUIXSTREAMS}"], capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot create {VENV}: {exc!r}"
    if done.returncode != 0:
        return f"pip install quixstreams=={QUIXSTREAMS} failed: {done.stderr.strip()[-500:]}"
    version = _version()
    if version != QUIXSTREAMS:
        return f"{VENV} has quixstreams {version!r} after install, not {QUIXSTREAMS}"
    return python()
