"""The stall rules: behind and not moving for the deadline is a stall; what holds it decides
whether the guard waits, releases a hold, or resumes the partition."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streams.core.liveness import PartitionView, StallDetector

VIEW = PartitionView(
    agent="probe",
    topic="chat.messages.v1",
    partition=0,
    highwater=40,
    committed=20,
    position=20,
    progress=(None, None),
    buffered=0,
    running=0,
    active=False,
    paused=False,
    flow_active=True,
)


def test_a_partition_behind_that_does_not_move_stalls_after_the_deadline() -> None:
    d = StallDetector(30)
    assert d.stalled([VIEW], 0) == []
    assert d.stalled([VIEW], 29.9) == []
    assert d.stalled([VIEW], 30) == [VIEW]


def test_progress_or_a_moved_commit_restarts_the_clock() -> None:
    d = StallDetector(30)
    d.stalled([VIEW], 0)
    moved = replace(VIEW, progress=(20, 21))
    assert d.stalled([moved], 25) == []
    assert d.stalled([moved], 50) == []
    assert d.stalled([moved], 55) == [moved]
    committed = replace(moved, committed=21)
    assert d.stalled([committed], 60) == []


@pytest.mark.parametrize(("highwater", "committed"), [(20, 20), (None, 20), (0, None)])
def test_a_partition_with_nothing_to_read_never_stalls(highwater: int | None, committed: int | None) -> None:
    d = StallDetector(1)
    idle = replace(VIEW, highwater=highwater, committed=committed)
    d.stalled([idle], 0)
    assert d.stalled([idle], 100) == []


def test_a_revoked_partition_forgets_its_clock_and_restart_gives_a_full_deadline() -> None:
    d = StallDetector(10)
    d.stalled([VIEW], 0)
    d.stalled([], 5)  # revoked
    assert d.stalled([VIEW], 12) == []  # back: a new clock started at 12
    assert d.stalled([VIEW], 22) == [VIEW]
    d.restart(VIEW, 22)
    assert d.stalled([VIEW], 31) == []
    assert d.stalled([VIEW], 32) == [VIEW]


def test_verdicts() -> None:
    assert VIEW.verdict() == "recover"
    assert replace(VIEW, running=1).verdict() == "waiting"
    assert replace(VIEW, buffered=3).verdict() == "waiting"
    held = replace(VIEW, held=frozenset({"in_flight", "circuit_open"}))
    assert held.verdict() == "release"
    assert replace(held, held_valid=frozenset({"circuit_open"})).verdict() == "waiting"
    assert "committed=20 position=20" in VIEW.describe()


def test_caught_up_means_read_up_to_the_highwater() -> None:
    assert not VIEW.caught_up
    assert replace(VIEW, position=40).caught_up
    assert not replace(VIEW, position=None).caught_up


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stall_after"):
        StallDetector(0)
