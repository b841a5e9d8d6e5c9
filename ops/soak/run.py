"""``python -m ops.soak``: the fault scenarios run N times each in both processing guarantees,
on fresh topics of the running broker, and one table of what the topics say afterwards.
Progress goes to stderr, the table (or ``--json``) to stdout; exit code 1 if any input was
lost, had a duplicate effect or an out-of-order sequence, or any run stalled."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any

from streams import kafka
from tests.integration.guarantees import IN, OUT, reply_records
from tests.support import REPO, Cluster, end_offsets, wait_for

from .report import (
    EXACTLY_ONCE,
    RunResult,
    aggregate,
    check_replies,
    exit_code,
    longest_stall,
    phase_at,
    table,
)
from .scenarios import SCENARIOS, Progress, Run

GUARANTEES = ["at_least_once", EXACTLY_ONCE]
LOGS = REPO / ".cache" / "soak"
NO_LLM = "http://127.0.0.1:9/v1"  # the probe agent makes no LLM call; nothing listens here


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ready(bootstrap: str) -> bool:
    return asyncio.run(kafka.broker_ready(bootstrap))


def start_broker(bootstrap: str) -> bool:
    """Use the broker that answers; otherwise start the local one. True if we started it."""
    if ready(bootstrap):
        return False
    log(f"no broker answers at {bootstrap}: starting one with ops/kafka/kafka.sh up")
    env = {**os.environ, "VIGIL_KAFKA_PORT": bootstrap.rsplit(":", 1)[1]}
    subprocess.run([str(REPO / "ops/kafka/kafka.sh"), "up"], env=env, check=True)
    wait_for(lambda: ready(bootstrap), 60, "the broker's group coordinator", interval=0.5)
    return True


def delete_topics(cluster: Cluster) -> None:
    async def go() -> None:
        async with kafka.admin(cluster.settings()) as client:
            ours = [t for t in await client.list_topics() if t.startswith(cluster.prefix)]
            if ours:
                await client.delete_topics(ours)

    asyncio.run(go())


def topics_ready(cluster: Cluster) -> bool:
    """Every partition of the run's topics has a leader, so the progress reader finds them all."""
    settings = cluster.settings()
    return all(len(end_offsets(settings, cluster.prefix + t)) == settings.partitions for t in (IN, OUT))


def soak_once(scenario: str, guarantee: str, n: int, bootstrap: str, deadline: float) -> RunResult:
    stall_timeout = float(os.environ.get("VIGIL_STALL_TIMEOUT", "30"))
    prefix = f"soak{uuid.uuid4().hex[:8]}."
    tmp = LOGS / f"{scenario}-{guarantee}-{n:02d}-{prefix.rstrip('.')}"
    cluster = Cluster(bootstrap, prefix, NO_LLM, tmp)
    started = time.monotonic()
    cluster.create_topics(IN, OUT)
    wait_for(lambda: topics_ready(cluster), 30, "leaders for the new topics")
    progress = Progress(cluster, committed_only=guarantee == EXACTLY_ONCE)
    progress.start()
    run = Run(cluster, guarantee, deadline, progress)
    try:
        SCENARIOS[scenario](run)
    except Exception as exc:  # noqa: BLE001 - one broken run must not end the soak
        run.notes.append(f"scenario raised {type(exc).__name__}: {exc}")
    finally:
        for proc in cluster.procs:
            proc.kill()
        progress.stop()
    end = time.monotonic()
    run.notes.extend(progress.errors)
    counts = check_replies(run.expected, reply_records(cluster, committed_only=run.exactly_once), guarantee)
    full_at = progress.full_at(run.inputs)
    stall, stall_began = longest_stall(progress.produced, progress.answered, full_at or end)
    result = RunResult(
        scenario,
        guarantee,
        n,
        counts,
        wall_seconds=end - started,
        longest_stall_seconds=stall,
        longest_stall_began=phase_at(run.marks, stall_began),
        full_progress_seconds=None if full_at is None or run.last_fault is None else full_at - run.last_fault,
        stall_timeout=stall_timeout,
        notes=run.notes,
    )
    if result.failed or run.notes:
        result.log_dir = str(tmp)
        for data in tmp.glob("data-*"):
            shutil.rmtree(data, ignore_errors=True)  # the logs stay, the RocksDB files go
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        delete_topics(cluster)
    return result


def describe(r: RunResult) -> str:
    c = r.counts
    full = "never" if r.full_progress_seconds is None else f"{r.full_progress_seconds:.1f}s"
    verdict = "FAILED" if r.failed else "ok"
    line = (
        f"{r.scenario}/{r.guarantee} run {r.run}: {verdict} in {r.wall_seconds:.1f}s; inputs {c.inputs}, "
        f"lost {c.lost}, dup effects {c.duplicate_effects}, redelivered identical {c.redelivered_identical}, "
        f"out of order {c.out_of_order}, longest stall {r.longest_stall_seconds:.1f}s "
        f"({r.longest_stall_began}), "
        f"full progress {full} after the last fault"
    )
    notes = "".join(f"\n    note: {note.splitlines()[0]}" for note in r.notes)
    kept = f"\n    logs: {r.log_dir}" if r.log_dir else ""
    return line + notes + kept


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ops.soak", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="runs per scenario and guarantee (default 20)")
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument("--guarantee", choices=[*GUARANTEES, "all"], default="all")
    p.add_argument("--deadline", type=float, default=180, help="seconds after the last fault (default 180)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # the harness' own clients retry leader elections on topics it just created; the workers
    # log their own errors into their logs
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    bootstrap = os.environ.get("VIGIL_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    guarantees = GUARANTEES if args.guarantee == "all" else [args.guarantee]
    we_started = start_broker(bootstrap)
    results: list[RunResult] = []
    try:
        # round-robin, so a soak cut short still covers every combination
        for n in range(1, args.runs + 1):
            for scenario in scenarios:
                for guarantee in guarantees:
                    results.append(soak_once(scenario, guarantee, n, bootstrap, args.deadline))
                    log(describe(results[-1]))
    finally:
        if we_started:
            env = {**os.environ, "VIGIL_KAFKA_PORT": bootstrap.rsplit(":", 1)[1]}
            subprocess.run([str(REPO / "ops/kafka/kafka.sh"), "down"], env=env, check=False)
    rows = aggregate(results)
    if args.json:
        out: dict[str, Any] = {"rows": rows, "runs": [r.to_json() for r in results]}
        print(json.dumps(out, indent=2))
    else:
        print(table(rows))
        kept = [r.log_dir for r in results if r.log_dir]
        if kept:
            print("\nworker logs of runs that failed or left notes:\n" + "\n".join(f"  {d}" for d in kept))
    return exit_code(results)
