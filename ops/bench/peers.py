"""The references read from P1's own input topic, each with its own group and output topic:

- ``raw``: the raw aiokafka consume->produce loop (P1's first reference, in this process);
- ``faust``: a plain Faust agent with a RocksDB counter (P1's second reference, own process);
- ``quix``: a Quix Streams app doing the same work (P1q, in its own venv);
- ``aiokafka_loop`` / ``confluent_loop``: the same bare decode loop on both clients (the
  ceiling, item 6; confluent-kafka comes with the Quix venv).

Every rate is taken off the output topic's timestamps, as Vigil's is.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ops.bench import quix_venv, raw, topics
from ops.bench.context import PARTITIONS, Bench, say
from ops.bench.pipeline import Input
from ops.bench.procs import REPO, Child, base_env
from ops.bench.records import rate

CEILING = str(REPO / "ops" / "bench" / "ceiling.py")
QUIX_APP = str(REPO / "ops" / "bench" / "quix_app.py")


@dataclass
class References:
    rates: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: Quix: process start to its first output record (s), fresh state dir
    quix_first_output_s: float | None = None


async def measure(bench: Bench, source: Input) -> References:
    refs = References()
    p = source.prefix
    outputs = ("raw.out", "faust.out", "quix.out", "aiokafka.out", "confluent.out")
    await topics.create(bench.bootstrap, [p + n for n in outputs], PARTITIONS, topics.APPEND_TIME)

    say("P1: raw aiokafka consume->produce loop")
    await raw.consume_produce(bench.bootstrap, source.topic, p + "raw.out", p + "raw-group", source.count)
    refs.rates["raw_aiokafka"] = rate(await topics.read_range(bench.bootstrap, p + "raw.out"))
    say(f"P1: raw {refs.rates['raw_aiokafka']:.0f}/s; plain Faust agent with a RocksDB counter")

    args = [sys.executable, "-m", "ops.bench.faust_baseline", "--bootstrap", bench.bootstrap]
    args += ["--source", source.topic, "--target", p + "faust.out", "--app-id", p + "faust"]
    args += ["--data-dir", str(bench.workdir / "data-faust")]
    refs.rates["faust"] = await run_until(bench, "faust-baseline", args, p + "faust.out", source.count)
    say(f"P1: faust {refs.rates['faust']:.0f}/s")

    if not bench.sizes.peers:
        why = "small mode: the Quix venv and its runs are skipped (run the full bench)"
        refs.skipped.update(quix=why, confluent_loop=why, aiokafka_loop=why)
        return refs
    venv = quix_venv.ensure(say)
    if isinstance(venv, str):
        refs.skipped.update(quix=venv, confluent_loop=venv)
    else:
        args = [str(venv), QUIX_APP, "--bootstrap", bench.bootstrap, "--source", source.topic]
        args += [
            "--target",
            p + "quix.out",
            "--group",
            p + "quix",
            "--state-dir",
            str(bench.workdir / "quix-state"),
        ]
        child, outputs = await run_child(bench, "quix", args, p + "quix.out", source.count)
        refs.rates["quix"] = rate(outputs)
        refs.quix_first_output_s = min(r.timestamp for r in outputs) / 1000 - child.spawned_at
        say(f"P1q: quix {refs.rates['quix']:.0f}/s, first output {refs.quix_first_output_s:.2f}s after start")

    for client, python in (
        ("aiokafka", sys.executable),
        ("confluent", None if isinstance(venv, str) else venv),
    ):
        if python is None:
            continue
        args = [str(python), CEILING, client, "--bootstrap", bench.bootstrap, "--source", source.topic]
        args += ["--target", p + f"{client}.out", "--group", p + client, "--count", str(source.count)]
        refs.rates[f"{client}_loop"] = await run_until(
            bench, f"{client}-loop", args, p + f"{client}.out", source.count
        )
        say(f"ceiling: {client} loop {refs.rates[f'{client}_loop']:.0f}/s")
    return refs


async def run_child(
    bench: Bench, name: str, args: list[str], target: str, count: int
) -> tuple[Child, list[topics.Record]]:
    child = bench.spawn(name, args, base_env())
    try:
        outputs = await bench.wait_records(target, {}, count, child)
    finally:
        child.stop(timeout=20)
    return child, outputs


async def run_until(bench: Bench, name: str, args: list[str], target: str, count: int) -> float:
    _, outputs = await run_child(bench, name, args, target, count)
    return rate(outputs)
