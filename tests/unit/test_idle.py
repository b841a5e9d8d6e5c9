"""The exit-when-idle rules: read to the end, nothing in the scheduler, everything handled
committed, and nothing moved for the quiet period; and the ``--exit-when-idle`` option."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner

from streams.core.idle import IdleDetector, PartitionIdleView

DONE = PartitionIdleView(
    topic="chat.messages.v1",
    partition=0,
    highwater=50,
    position=50,
    committed=50,
    progress=(49, 50),
    in_scheduler=0,
)


def test_a_drained_committed_partition_is_idle_only_after_the_quiet_period() -> None:
    d = IdleDetector(2.0)
    assert d.check([DONE], 0.0) == "quiet"
    assert d.check([DONE], 1.9) == "quiet"
    assert d.check([DONE], 2.0) == "idle"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"position": 40}, "records left in Kafka"),
        ({"highwater": 60}, "new records arrived"),
        ({"position": None}, "fetch position unknown"),
        ({"highwater": None}, "highwater unknown"),
        ({"in_scheduler": 1}, "a record queued or running"),
    ],
)
def test_a_partition_with_work_left_is_busy_however_long_it_waits(change: dict[str, Any], why: str) -> None:
    d = IdleDetector(2.0)
    view = replace(DONE, **change)
    for now in (0.0, 5.0, 100.0):
        assert d.check([view], now) == "busy", why


def test_finished_records_not_yet_committed_ask_for_a_commit_first() -> None:
    d = IdleDetector(2.0)
    behind = replace(DONE, committed=45)
    d.check([behind], 0.0)
    assert d.check([behind], 2.5) == "commit"
    assert d.check([replace(behind, committed=50)], 2.6) == "idle"  # the commit does not restart the clock


def test_a_partition_nothing_was_handled_from_needs_no_commit() -> None:
    # e.g. a second run that finds no new record: committed at the end already, or never committed
    d = IdleDetector(1.0)
    views = [
        replace(DONE, progress=(None, None), committed=50),
        replace(DONE, partition=1, highwater=0, position=0, progress=(None, None), committed=None),
    ]
    d.check(views, 0.0)
    assert d.check(views, 1.0) == "idle"


def test_transaction_markers_past_the_last_record_do_not_keep_it_busy() -> None:
    # read_committed: the position passes the commit marker, the tracker stops at the last record
    d = IdleDetector(1.0)
    view = replace(DONE, highwater=51, position=51, committed=50, progress=(49, 50))
    d.check([view], 0.0)
    assert d.check([view], 1.0) == "idle"


def test_any_movement_restarts_the_quiet_clock() -> None:
    d = IdleDetector(2.0)
    d.check([DONE], 0.0)
    moved = replace(DONE, highwater=51, position=51, committed=51, progress=(50, 51))  # one came and went
    assert d.check([moved], 1.5) == "quiet"
    assert d.check([moved], 3.0) == "quiet"
    assert d.check([moved], 3.5) == "idle"


def test_an_assignment_change_restarts_the_quiet_clock() -> None:
    d = IdleDetector(2.0)
    d.check([DONE], 0.0)
    both = [DONE, replace(DONE, partition=1)]
    assert d.check(both, 1.9) == "quiet"
    assert d.check(both, 3.8) == "quiet"
    assert d.check(both, 3.9) == "idle"


def test_a_worker_without_partitions_is_idle_after_the_quiet_period() -> None:
    d = IdleDetector(2.0)
    assert d.check([], 10.0) == "quiet"
    assert d.check([], 12.0) == "idle"
    assert d.partitions == 0


def test_not_settled_is_busy_and_restarts_the_clock() -> None:
    d = IdleDetector(2.0)
    d.check([DONE], 0.0)
    assert d.check(None, 1.0) == "busy"  # rebalancing, recovering or stopping
    assert d.check([DONE], 2.5) == "quiet"  # the clock starts at the first settled check
    assert d.check([DONE], 4.4) == "quiet"
    assert d.check([DONE], 4.5) == "idle"


def test_quiet_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="quiet_for"):
        IdleDetector(0)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_exit_when_idle_option_rejects_what_is_not_a_positive_number(value: str) -> None:
    from streams.cli.commands import cli

    result = CliRunner().invoke(cli, ["worker", "--exit-when-idle", value])
    assert result.exit_code == 2
    assert "--exit-when-idle" in result.output


def test_exit_when_idle_option_reaches_run_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.adapter.worker as worker_module
    from streams.cli.commands import cli

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        worker_module, "run_worker", lambda settings, runtime, names, **kw: calls.append((names, kw))
    )
    result = CliRunner().invoke(cli, ["worker", "--agents", "probe", "--exit-when-idle", "2.5"])
    assert result.exit_code == 0, result.output
    assert calls == [(["probe"], {"exit_when_idle": 2.5})]
    result = CliRunner().invoke(cli, ["worker", "--agents", "probe"])
    assert calls[-1] == (["probe"], {"exit_when_idle": None})
