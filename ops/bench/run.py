"""``python -m ops.bench [--small]``: one JSON object, every figure a ratio to a baseline
measured in the same run, on the same broker, topics and partition count.

- ``i_throughput``: a no-op agent (decode, state read/write, one emit; ``ops/bench/agents.py``)
  in a real worker process vs a raw aiokafka consume->produce loop, same input topic.
- ``ii_slow_handler``: 200 ms handlers, 1,000 subjects, concurrency 128 vs the bound 640/s;
  per-key order is checked and a broken order fails the bench (exit 1).
- ``iii_event_age``: handler start minus record timestamp at half of the rate of (i) vs a raw
  aiokafka produce->consume at the same rate.
- ``iv_recovery``: a worker rebuilding its table from the changelog (data dir deleted) vs a raw
  read of that changelog.
- ``v_memory``: worker RSS growth per 100,000 entity states.
- ``vi_llm``: CPU per call of Vigil's LLM client vs litellm vs a raw aiohttp POST.

Throughput comes from the output topics' timestamps (first to last record read back), never
from logs. Progress goes to stderr, the JSON to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python ops/bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from ops.bench import llm, raw, topics
from ops.bench.topics import Offsets, Record
from schemas import RawEnvelope
from streams.core import codec
from streams.core.codec import EncodedRecord

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 6
IN = "chat.messages.v1"
OUT = "chat.replies.v1"
DLQ = "dlq.bench"
APP_ID = "bench"
RECORD_BYTES = 300
CONCURRENCY = 128
SLOW_MS = 200
SLOW_SUBJECTS = 1000
AGE_SUBJECTS = 1000
VIGIL = [sys.executable, "-c", "from agents.cli import main; main()"]


@dataclass(frozen=True)
class Sizes:
    records: int  # (i) records through each loop
    subjects: int  # (i) distinct subjects among them
    age_seconds: float  # (iii) seconds of paced traffic per side
    slow_records: int  # (ii)
    entities: int  # (iv), (v)
    llm_calls: int  # (vi) calls per client per round (3 rounds)


FULL = Sizes(
    records=100_000, subjects=10_000, age_seconds=15.0, slow_records=10_000, entities=100_000, llm_calls=300
)
SMALL = Sizes(records=5_000, subjects=500, age_seconds=3.0, slow_records=2_000, entities=5_000, llm_calls=40)


class BenchError(Exception):
    pass


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- records --------------------------------------------------------------------------------
def message(subject: str, text: str = "") -> EncodedRecord:
    """A ``chat.message.received.v2`` record padded to about ``RECORD_BYTES`` of value."""

    def build(body: str) -> EncodedRecord:
        env = RawEnvelope(
            source="vigil/bench",
            type="chat.message.received.v2",
            subject=subject,
            data={"conversation_id": subject, "user": "bench", "text": body, "channel": "web"},
        )
        return codec.encode(env)

    first = build(text)
    pad = RECORD_BYTES - len(first.value or b"")
    return build(text + "x" * pad) if pad > 0 else first


def messages(subjects: Sequence[str], text: str = "") -> list[EncodedRecord]:
    return [message(s, text) for s in subjects]


def event_id(record: Record) -> str:
    return next(bytes(v).decode() for k, v in record.headers if k == "ce_id")


@dataclass(frozen=True)
class Reply:
    subject: str
    in_reply_to: str
    sequence: int
    started: float
    done: float
    timestamp_ms: int


def reply_of(record: Record) -> Reply:
    data = json.loads(record.value or b"{}")["data"]
    started, done, _pid = data["text"].split()
    return Reply(
        data["conversation_id"],
        data["in_reply_to"],
        data["sequence"],
        float(started),
        float(done),
        record.timestamp,
    )


def rate(records: Sequence[Record]) -> float:
    """Records per second between the first and the last timestamp."""
    stamps: list[int] = [r.timestamp for r in records]
    span = (max(stamps) - min(stamps)) / 1000
    if len(stamps) < 2 or span <= 0:
        raise BenchError(f"cannot take a rate from {len(stamps)} records over {span}s")
    return (len(stamps) - 1) / span


def percentile(values: Sequence[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def check_order(inputs: Sequence[Record], outputs: Sequence[Record]) -> list[str]:
    """Per subject: one reply per input, in input order, numbered consecutively, and no two
    handlers of one subject overlapping in time. Returns what broke (empty: all good)."""
    want: dict[str, list[str]] = {}
    for r in inputs:  # partition then offset order; a subject lives on one partition
        want.setdefault((r.key or b"").decode(), []).append(event_id(r))
    got: dict[str, list[Reply]] = {}
    for r in outputs:
        reply = reply_of(r)
        got.setdefault(reply.subject, []).append(reply)
    problems: list[str] = []
    for subject, ids in want.items():
        replies = got.pop(subject, [])
        if [x.in_reply_to for x in replies] != ids:
            problems.append(f"{subject}: replies to {len(replies)} inputs out of order, missing or repeated")
            continue
        first = replies[0].sequence
        if [x.sequence for x in replies] != list(range(first, first + len(replies))):
            problems.append(f"{subject}: sequence numbers not consecutive")
        for a, b in itertools.pairwise(replies):
            if b.started < a.done - 1e-6:
                problems.append(
                    f"{subject}: handler of {b.in_reply_to} started before {a.in_reply_to} finished"
                )
                break
    problems.extend(f"{s}: replies without inputs" for s in got)
    return problems


# -- processes ------------------------------------------------------------------------------
@dataclass
class Child:
    """A process this bench started; stopped by its PID only."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BenchError(f"no VmRSS for {self.name}")

    def stop(self, timeout: float = 60) -> None:
        if self.alive():
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(url: str) -> None:
    with urllib.request.urlopen(f"{url}/healthz", timeout=1):
        pass


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


