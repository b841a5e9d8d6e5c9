"""`make demo`: a support conversation end to end on a real broker.

Starts Kafka and the fake LLM if they are not running, runs one worker, sends a scripted
conversation (a v1 message, v2 messages, a duplicate delivery and one poison record), prints
the replies and the DLQ entry, and stops what it started, by PID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("VIGIL_TOPIC_PREFIX", "demo.")
os.environ.setdefault("VIGIL_DATA_DIR", str(REPO / ".cache" / "demo-data"))
os.environ.setdefault("VIGIL_METRICS_PORT", "0")
os.environ.setdefault("VIGIL_WEB_PORT", "0")
LLM_PORT = int(os.environ.get("VIGIL_DEMO_LLM_PORT", "8089"))
os.environ.setdefault("VIGIL_LLM_API_BASE", f"http://127.0.0.1:{LLM_PORT}/v1")

from demo_procs import port_open, say, stop, wait  # noqa: E402 - ops/ is the script's directory

from schemas import RawEnvelope  # noqa: E402
from streams import Settings, kafka  # noqa: E402
from streams.core import codec  # noqa: E402

VIGIL = str(Path(sys.executable).with_name("vigil"))


def script(run: str) -> tuple[list[codec.EncodedRecord], list[str]]:
    conv = f"conv-{run}"
    turns = [
        (1, "Hi, my order #1234 has not arrived.", None),
        (2, "It was due last Friday.", "web"),
        (2, "Can you check the courier?", "slack"),
    ]
    records, ids = [], []
    for n, (version, text, channel) in enumerate(turns, 1):
        data = {"conversation_id": conv, "user": "ann", "text": text}
        if version == 2:
            data["channel"] = channel or "web"
        env = RawEnvelope(
            id=f"{conv}-m{n}",
            source="demo",
            type=f"chat.message.received.v{version}",
            subject=conv,
            data=data,
        )
        records.append(codec.encode(env))
        ids.append(env.id)
    records.insert(2, records[1])  # the same message delivered twice: handled once
    records.append(
        codec.EncodedRecord(conv.encode(), b"{this is not json", [("ce_type", b"chat.message.received.v2")])
    )
    return records, ids


async def read_all(settings: Settings, topic: str) -> list:  # type: ignore[type-arg]
    return [r async for r in kafka.read_topics(settings, [settings.topic(topic)])]


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # metadata races on fresh topics are retried
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    kafka_started = False
    settings = Settings()
    logs = REPO / ".cache" / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        if subprocess.run([str(REPO / "ops/kafka/kafka.sh"), "status"], capture_output=True).returncode != 0:
            say("starting Kafka (ops/kafka/kafka.sh up)")
            subprocess.run([str(REPO / "ops/kafka/kafka.sh"), "up"], check=True)
            kafka_started = True
        else:
            say("Kafka already running")
        if not port_open(LLM_PORT):
            say(f"starting the fake LLM on 127.0.0.1:{LLM_PORT}")
            llm = subprocess.Popen(
                [VIGIL, "fake-llm", "--port", str(LLM_PORT), "--latency-ms", "50"],
                stdout=(logs / "fake-llm.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            started.append((llm, "fake LLM"))
            wait(lambda: port_open(LLM_PORT), 30, "the fake LLM")
        asyncio.run(kafka.create_topics(settings, [settings.topic("chat.messages.v1")]))

        say("starting a worker (vigil worker), log in .cache/demo-logs/worker.log")
        worker = subprocess.Popen(
            [VIGIL, "worker"], stdout=(logs / "worker.log").open("wb"), stderr=subprocess.STDOUT
        )
        started.append((worker, "worker"))

        run = uuid.uuid4().hex[:6]
        records, ids = script(run)
        say(
            f"sending {len(records)} records to {settings.topic('chat.messages.v1')}: "
            "3 messages (one v1), one duplicate delivery, one poison record"
        )
        asyncio.run(kafka.produce(settings, settings.topic("chat.messages.v1"), records))

        def replies() -> list[dict]:  # type: ignore[type-arg]
            if worker.poll() is not None:
                raise SystemExit(f"demo: worker exited, see {logs / 'worker.log'}")
            out = [json.loads(r.value) for r in asyncio.run(read_all(settings, "chat.replies.v1"))]
            return [e for e in out if e["data"]["in_reply_to"] in ids]

        def dead() -> list:  # type: ignore[type-arg]
            return [
                r for r in asyncio.run(read_all(settings, "dlq.support")) if r.key == f"conv-{run}".encode()
            ]

        wait(lambda: len(replies()) >= len(ids) and len(dead()) >= 1, 90, "the replies and the DLQ entry")
        say(f"replies on {settings.topic('chat.replies.v1')}:")
        for e in sorted(replies(), key=lambda e: e["data"]["sequence"]):
            d = e["data"]
            print(f"    #{d['sequence']} in_reply_to={d['in_reply_to']}  {d['text']}")
        say(f"dead letters on {settings.topic('dlq.support')}:")
        for r in dead():
            h = {k: v.decode() for k, v in r.headers}
            print(
                f"    reason={h['vigil_reason']} origin={h['vigil_origin_topic']}[{h['vigil_origin_partition']}]"
                f"@{h['vigil_origin_offset']} error={h['vigil_error_message']!r} value={r.value!r}"
            )
        import demo_cdc  # ops/demo_cdc.py: a PostgreSQL row wakes an agent

        demo_cdc.run(logs)
        import demo_files  # ops/demo_files.py: a file dropped in a directory wakes an agent

        demo_files.run(logs)
        import demo_slack  # ops/demo_slack.py: Slack and GitHub through the gateway and the sinks

        demo_slack.run(logs)
        return 0
    finally:
        for proc, name in reversed(started):
            stop(proc, name)
        if kafka_started:
            subprocess.run([str(REPO / "ops/kafka/kafka.sh"), "down"], check=False)


if __name__ == "__main__":
    sys.exit(main())
