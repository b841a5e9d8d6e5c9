"""Pure bookkeeping of the soak: what the replies read back say about one run, how long progress
stood still, and the table of all runs. No Kafka, no processes: unit-tested on plain data."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

EXACTLY_ONCE = "exactly_once"


@dataclass(frozen=True)
class Counts:
    """What the output topic says about one run's inputs."""

    inputs: int
    lost: int  # inputs never answered
    duplicate_effects: int  # an extra reply id or sequence for an input; exactly-once: a reply id twice
    redelivered_identical: int  # at-least-once: a reply emitted again, byte for byte the same effect
    out_of_order: int  # subjects whose answered inputs did not get sequences 1..n in input order


def check_replies(
    expected: Mapping[str, Sequence[str]], replies: Iterable[Mapping[str, Any]], guarantee: str
) -> Counts:
    """``expected``: input ids per subject in input order; ``replies``: reply envelopes as read
    back (for exactly-once by a read_committed reader). A reply id that comes back with the same
    input and sequence is a redelivery without a new effect, which at-least-once allows; in
    exactly-once mode a read_committed reader must never see one."""
    copies: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for env in replies:
        copies[env["id"]].append((env["data"]["in_reply_to"], int(env["data"]["sequence"])))
    effects: dict[str, set[tuple[str, int]]] = defaultdict(set)  # input id -> {(reply id, sequence)}
    identical = 0
    for reply_id, seen in copies.items():
        for in_reply_to, sequence in seen:
            effects[in_reply_to].add((reply_id, sequence))
        identical += len(seen) - len(set(seen))
    duplicates = sum(len(e) - 1 for e in effects.values())
    if guarantee == EXACTLY_ONCE:
        duplicates, identical = duplicates + identical, 0
    out_of_order = 0
    for ids in expected.values():
        answered = [(k, min(s for _, s in effects[i])) for k, i in enumerate(ids, 1) if i in effects]
        out_of_order += any(k != sequence for k, sequence in answered)
    inputs = sum(len(ids) for ids in expected.values())
    lost = sum(1 for ids in expected.values() for i in ids if i not in effects)
    return Counts(inputs, lost, duplicates, identical, out_of_order)


def longest_stall(
    produced: Sequence[tuple[float, int]], answered: Sequence[tuple[float, int]], end: float
) -> tuple[float, float]:
    """Longest time, up to ``end``, during which the count of answered inputs did not move while
    some produced input was unanswered, and when it began. Both series are (time, running
    total), times ascending; (0, 0) if progress never waited."""
    events = sorted([(t, 0, n) for t, n in produced] + [(t, 1, n) for t, n in answered])
    made = done = 0
    since = 0.0  # when the current wait for progress began
    longest = (0.0, 0.0)
    for t, kind, n in [*events, (end, 2, 0)]:
        if made > done and t - since > longest[0]:
            longest = (t - since, since)
        if kind == 1:
            if n != done:
                since = t
            done = n
        elif kind == 0:
            if made <= done < n:
                since = t  # unanswered inputs appear: the wait starts now
            made = n
    return longest


def phase_at(marks: Sequence[tuple[float, str]], t: float) -> str:
    """``marks``: (time, what the scenario did), ascending; where ``t`` falls among them."""
    before = [(at, what) for at, what in marks if at <= t]
    if not before:
        return "before the first step"
    at, what = before[-1]
    return f"{t - at:.1f}s after {what}"


@dataclass
class RunResult:
    scenario: str
    guarantee: str
    run: int
    counts: Counts
    wall_seconds: float
    longest_stall_seconds: float
    longest_stall_began: str  # where in the scenario: "3.2s after w3 starts"
    full_progress_seconds: float | None  # from the last fault to all inputs answered; None: never
    stall_timeout: float
    notes: list[str] = field(default_factory=list)
    log_dir: str | None = None  # kept only for failed runs

    @property
    def stalled(self) -> bool:
        return self.full_progress_seconds is None or self.longest_stall_seconds > self.stall_timeout

    @property
    def failed(self) -> bool:
        c = self.counts
        return bool(c.lost or c.duplicate_effects or c.out_of_order or self.stalled)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "stalled": self.stalled, "failed": self.failed}


COLUMNS = [
    ("scenario", "scenario"),
    ("guarantee", "guarantee"),
    ("runs", "runs"),
    ("inputs", "inputs"),
    ("lost", "lost"),
    ("duplicate_effects", "dup effects"),
    ("redelivered_identical", "redelivered identical"),
    ("out_of_order", "out of order"),
    ("stalls", "stalls"),
    ("longest_stall_s", "longest stall s"),
    ("max_full_progress_s", "max s to full progress"),
    ("wall_s_per_run", "wall s/run"),
]


def aggregate(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per scenario x guarantee, in the order they first ran."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.guarantee), []).append(r)
    rows = []
    for (scenario, guarantee), runs in groups.items():
        full = [r.full_progress_seconds for r in runs]
        rows.append(
            {
                "scenario": scenario,
                "guarantee": guarantee,
                "runs": len(runs),
                "inputs": sum(r.counts.inputs for r in runs),
                "lost": sum(r.counts.lost for r in runs),
                "duplicate_effects": sum(r.counts.duplicate_effects for r in runs),
                "redelivered_identical": sum(r.counts.redelivered_identical for r in runs),
                "out_of_order": sum(r.counts.out_of_order for r in runs),
                "stalls": sum(r.stalled for r in runs),
                "longest_stall_s": round(max(r.longest_stall_seconds for r in runs), 1),
                # a run that never got there has no time: the column says so instead of a number
                "max_full_progress_s": None if None in full else round(max(f or 0.0 for f in full), 1),
                "wall_s_per_run": round(sum(r.wall_seconds for r in runs) / len(runs), 1),
            }
        )
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "never" if value is None else str(value)

    cells = [[title for _, title in COLUMNS]] + [[cell(row[key]) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [
        " | ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def exit_code(results: Sequence[RunResult]) -> int:
    return 1 if any(r.failed for r in results) else 0
