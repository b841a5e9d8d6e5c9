"""Cold-start phases of a worker process: ``mark(phase)`` records, once per phase, the seconds
since the process was created (not since this module was imported), exports them as the gauge
``vigil_startup_seconds{phase}`` and, at the first event handled, logs every phase on one line
(``parse_line`` reads it back; ``ops/bench`` does).

Phases, in the order a worker reaches them: ``imports`` (the CLI's modules loaded),
``group_join`` (partitions assigned), ``recovery`` (tables recovered, stream partitions about
to be fetched), ``first_event`` (the first record handled). A phase marked again (a later
rebalance) keeps its first time.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from prometheus_client import Gauge

from streams.observability.metrics import REGISTRY

log = logging.getLogger(__name__)

FIRST_EVENT = "first_event"
LOG_PREFIX = "vigil startup:"

STARTUP_SECONDS = Gauge(
    "vigil_startup_seconds",
    "Seconds from process creation to the end of each cold-start phase "
    "(imports, group_join, recovery, first_event)",
    ["phase"],
    registry=REGISTRY,
)


def _process_started() -> float:
    """Process creation time on the ``CLOCK_BOOTTIME`` scale, from ``/proc/self/stat``
    (clock ticks since boot); where that is missing, now (the time of this import)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the comm field
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _now()


def _now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_STARTED = _process_started()
_marks: dict[str, float] = {}


def mark(phase: str) -> None:
    """Record the end of ``phase`` (first call only; later calls return at once)."""
    if phase in _marks:
        return
    seconds = _now() - _STARTED
    _marks[phase] = seconds
    STARTUP_SECONDS.labels(phase).set(seconds)
    if phase == FIRST_EVENT:
        log.info("%s %s", LOG_PREFIX, format_marks(_marks))


def marks() -> dict[str, float]:
    """The phases marked so far, seconds since process creation."""
    return dict(_marks)


def format_marks(values: dict[str, float]) -> str:
    return " ".join(f"{phase}={seconds:.3f}s" for phase, seconds in values.items())


_PAIR = re.compile(r"(\w+)=([0-9.]+)s")


def parse_line(text: str) -> dict[str, float] | None:
    """The phases of the first startup line in ``text`` (a worker's log), or None."""
    for line in text.splitlines():
        if LOG_PREFIX in line:
            tail = line.split(LOG_PREFIX, 1)[1]
            return {phase: float(seconds) for phase, seconds in _PAIR.findall(tail)}
    return None
