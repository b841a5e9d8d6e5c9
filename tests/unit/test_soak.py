"""The soak's bookkeeping (ops/soak/report.py) on plain data: what counts as lost, a duplicate
effect, a harmless redelivery, out of order, a stall, and how runs add up to the table."""

from __future__ import annotations

from typing import Any

from ops.soak import report
from ops.soak.report import Counts, RunResult

EXPECTED = {"a": ["a-1", "a-2", "a-3"], "b": ["b-1", "b-2"]}


def reply(input_id: str, sequence: int, reply_id: str | None = None) -> dict[str, Any]:
    return {"id": reply_id or f"r-{input_id}", "data": {"in_reply_to": input_id, "sequence": sequence}}


def exact() -> list[dict[str, Any]]:
    return [reply(i, k) for ids in EXPECTED.values() for k, i in enumerate(ids, 1)]


def test_exact_replies_count_nothing() -> None:
    assert report.check_replies(EXPECTED, exact(), "at_least_once") == Counts(5, 0, 0, 0, 0)


def test_an_identical_redelivery_is_harmless_at_least_once_but_a_duplicate_exactly_once() -> None:
    replies = [*exact(), reply("a-2", 2)]
    assert report.check_replies(EXPECTED, replies, "at_least_once") == Counts(5, 0, 0, 1, 0)
    assert report.check_replies(EXPECTED, replies, "exactly_once") == Counts(5, 0, 1, 0, 0)


def test_a_second_effect_for_one_input_is_a_duplicate_and_shifts_the_sequences() -> None:
    # a-2 handled twice (state counted it twice): a new reply id, and a-3 got sequence 4
    replies = [reply("a-1", 1), reply("a-2", 2), reply("a-2", 3, "r-a-2-again"), reply("a-3", 4)]
    replies += [reply("b-1", 1), reply("b-2", 2)]
    assert report.check_replies(EXPECTED, replies, "at_least_once") == Counts(5, 0, 1, 0, 1)


def test_unanswered_inputs_are_lost_and_answered_ones_keep_their_position() -> None:
    replies = [reply("a-1", 1), reply("a-3", 3), reply("b-2", 1)]
    counts = report.check_replies(EXPECTED, replies, "at_least_once")
    assert (counts.lost, counts.out_of_order) == (2, 1)  # b-2 answered as if it were b's first


def test_longest_stall_counts_only_time_with_unanswered_inputs() -> None:
    produced = [(0.0, 10), (50.0, 20)]
    answered = [(2.0, 5), (4.0, 10), (55.0, 15), (90.0, 20)]
    # 0-2 waits, 4-50 has nothing unanswered, 50-55 waits, then 55-90 is the longest
    assert report.longest_stall(produced, answered, end=100.0) == (35.0, 55.0)
    # never answered at all: the wait runs to the end
    assert report.longest_stall([(1.0, 3)], [], end=31.5) == (30.5, 1.0)
    assert report.longest_stall([], [], end=10.0) == (0.0, 0.0)


def test_phase_at_names_the_step_a_time_follows() -> None:
    marks = [(0.0, "w1 starts"), (10.0, "w2 starts")]
    assert report.phase_at(marks, 12.5) == "2.5s after w2 starts"
    assert report.phase_at(marks, -1.0) == "before the first step"


def result(scenario: str, lost: int = 0, stall: float = 1.0, full: float | None = 5.0) -> RunResult:
    counts = Counts(100, lost, 0, 2, 0)
    return RunResult(scenario, "at_least_once", 1, counts, 60.0, stall, "", full, stall_timeout=30.0)


def test_aggregate_sums_per_scenario_and_flags_failures() -> None:
    runs = [result("rebalance"), result("rebalance", stall=31.0), result("sigkill", full=None, lost=3)]
    rows = report.aggregate(runs)
    assert [(r["scenario"], r["runs"], r["inputs"], r["lost"], r["stalls"]) for r in rows] == [
        ("rebalance", 2, 200, 0, 1),
        ("sigkill", 1, 100, 3, 1),  # never reaching full progress is a stall too
    ]
    assert rows[0]["redelivered_identical"] == 4
    assert (rows[0]["longest_stall_s"], rows[0]["max_full_progress_s"]) == (31.0, 5.0)
    assert rows[1]["max_full_progress_s"] is None
    lines = report.table(rows).splitlines()
    assert lines[0].startswith("scenario") and "never" in lines[3]
    assert report.exit_code(runs) == 1
    assert report.exit_code([result("rebalance")]) == 0
