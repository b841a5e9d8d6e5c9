"""One Vigil worker on the P1 input, then more traffic on the same worker:

- P1: no-op agent throughput (the references are measured on the same input by ``peers``);
- P1c (spread): changelog bytes written per event during P1;
- P1h: hot entities (few subjects, a long history each) vs P1, and P1c (hot) for them;
- P3: event age p50/p99 paced at half of P1's rate vs a raw produce->consume in its own process;
- P2: 200 ms handlers, 1,000 subjects, concurrency 128 vs the bound 640/s, per-key order checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from ops.bench import changelog, report, topics
from ops.bench.agents import BenchState
from ops.bench.context import CONCURRENCY, IN, OUT, PARTITIONS, Bench, say
from ops.bench.procs import REPO, GroupWatch, base_env
from ops.bench.records import (
    RECORD_BYTES,
    BenchError,
    check_order,
    event_id,
    messages,
    percentile,
    rate,
    reply_of,
)
from ops.bench.report import AT_LEAST, AT_MOST

SLOW_MS = 200
SLOW_SUBJECTS = 1000
AGE_SUBJECTS = 1000
#: P1c's allowance over the state itself (issue 14: <= state size + 300 B)
CHANGELOG_ALLOWANCE = 300


@dataclass(frozen=True)
class Input:
    prefix: str
    topic: str
    count: int
    subjects: int


def subject_of(k: int, subjects: int) -> str:
    return f"i{k % subjects}"


async def prepare(bench: Bench) -> Input:
    """The P1 input, produced once: every loop of P1, P1q and the ceiling reads it."""
    s = bench.sizes
    p = bench.prefix("pipe")
    await bench.create(p, "raw.age")
    say(
        f"P1: producing {s.records} records of ~{RECORD_BYTES} B, {s.subjects} subjects, {PARTITIONS} partitions"
    )
    await bench.send(p + IN, messages([subject_of(k, s.subjects) for k in range(s.records)]))
    return Input(p, p + IN, s.records, s.subjects)


@dataclass
class Result:
    p1_records_per_s: float
    #: group Stable -> first handler start with an empty table (P4's baseline)
    ready_after_assignment_empty_s: float
    figures: dict[str, Any]


async def measure(bench: Bench, source: Input) -> Result:
    s = bench.sizes
    p = source.prefix
    t_out = p + OUT
    group = bench.group(p)
    watch = GroupWatch(bench.bootstrap, bench.agent_group(p))
    watch.start()
    say("P1: starting the Vigil worker on the backlog")
    worker = bench.start_worker("worker-pipeline", p, bench.workdir / "data-pipeline")
    outputs = await bench.wait_records(t_out, {}, source.count, worker)
    ready_gap = min(reply_of(r).started for r in outputs) - await watch.stop()
    p1 = rate(outputs)
    bench.order_problems += check_order(await topics.read_range(bench.bootstrap, source.topic), outputs)
    say(f"P1: vigil {p1:.0f}/s")
    spread_end = await changelog.settle(bench.bootstrap, group)
    spread = await changelog.written(bench.bootstrap, {}, spread_end)
    figures: dict[str, Any] = {}

    # P1h: hot entities, on the same worker (so both sides have a warm process)
    n_hot = s.hot_subjects * s.hot_per_subject
    say(f"P1h: {s.hot_subjects} subjects x {s.hot_per_subject} records")
    in_start = await topics.end_offsets(bench.bootstrap, source.topic)
    out_start = await topics.end_offsets(bench.bootstrap, t_out)
    await bench.send(source.topic, messages([f"h{k % s.hot_subjects}" for k in range(n_hot)]))
    hot_out = await bench.wait_records(t_out, out_start, n_hot, worker)
    hot = rate(hot_out)
    bench.order_problems += check_order(
        await topics.read_range(bench.bootstrap, source.topic, in_start), hot_out
    )
    hot_end = await changelog.settle(bench.bootstrap, group)
    hot_written = await changelog.written(bench.bootstrap, spread_end, hot_end)
    say(f"P1h: vigil {hot:.0f}/s")
    figures["P1h"] = report.entry(
        hot,
        "records/s",
        {"P1": p1},
        {"P1": (AT_LEAST, 0.9)},
        {"subjects": s.hot_subjects, "records_per_subject": s.hot_per_subject, "records": n_hot},
    )
    figures["P1c"] = changelog_figure(
        spread, source.count, source.count / source.subjects, hot_written, n_hot, s
    )

    figures["P3"] = await event_age(bench, source, worker, p1)
    figures["P2"] = await slow_handlers(bench, source, worker)
    worker.kill()  # nothing reads this worker's state again
    return Result(p1, ready_gap, figures)


def changelog_figure(
    spread: changelog.Written,
    spread_events: int,
    spread_history: float,
    hot: changelog.Written,
    hot_events: int,
    s: Any,
) -> dict[str, Any]:
    """Bytes per event, hot vs spread, against the state itself + 300 B. The state size is
    the bench state's JSON at the hot entities' final count (the largest it gets here)."""
    state_bytes = len(BenchState(handled=s.hot_per_subject).model_dump_json())
    budget = state_bytes + CHANGELOG_ALLOWANCE
    per_hot = hot.bytes / hot_events
    per_spread = spread.bytes / spread_events
    return report.entry(
        per_hot,
        "changelog bytes/event (hot entities)",
        {"state_plus_300B": budget, "spread": per_spread},
        {"state_plus_300B": (AT_MOST, 1.0), "spread": (AT_MOST, 1.1)},
        {
            "hot_bytes_per_event": round(per_hot, 1),
            "hot_records_per_event": round(hot.records / hot_events, 3),
            "hot_history_per_subject": s.hot_per_subject,
            "spread_bytes_per_event": round(per_spread, 1),
            "spread_records_per_event": round(spread.records / spread_events, 3),
            "spread_history_per_subject": spread_history,
            "spread_vs_budget": round(per_spread / budget, 4),
            "state_bytes": state_bytes,
            "hot_bytes_by_topic": hot.by_topic,
        },
    )


async def event_age(bench: Bench, source: Input, worker: Any, p1: float) -> dict[str, Any]:
    s = bench.sizes
    p = source.prefix
    t_out = p + OUT
    age_rate = p1 / 2
    count = max(100, int(age_rate * s.age_seconds))
    say(f"P3: event age at {age_rate:.0f}/s (half of P1), {count} records")
    in_start = await topics.end_offsets(bench.bootstrap, source.topic)
    out_start = await topics.end_offsets(bench.bootstrap, t_out)
    await bench.send_paced(source.topic, messages([f"a{k % AGE_SUBJECTS}" for k in range(count)]), age_rate)
    outputs = await bench.wait_records(t_out, out_start, count, worker)
    stamp = {
        event_id(r): r.timestamp for r in await topics.read_range(bench.bootstrap, source.topic, in_start)
    }
    vigil_ages = [(x.started * 1000 - stamp[x.in_reply_to]) for x in map(reply_of, outputs)]
    raw_ages = await raw_ages_of(bench, p + "raw.age", count, age_rate)
    vigil_p99, raw_p99 = percentile(vigil_ages, 99), percentile(raw_ages, 99)
    details = {
        "records_per_s": round(age_rate, 1),
        "records": count,
        # below records_per_s: the worker fell behind and the ages include a growing backlog
        "vigil_output_records_per_s": round(rate(outputs), 1),
        "vigil_p50_ms": round(percentile(vigil_ages, 50), 2),
        "raw_aiokafka_p50_ms": round(percentile(raw_ages, 50), 2),
    }
    say(f"P3: p99 vigil {vigil_p99:.1f} ms, raw {raw_p99:.1f} ms")
    return report.entry(
        vigil_p99,
        "ms (event age p99)",
        {"raw_aiokafka_p99": raw_p99},
        {"raw_aiokafka_p99": (AT_MOST, 2.0)},
        details,
    )


async def raw_ages_of(bench: Bench, topic: str, count: int, per_second: float) -> list[float]:
    """A plain consumer in its own process, fed by the same paced producer as the worker."""
    args = [sys.executable, "-m", "ops.bench.raw", "age"]
    args += ["--bootstrap", bench.bootstrap, "--topic", topic, "--count", str(count)]
    proc = await asyncio.create_subprocess_exec(
        *args, env=base_env(), cwd=REPO, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise BenchError(f"raw age consumer did not start: {line!r}")
        await bench.send_paced(topic, messages([f"a{k % AGE_SUBJECTS}" for k in range(count)]), per_second)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return [float(x) for x in json.loads(out)]
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
            await proc.wait()


async def slow_handlers(bench: Bench, source: Input, worker: Any) -> dict[str, Any]:
    n = bench.sizes.slow_records
    t_out = source.prefix + OUT
    say(f"P2: {n} records, {SLOW_MS} ms handlers, {SLOW_SUBJECTS} subjects, concurrency {CONCURRENCY}")
    in_start = await topics.end_offsets(bench.bootstrap, source.topic)
    out_start = await topics.end_offsets(bench.bootstrap, t_out)
    await bench.send(source.topic, messages([f"s{k % SLOW_SUBJECTS}" for k in range(n)], f"sleep={SLOW_MS};"))
    outputs = await bench.wait_records(t_out, out_start, n, worker)
    slow = rate(outputs)
    problems = check_order(await topics.read_range(bench.bootstrap, source.topic, in_start), outputs)
    bench.order_problems += problems
    bound = CONCURRENCY / (SLOW_MS / 1000)
    say(f"P2: {slow:.0f}/s of {bound:.0f}/s; order {'ok' if not problems else 'BROKEN'}")
    figure = report.entry(
        slow,
        "records/s",
        {"bound": bound},
        {"bound": (AT_LEAST, 0.9)},
        {
            "records": n,
            "subjects": SLOW_SUBJECTS,
            "handler_ms": SLOW_MS,
            "concurrency": CONCURRENCY,
            "order_ok": not problems,
        },
    )
    figure["met"] = figure["met"] and not problems
    return figure
