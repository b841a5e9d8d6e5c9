"""``python -m ops.bench [--small]``: one JSON object, every figure of issue 14 as a ratio to a
reference measured in the same run, on the same broker, topics (6 partitions) and records.

| key | Vigil | reference(s) | goal |
|---|---|---|---|
| P1 | no-op agent throughput | raw aiokafka loop; plain Faust + RocksDB counter | >= 0.25; >= 2.5 |
| P1h | the same, 30 subjects x 1,000 records | P1 | >= 0.9 |
| P1c | changelog bytes per event, hot entities | state size + 300 B; the spread case | <= 1; <= 1.1 |
| P2 | 200 ms handlers, 1,000 subjects, concurrency 128, order checked | 640/s | >= 0.9 |
| P3 | event age p99 at half of P1's rate | raw produce->consume p99 | <= 2 |
| P4 | recovery after deleting the data dir, state checked | raw changelog read | >= 0.7 |
| P5 | RSS with 1,000,000 states | RSS with 100,000 | <= 1.5 |
| P7 | framework time per journaled step (no LLM, no tool), p50 / p99 | 5 ms / 15 ms (Restate ~17 ms beside) | <= 1 |
| P8 | exactly_once throughput | P1 (at_least_once) | >= 0.7 |
| P9 | process start to first event, tables present, median | 2 s (Quix's start beside it) | <= 1 |
| P1q | P1 | a Quix Streams app doing the same work | report |
| ceiling | P1 | bare aiokafka vs confluent-kafka decode loops | report |
| G1 | signed GitHub webhooks/s through `vigil gateway` (acks=all) | a bare aiohttp handler checking the HMAC | >= 0.5 |
| vi_llm | CPU per call of Vigil's LLM client | litellm, Router, raw aiohttp | (extra) |

Phases live in their own modules: ``pipeline`` (P1, P1c, P1h, P3, P2), ``peers`` (the P1
references, P1q, the ceiling), ``guarantee`` (P8), ``state`` (P4, P9, P5), ``journal`` (P7),
``llm`` (vi_llm); ``report`` gives every entry its shape. Rates come from the output topics'
timestamps, never from logs. Progress goes to stderr, the JSON to stdout; exit 1 if per-key order broke or a
recovered state was wrong, 2 if the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python ops/bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench import gateway, guarantee, journal, llm, peers, pipeline, report
from ops.bench.context import Bench, Sizes, say
from ops.bench.records import BenchError
from ops.bench.report import AT_LEAST
from ops.bench.state import StatePhase

FULL = Sizes(
    records=100_000,
    subjects=10_000,
    hot_subjects=30,
    hot_per_subject=1_000,
    eos_records=30_000,
    age_seconds=15.0,
    slow_records=10_000,
    entities=100_000,
    entities_large=1_000_000,
    cold_starts=3,
    llm_calls=300,
    peers=True,
)
SMALL = Sizes(
    records=3_000,
    subjects=300,
    hot_subjects=30,
    hot_per_subject=60,
    eos_records=1_000,
    age_seconds=2.0,
    slow_records=1_000,
    entities=20_000,
    entities_large=0,
    cold_starts=1,
    llm_calls=20,
    peers=False,
)
PARTS = ["pipeline", "state", "journal", "gateway", "llm"]


def throughput_figures(p1: float, refs: peers.References, sizes: Sizes) -> dict[str, Any]:
    """P1 (against raw aiokafka and plain Faust), P1q (against Quix) and the ceiling."""
    rates = refs.rates
    out: dict[str, Any] = {
        "P1": report.entry(
            p1,
            "records/s",
            {"raw_aiokafka": rates["raw_aiokafka"], "faust": rates["faust"]},
            {"raw_aiokafka": (AT_LEAST, 0.25), "faust": (AT_LEAST, 2.5)},
            {"records": sizes.records, "subjects": sizes.subjects, "record_bytes": 300, "partitions": 6},
        )
    }
    if "quix" in rates:
        out["P1q"] = report.entry(
            p1,
            "records/s",
            {"quix": rates["quix"]},
            {"quix": None},
            {"quix_first_output_s": round(refs.quix_first_output_s or 0.0, 3)},
        )
    else:
        out["P1q"] = report.skipped(refs.skipped.get("quix", "not measured"))
    if "aiokafka_loop" in rates and "confluent_loop" in rates:
        a, c = rates["aiokafka_loop"], rates["confluent_loop"]
        out["ceiling"] = report.entry(
            p1,
            "records/s",
            {"aiokafka_loop": a, "confluent_loop": c},
            {"confluent_loop": None},
            {"loop": "consume, json decode, count per key, one JSON reply, acks=all, commit per batch"},
            ratios={"aiokafka_loop_vs_confluent_loop": a / c},
        )
    else:
        out["ceiling"] = report.skipped(refs.skipped.get("confluent_loop", "not measured"))
    return out


async def gateway_figure(bench: Bench) -> dict[str, Any]:
    """G1 (issue 15): signed GitHub webhooks/s through ``vigil gateway`` (acks=all, 202 after
    the ack) vs a bare aiohttp handler that checks the HMAC and answers 202 without Kafka."""
    say("G1: webhook gateway vs a bare HMAC-checking handler")
    got = await gateway.measure(bench.bootstrap, seconds=2.0 if bench.small else 10.0)
    return report.entry(
        got["gateway_requests_per_s"],
        "requests/s",
        {"bare_handler": got["bare_requests_per_s"]},
        {"bare_handler": (AT_LEAST, 0.5)},
        {k: v for k, v in got.items() if k not in ("gateway_vs_bare", "goal")},
    )


async def run_all(bench: Bench, parts: Sequence[str], keep_topics: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": "small" if bench.small else "full"}
    started = time.monotonic()
    await bench.start()
    try:
        if "pipeline" in parts or "state" in parts:
            source = await pipeline.prepare(bench)
            refs = await peers.measure(bench, source)
            pipe = await pipeline.measure(bench, source)
            result.update(throughput_figures(pipe.p1_records_per_s, refs, bench.sizes))
            result.update(pipe.figures)
            state_prefix = bench.prefix("state")
            eos = await guarantee.measure(bench, state_prefix, pipe.p1_records_per_s)
            result["P8"] = eos.figure
            if "state" in parts:
                phase = StatePhase(
                    bench,
                    state_prefix,
                    guarantee.TEMPLATE,
                    eos.template_sequence,
                    pipe.ready_after_assignment_empty_s,
                    refs.quix_first_output_s,
                )
                result.update(await phase.measure())
        if "journal" in parts:
            result["P7"] = await journal.measure(bench)
        if "gateway" in parts:
            result["G1"] = await gateway_figure(bench)
        if "llm" in parts:
            result["vi_llm"] = await llm.measure(bench)
    finally:
        await bench.close()
        if not keep_topics:
            await bench.delete_topics()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--small", action="store_true", help="quick mode (CI): fewer records, no Quix, no 1M states"
    )
    parser.add_argument("--bootstrap", default=os.environ.get("VIGIL_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only these parts (pipeline: P1 P1h P1c P1q P2 P3 P8 ceiling; state: the same plus P4 P5 P9, "
        "which need P1's changelog; journal: P7; llm: vi_llm); repeatable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) and the bench's topics")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # aiokafka logs retriable produce errors on fresh topics (NotLeaderForPartition) as warnings
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    bench = Bench(args.bootstrap, SMALL if args.small else FULL, workdir, small=args.small)
    say(f"run {bench.run}, work dir {workdir}")
    try:
        result = asyncio.run(run_all(bench, args.only or PARTS, args.keep))
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 2
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2), flush=True)
    if bench.order_problems:
        say(f"PER-KEY ORDER BROKEN ({len(bench.order_problems)}): " + "; ".join(bench.order_problems[:10]))
        return 1
    if not bench.state_ok:
        say("STATE NOT RECOVERED after a restart")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
