"""``streams.observability.startup``: phases measured from process creation, marked once,
exported as a gauge, logged on one line at the first event that ``parse_line`` reads back."""

from __future__ import annotations

import logging
import time

import pytest

from streams.observability import startup
from streams.observability.metrics import REGISTRY

MODULE_IMPORTED = time.monotonic()


@pytest.fixture(autouse=True)
def fresh_marks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "_marks", {})


def test_marks_count_from_process_creation_and_keep_the_first_time() -> None:
    # this process started before the test ran: its marks are past the interpreter's start
    started_ago = time.clock_gettime(time.CLOCK_BOOTTIME) - startup._STARTED
    startup.mark("imports")
    first = startup.marks()["imports"]
    assert started_ago <= first <= started_ago + 1.0
    assert first > time.monotonic() - MODULE_IMPORTED  # counted from before this module loaded
    time.sleep(0.02)
    startup.mark("imports")  # a later rebalance: the first time stays
    assert startup.marks()["imports"] == first
    assert REGISTRY.get_sample_value("vigil_startup_seconds", {"phase": "imports"}) == first


def test_first_event_logs_one_line_that_parses_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=startup.__name__):
        startup.mark("imports")
        startup.mark("group_join")
        assert not caplog.records  # nothing logged before the first event
        startup.mark("recovery")
        startup.mark(startup.FIRST_EVENT)
        startup.mark(startup.FIRST_EVENT)
    [line] = [r.getMessage() for r in caplog.records]
    parsed = startup.parse_line(f"[2026-01-01] [1] [INFO] {line}\n")
    assert parsed is not None
    assert list(parsed) == ["imports", "group_join", "recovery", startup.FIRST_EVENT]
    marks = startup.marks()
    assert parsed == pytest.approx(marks, abs=1e-3)
    assert parsed["imports"] <= parsed["group_join"] <= parsed["recovery"] <= parsed["first_event"]


def test_parse_line_without_a_startup_line() -> None:
    assert startup.parse_line("worker ready\nnothing here\n") is None