class GroupWatch:
    """Polls a consumer group's state every 50 ms and remembers when it last became Stable
    (the moment a worker has its assignment and starts recovering its tables)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.stable_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            previous = ""
            while True:
                try:
                    [response] = await admin.describe_consumer_groups([self.group])
                    state = str(response.groups[0][2])
                except Exception:  # noqa: BLE001 - no coordinator yet, group not created yet
                    state = "unknown"
                now = time.time()
                if state == "Stable" and previous != "Stable":
                    self.stable_since = now
                previous = state
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.stable_since is None:
            raise BenchError(f"group {self.group} was never seen Stable")
        return self.stable_since


# -- the bench ------------------------------------------------------------------------------
class Bench:
    def __init__(self, bootstrap: str, sizes: Sizes, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.sizes = sizes
        self.workdir = workdir
        self.run = uuid.uuid4().hex[:8]
        self.children: list[Child] = []
        self.producer: AIOKafkaProducer | None = None
        self.order_problems: list[str] = []
        self.state_ok = True

    def prefix(self, phase: str) -> str:
        return f"bench.{self.run}.{phase}."

    # processes
    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                args, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def start_worker(self, name: str, prefix: str, data_dir: Path) -> Child:
        env = base_env()
        env.update(
            VIGIL_KAFKA_BOOTSTRAP=self.bootstrap,
            VIGIL_TOPIC_PREFIX=prefix,
            VIGIL_APP_ID=APP_ID,
            VIGIL_DATA_DIR=str(data_dir),
            VIGIL_METRICS_PORT="0",
            VIGIL_WEB_PORT="0",
            VIGIL_CONCURRENCY=str(CONCURRENCY),
            VIGIL_LOG_LEVEL="warning",
        )
        return self.spawn(name, [*VIGIL, "worker", "--agents", "bench", "-m", "ops.bench.agents"], env)

    def stop_all(self) -> None:
        for child in self.children:
            child.stop()

    # topics
    async def create(self, prefix: str, *extra: str) -> None:
        await topics.create(self.bootstrap, [prefix + n for n in (IN, OUT, DLQ, *extra)], PARTITIONS)

    async def send(self, topic: str, records: Sequence[EncodedRecord]) -> None:
        assert self.producer is not None
        await topics.send_all(self.producer, topic, records)

    async def send_paced(self, topic: str, records: Sequence[EncodedRecord], per_second: float) -> None:
        """Send at ``per_second``, each record stamped with its send time."""
        assert self.producer is not None
        futures = []
        started = time.perf_counter()
        sent = 0
        while sent < len(records):
            due = min(len(records), int((time.perf_counter() - started) * per_second) + 1)
            for r in records[sent:due]:
                futures.append(
                    await self.producer.send(
                        topic,
                        value=r.value,
                        key=r.key,
                        headers=r.headers,
                        timestamp_ms=int(time.time() * 1000),
                    )
                )
            sent = due
            await asyncio.sleep(0.002)
        await asyncio.gather(*futures)

    async def wait_records(self, topic: str, start: Offsets, count: int, worker: Child) -> list[Record]:
        deadline = time.monotonic() + 120 + count / 500
        while True:
            have = topics.count_since(await topics.end_offsets(self.bootstrap, topic), start)
            if have >= count:
                return await topics.read_range(self.bootstrap, topic, start)
            worker.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{have} of {count} records on {topic}:\n{worker.tail()}")
            await asyncio.sleep(0.5)

    # (i), (iii), (ii): one worker
    async def pipeline(self) -> dict[str, Any]:
        s = self.sizes
        p = self.prefix("pipe")
        t_in, t_out, t_raw, t_age = p + IN, p + OUT, p + "raw.out", p + "raw.age"
        await self.create(p, "raw.out", "raw.age")

        say(f"(i) producing {s.records} records of ~{RECORD_BYTES} B, {s.subjects} subjects")
        await self.send(t_in, messages([f"i{k % s.subjects}" for k in range(s.records)]))
        say("(i) raw aiokafka consume->produce loop")
        await raw.consume_produce(self.bootstrap, t_in, t_raw, p + "raw-group", s.records)
        raw_rps = rate(await topics.read_range(self.bootstrap, t_raw))
        say(f"(i) raw: {raw_rps:.0f}/s; starting the worker")
        worker = self.start_worker("worker-pipeline", p, self.workdir / "data-pipeline")
        outputs = await self.wait_records(t_out, {}, s.records, worker)
        vigil_rps = rate(outputs)
        self.order_problems += check_order(await topics.read_range(self.bootstrap, t_in), outputs)
        say(f"(i) vigil: {vigil_rps:.0f}/s")
        throughput = {
            "records": s.records,
            "subjects": s.subjects,
            "partitions": PARTITIONS,
            "record_bytes": RECORD_BYTES,
            "concurrency": CONCURRENCY,
            "vigil_records_per_s": round(vigil_rps, 1),
            "raw_aiokafka_records_per_s": round(raw_rps, 1),
            "vigil_vs_raw": round(vigil_rps / raw_rps, 4),
        }

        age_rate = vigil_rps / 2
        count = max(100, int(age_rate * s.age_seconds))
        say(f"(iii) event age at {age_rate:.0f}/s, {count} records")
        in_start = await topics.end_offsets(self.bootstrap, t_in)
        out_start = await topics.end_offsets(self.bootstrap, t_out)
        await self.send_paced(t_in, messages([f"a{k % AGE_SUBJECTS}" for k in range(count)]), age_rate)
        outputs = await self.wait_records(t_out, out_start, count, worker)
        stamp = {event_id(r): r.timestamp for r in await topics.read_range(self.bootstrap, t_in, in_start)}
        vigil_ages = [(x.started * 1000 - stamp[x.in_reply_to]) for x in map(reply_of, outputs)]
        raw_ages = await self.raw_ages(t_age, count, age_rate)
        age = {
            "records_per_s": round(age_rate, 1),
            "records": count,
            # below records_per_s: the worker fell behind and the ages include a growing backlog
            "vigil_output_records_per_s": round(rate(outputs), 1),
            "vigil_p50_ms": round(percentile(vigil_ages, 50), 2),
            "vigil_p99_ms": round(percentile(vigil_ages, 99), 2),
            "raw_aiokafka_p50_ms": round(percentile(raw_ages, 50), 2),
            "raw_aiokafka_p99_ms": round(percentile(raw_ages, 99), 2),
        }
        age["vigil_vs_raw_p50"] = round(age["vigil_p50_ms"] / age["raw_aiokafka_p50_ms"], 3)
        age["vigil_vs_raw_p99"] = round(age["vigil_p99_ms"] / age["raw_aiokafka_p99_ms"], 3)
        say(f"(iii) {age}")

        n = s.slow_records
        say(f"(ii) {n} records, {SLOW_MS} ms handlers, {SLOW_SUBJECTS} subjects, concurrency {CONCURRENCY}")
        in_start = await topics.end_offsets(self.bootstrap, t_in)
        out_start = await topics.end_offsets(self.bootstrap, t_out)
        await self.send(t_in, messages([f"s{k % SLOW_SUBJECTS}" for k in range(n)], f"sleep={SLOW_MS};"))
        outputs = await self.wait_records(t_out, out_start, n, worker)
        slow_rps = rate(outputs)
        problems = check_order(await topics.read_range(self.bootstrap, t_in, in_start), outputs)
        self.order_problems += problems
        bound = CONCURRENCY / (SLOW_MS / 1000)
        slow = {
            "records": n,
            "subjects": SLOW_SUBJECTS,
            "handler_ms": SLOW_MS,
            "concurrency": CONCURRENCY,
            "records_per_s": round(slow_rps, 1),
            "bound_records_per_s": round(bound, 1),
            "vs_bound": round(slow_rps / bound, 4),
            "order_ok": not problems,
        }
        say(f"(ii) {slow_rps:.0f}/s of {bound:.0f}/s; order {'ok' if not problems else 'BROKEN'}")
        worker.stop()
        return {"i_throughput": throughput, "ii_slow_handler": slow, "iii_event_age": age}

    async def raw_ages(self, topic: str, count: int, per_second: float) -> list[float]:
        """A plain consumer in its own process, the same paced producer as for the worker."""
        args = [sys.executable, "-m", "ops.bench.raw", "age"]
        args += ["--bootstrap", self.bootstrap, "--topic", topic, "--count", str(count)]
        proc = await asyncio.create_subprocess_exec(
            *args, env=base_env(), cwd=REPO, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise BenchError(f"raw age consumer did not start: {line!r}")
            await self.send_paced(topic, messages([f"a{k % AGE_SUBJECTS}" for k in range(count)]), per_second)
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
            return [float(x) for x in json.loads(out)]
        finally:
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGTERM)
                await proc.wait()

    # (v), (iv): one worker filled with entities, then a cold restart
    async def state(self) -> dict[str, Any]:
        n = self.sizes.entities
        p = self.prefix("state")
        t_in, t_out = p + IN, p + OUT
        await self.create(p)
        data = self.workdir / "data-state"

        await self.send(t_in, [message("warmup")])
        watch = GroupWatch(self.bootstrap, p + APP_ID)
        watch.start()
        worker = self.start_worker("worker-state", p, data)
        [first] = await self.wait_records(t_out, {}, 1, worker)
        ready_gap_empty = reply_of(first).started - await watch.stop()
        await asyncio.sleep(1.0)
        rss_start = worker.rss_bytes()
        say(f"(v) worker ready, RSS {rss_start / 2**20:.1f} MiB; producing {n} records, one per entity")
        out_start = await topics.end_offsets(self.bootstrap, t_out)
        await self.send(t_in, messages([f"e{k}" for k in range(n)]))
        await self.wait_records(t_out, out_start, n, worker)
        await asyncio.sleep(2.0)  # a commit interval: the changelog flushed, buffers settled
        rss_after = worker.rss_bytes()
        worker.stop()
        per_100k = (rss_after - rss_start) / n * 100_000 / 2**20
        memory = {
            "entities": n,
            "rss_start_mib": round(rss_start / 2**20, 1),
            "rss_after_mib": round(rss_after / 2**20, 1),
            "mib_per_100k_entities": round(per_100k, 1),
        }
        say(f"(v) {memory}")

        [changelog] = [
            t
            for t in await topics.list_topics(self.bootstrap)
            if t.startswith(p) and t.endswith("-state-changelog")
        ]
        records, raw_seconds = await raw.read_changelog(self.bootstrap, changelog)
        say(f"(iv) raw read of {changelog}: {records} records in {raw_seconds:.2f}s; cold restart")
        out_start = await topics.end_offsets(self.bootstrap, t_out)
        await self.send(t_in, [message("e0")])  # an entity that must come back from the changelog
        shutil.rmtree(data)
        watch = GroupWatch(self.bootstrap, p + APP_ID)
        watch.start()
        worker = self.start_worker("worker-recovery", p, data)
        [probe] = await self.wait_records(t_out, out_start, 1, worker)
        reply = reply_of(probe)
        ready_gap_cold = reply.started - await watch.stop()
        worker.stop()
        if reply.sequence != 2:
            self.state_ok = False
            say(f"(iv) STATE NOT RECOVERED: e0 replied with sequence {reply.sequence}, expected 2")
        recovery_seconds = ready_gap_cold - ready_gap_empty
        if recovery_seconds <= 0:
            raise BenchError(
                f"recovery not measurable: assignment->first handler {ready_gap_cold:.3f}s after deleting "
                f"the data dir vs {ready_gap_empty:.3f}s with an empty table"
            )
        vigil_rps = records / recovery_seconds
        raw_rps = records / raw_seconds
        recovery = {
            "changelog_records": records,
            "recovery_s": round(recovery_seconds, 3),
            # group Stable -> first handler start: with an empty table, then after deleting the data dir
            "ready_after_assignment_empty_s": round(ready_gap_empty, 3),
            "ready_after_assignment_cold_s": round(ready_gap_cold, 3),
            "vigil_records_per_s": round(vigil_rps, 1),
            "raw_read_records_per_s": round(raw_rps, 1),
            "vigil_vs_raw": round(vigil_rps / raw_rps, 4),
            "state_ok": reply.sequence == 2,
        }
        say(f"(iv) {recovery}")
        return {"iv_recovery": recovery, "v_memory": memory}

    # (vi)
    async def llm_path(self) -> dict[str, Any]:
        port = free_port()
        server = self.spawn("fake-llm", [*VIGIL, "fake-llm", "--port", str(port)], base_env())
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            server.check()
            try:
                await asyncio.to_thread(healthz, url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"fake LLM did not answer:\n{server.tail()}") from None
                await asyncio.sleep(0.2)
        say(f"(vi) {self.sizes.llm_calls} x 3 calls per client against the fake LLM")
        try:
            ms = await llm.cpu_per_call(f"{url}/v1", self.sizes.llm_calls)
        finally:
            server.stop()
        result: dict[str, Any] = {"calls_per_client": self.sizes.llm_calls * 3}
        result.update({f"{name}_cpu_ms": round(v, 3) for name, v in ms.items()})
        result["vigil_vs_litellm"] = round(ms["vigil_client"] / ms["litellm_acompletion"], 3)
        result["router_vs_litellm"] = round(ms["litellm_router"] / ms["litellm_acompletion"], 3)
        result["vigil_vs_router"] = round(ms["vigil_client"] / ms["litellm_router"], 3)
        result["litellm_vs_aiohttp"] = round(ms["litellm_acompletion"] / ms["aiohttp_post"], 3)
        result["vigil_vs_aiohttp"] = round(ms["vigil_client"] / ms["aiohttp_post"], 3)
        say(f"(vi) {result}")
        return {"vi_llm": result}

    async def delete_topics(self) -> None:
        mine = [t for t in await topics.list_topics(self.bootstrap) if t.startswith(f"bench.{self.run}.")]
        if mine:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                await admin.delete_topics(mine)
            finally:
                await admin.close()

    async def run_all(self, parts: Sequence[str], keep_topics: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"mode": "small" if self.sizes == SMALL else "full"}
        started = time.monotonic()
        self.producer = topics.new_producer(self.bootstrap, linger_ms=5)
        await self.producer.start()
        try:
            if "pipeline" in parts:
                result.update(await self.pipeline())
            if "state" in parts:
                result.update(await self.state())
            if "llm" in parts:
                result.update(await self.llm_path())
        finally:
            await self.producer.stop()
            self.stop_all()
            if not keep_topics:
                await self.delete_topics()
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        return dict(sorted(result.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick mode (CI): fewer records and calls")
    parser.add_argument("--bootstrap", default=os.environ.get("VIGIL_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument(
        "--only",
        action="append",
        choices=["pipeline", "state", "llm"],
        help="run only these parts (pipeline: i, ii, iii; state: iv, v; llm: vi); repeatable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) and the bench's topics")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # aiokafka logs retriable produce errors on fresh topics (NotLeaderForPartition) as warnings
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    bench = Bench(args.bootstrap, SMALL if args.small else FULL, workdir)
    say(f"run {bench.run}, work dir {workdir}")
    try:
        result = asyncio.run(bench.run_all(args.only or ["pipeline", "state", "llm"], args.keep))
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
        say("STATE NOT RECOVERED after the cold restart")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
