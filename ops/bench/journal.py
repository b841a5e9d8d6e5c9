"""P7: framework time per journaled step, the LLM and the tool excluded: the ``bench_journal``
agent (``ops.bench.agents``) runs ``STEPS`` no-op ``ctx.step`` calls per event, each timed
around ``ctx.step`` (encode the result, write it to the local store and to the changelog, wait
for the broker's acknowledgement, acks=all), and replies with the times. p50 and p99 over every
step of every event, against the issue's goals (p50 <= 5 ms, p99 <= 15 ms); Restate's ~17 ms
per durable step is the published anchor beside them.

The events arrive as a backlog over ``subjects`` distinct entities, with the worker's default
concurrency (16 subjects in flight): steps of concurrent handlers share the producer, as they
would in production. The reference, in the same run: a bare aiokafka producer (acks=all) in
16 tasks, each sending one record of the same size and awaiting its acknowledgement before the
next, as many as there were steps: what the broker's round trip alone costs here. A second,
smaller pass runs one step at a time in the whole worker (concurrency 1, beside a one-task bare
loop): the framework's own time per step without sibling handlers sharing the event loop. The worker's
own ``vigil_journal_write_seconds`` (the local write plus the changelog acknowledgement inside
each step) is read from its /metrics at the end: the rest of a step's time is encoding and
waiting for the event loop.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ops.bench import procs, report, topics
from ops.bench.context import IN, OUT, Bench, say
from ops.bench.records import BenchError, messages, percentile
from ops.bench.report import AT_MOST
from ops.bench.topics import Record

STEPS = 10
GOAL_P50_MS = 5.0
GOAL_P99_MS = 15.0
RESTATE_STEP_MS = 17.0
CONCURRENCY = 16
RAW = "raw.acks"


def step_times(outputs: list[Record]) -> list[float]:
    """Every step's milliseconds from the replies' texts."""
    out: list[float] = []
    for record in outputs:
        text = json.loads(record.value or b"{}")["data"]["text"]
        out.extend(float(t) for t in text.split())
    return out


async def raw_acks(bench: Bench, topic: str, sends: int, concurrency: int) -> list[float]:
    """Milliseconds per acknowledged send of ``concurrency`` tasks sending one record at a time."""
    producer = topics.new_producer(bench.bootstrap, linger_ms=0)
    await producer.start()
    took: list[float] = []
    value = b"\x00" * 8 + b"3"  # an 8-byte stamp and a no-op step's JSON, as the journal writes

    async def lane(k: int) -> None:
        for n in range(k, sends, concurrency):
            started = time.perf_counter()
            await (await producer.send(topic, value, key=f"\x00j\x00e{n}\x00noop".encode(), partition=n % 6))
            took.append((time.perf_counter() - started) * 1000)

    try:
        await lane(0)  # metadata and connections before the clock matters
        took.clear()
        await asyncio.gather(*(lane(k) for k in range(concurrency)))
    finally:
        await producer.stop()
    return took


def write_buckets(metrics_url: str, agent: str) -> dict[str, float]:
    """Share of the journal's writes at or under each bucket bound (ms), from the worker's
    ``vigil_journal_write_seconds`` histogram."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "vigil_journal_write_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("agent") == agent:
                counts[float(sample.labels["le"])] = sample.value
    total = counts.get(float("inf"), 0.0)
    if not total:
        raise BenchError(f"no vigil_journal_write_seconds for {agent} at {metrics_url}")
    return {
        f"le_{bound * 1000:g}ms": round(n / total, 4)
        for bound, n in sorted(counts.items())
        if bound != float("inf")
    }


@dataclass(frozen=True)
class Pass:
    took: list[float]
    raw: list[float]
    writes: dict[str, float]

    def summary(self) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(self.took), 3),
            "p99_ms": round(percentile(self.took, 99), 3),
            "raw_send_ack_p50_ms": round(statistics.median(self.raw), 3),
            "raw_send_ack_p99_ms": round(percentile(self.raw, 99), 3),
        }


async def one_pass(bench: Bench, name: str, events: int, subjects: int, concurrency: int) -> Pass:
    """A worker at ``concurrency`` on its own topics, then the bare loop at the same."""
    prefix = bench.prefix(name)
    await bench.create(prefix, RAW)
    say(
        f"P7: {events} events x {STEPS} journaled no-op steps, {subjects} subjects, concurrency {concurrency}"
    )
    await bench.send(prefix + IN, messages([f"j{k % subjects}" for k in range(events)]))
    port = procs.free_port()
    worker = bench.start_worker(
        f"worker-{name}",
        prefix,
        bench.workdir / f"data-{name}",
        agent="bench_journal",
        BENCH_JOURNAL_STEPS=str(STEPS),
        VIGIL_CONCURRENCY=str(concurrency),
        VIGIL_METRICS_PORT=str(port),
    )
    outputs = await bench.wait_records(prefix + OUT, {}, events, worker)
    writes = await asyncio.to_thread(write_buckets, f"http://127.0.0.1:{port}/metrics", "bench_journal")
    worker.stop()
    took = step_times(outputs)
    if len(took) != events * STEPS:
        raise BenchError(f"P7: {len(took)} step times from {len(outputs)} replies")
    result = Pass(took, await raw_acks(bench, prefix + RAW, len(took), concurrency), writes)
    say(f"P7: concurrency {concurrency}: {result.summary()}")
    return result


async def measure(bench: Bench) -> dict[str, Any]:
    events = 100 if bench.small else 2_000
    subjects = 50 if bench.small else 500
    main = await one_pass(bench, "journal", events, subjects, CONCURRENCY)
    # one step at a time in the whole worker: the framework's own time, no sibling handlers
    alone = await one_pass(bench, "journal1", max(20, events // 10), subjects, 1)
    took = main.took
    p50, p99 = statistics.median(took), percentile(took, 99)
    raw_p50, raw_p99 = statistics.median(main.raw), percentile(main.raw, 99)
    steps_within = {
        f"le_{b:g}ms": round(sum(t <= b for t in took) / len(took), 4) for b in (GOAL_P50_MS, GOAL_P99_MS)
    }
    return report.entry(
        p50,
        "ms per journaled step (p50)",
        {"goal_p50_ms": GOAL_P50_MS, "restate_step_ms": RESTATE_STEP_MS, "raw_send_ack_p50_ms": raw_p50},
        {"goal_p50_ms": (AT_MOST, 1.0), "p99_vs_goal_p99_ms": (AT_MOST, 1.0)},
        {
            "p50_ms": round(p50, 3),
            "p90_ms": round(percentile(took, 90), 3),
            "p99_ms": round(p99, 3),
            "max_ms": round(max(took), 3),
            "raw_send_ack_p50_ms": round(raw_p50, 3),
            "raw_send_ack_p99_ms": round(raw_p99, 3),
            "steps_within": steps_within,
            "journal_writes_within": main.writes,
            "concurrency_1": {**alone.summary(), "steps": len(alone.took)},
            "goal_p99_ms": GOAL_P99_MS,
            "steps": len(took),
            "events": events,
            "subjects": subjects,
            "concurrency": CONCURRENCY,
            "measured": "around ctx.step in the handler: encode, local write, changelog write acknowledged",
        },
        ratios={"p99_vs_goal_p99_ms": p99 / GOAL_P99_MS, "p99_vs_raw_send_ack_p99": p99 / raw_p99},
    )
