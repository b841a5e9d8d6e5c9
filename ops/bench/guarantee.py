"""P8: the P1 workload (same record shape and subjects-per-record ratio) in a worker with
``VIGIL_PROCESSING_GUARANTEE=exactly_once`` vs P1's at-least-once rate from the same run.
Outputs are read as a read_committed reader sees them.

Its first input is a single event of a fresh entity, the template whose changelog record
the state phase copies (``ops.bench.state``): the worker runs on the state phase's topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ops.bench import report
from ops.bench.context import IN, OUT, Bench, say
from ops.bench.pipeline import subject_of
from ops.bench.records import BenchError, message, messages, rate, reply_of
from ops.bench.report import AT_LEAST

TEMPLATE = "template"


@dataclass(frozen=True)
class Result:
    figure: dict[str, Any]
    #: the template entity's reply sequence after its one event
    template_sequence: int


async def measure(bench: Bench, prefix: str, at_least_once: float) -> Result:
    s = bench.sizes
    n = s.eos_records
    subjects = max(1, n * s.subjects // s.records)
    await bench.create(prefix)
    say(f"P8: {n} records, {subjects} subjects, exactly_once")
    await bench.send(prefix + IN, [message(TEMPLATE)])  # first on its partition: offset 0
    await bench.send(prefix + IN, messages([subject_of(k, subjects) for k in range(n)]))
    worker = bench.start_worker(
        "worker-eos", prefix, bench.workdir / "data-eos", VIGIL_PROCESSING_GUARANTEE="exactly_once"
    )
    outputs = await bench.wait_records(prefix + OUT, {}, n + 1, worker, committed=True)
    worker.stop()  # graceful: the next worker joins the same group without waiting out a session
    replies = [x for x in map(reply_of, outputs) if x.subject == TEMPLATE]
    if len(replies) != 1:
        raise BenchError(f"the template entity got {len(replies)} replies")
    eos = rate(outputs)
    say(f"P8: exactly_once {eos:.0f}/s vs at_least_once {at_least_once:.0f}/s")
    figure = report.entry(
        eos,
        "records/s",
        {"at_least_once": at_least_once},
        {"at_least_once": (AT_LEAST, 0.7)},
        {"records": n + 1, "subjects": subjects + 1, "committed_outputs": len(outputs)},
    )
    return Result(figure, replies[0].sequence)
