"""Durable entity budgets on the real broker: the support agent spends one conversation's tiny
token budget, the worker is SIGKILLed and restarted on the same data dir, and that conversation
is still over budget (no further LLM request for it) while a new one flows. The worker logs in
JSON (``VIGIL_LOG_FORMAT=json``): the refusal's line carries the event id, subject and trace."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import Cluster, Proc, wait_for

from .chat import IN, OUT, message

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # SIGKILL and restart

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every JSON line of the worker's log (faust/mode print a few plain lines at start)."""
    out = []
    complete = proc.log().rpartition("\n")[0]  # a line still being written is not read yet
    for text in complete.splitlines():
        if text.startswith("{"):
            out.append(json.loads(text))  # a line that starts as JSON must parse
    return out


def refusals(proc: Proc, event_id: str) -> list[dict[str, Any]]:
    return [
        line
        for line in json_lines(proc)
        if line.get("event_id") == event_id and "LLM call refused" in line["message"]
    ]


def with_trace(record: Any) -> Any:
    env = json.loads(record.value)
    env["traceparent"] = TRACE
    return type(record)(record.key, json.dumps(env).encode(), record.headers)


def replies(cluster: Cluster, conv: str) -> list[dict[str, Any]]:
    return [env for env in cluster.read_json(OUT) if env["subject"] == conv]


def test_entity_budget_survives_sigkill_and_restart(cluster: Cluster) -> None:
    cluster.create_topics(IN)
    llm = cluster.start_fake_llm()
    env = {
        "VIGIL_LLM_API_BASE": llm.api_base,
        # support's prompts here estimate 42, 79, 116 tokens; with max_tokens 50 the reservations
        # are 92, 129, 166 beside 0, 26, 66 spent: two calls fit 200 tokens, the third does not
        "VIGIL_LLM_ENTITY_TOKENS_PER_WINDOW": "200",
        "VIGIL_AGENT__SUPPORT__MAX_TOKENS": "50",
        "VIGIL_LLM_BUDGET_WINDOW": "1000000000",  # one window for the whole test, whatever the clock
        "VIGIL_LOG_FORMAT": "json",
        "VIGIL_DRAIN_TIMEOUT": "1",
    }
    data = cluster.tmp / "data-budget"
    hot = [with_trace(message("c-hot", f"hot says {i}", id=f"hot-{i}")) for i in range(4)]
    cluster.produce(IN, hot)
    first = cluster.start_worker("first", data_dir=data, args=["--agents", "support"], **env)

    # the conversation answers until its budget is spent, then its next event waits
    waiting = wait_for(
        lambda: next((f"hot-{i}" for i in range(4) if refusals(first, f"hot-{i}")), None),
        90,
        "a refused LLM call of c-hot in the worker's JSON log",
        interval=0.5,
    )
    answered = int(waiting.split("-")[1])
    assert 1 <= answered < 4
    assert llm.stats()["received"] == answered
    # the replies before it are published once the batch they ran in is flushed
    wait_for(lambda: len(replies(cluster, "c-hot")) == answered or None, 30, "c-hot's replies", interval=0.5)
    (line,) = refusals(first, waiting)[:1]
    assert line["subject"] == "c-hot" and line["logger"] == "agents.llm" and line["level"] == "info"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    first.kill()

    second = cluster.start_worker("second", data_dir=data, args=["--agents", "support"], **env)
    cluster.produce(IN, [message("c-cold", f"cold says {i}", id=f"cold-{i}") for i in range(2)])
    wait_for(lambda: len(replies(cluster, "c-cold")) == 2 or None, 90, "c-cold's two replies", interval=0.5)
    # the waiting event was redelivered to the new process and refused from the restored budget
    wait_for(
        lambda: refusals(second, waiting) or None, 60, f"{waiting} refused after the restart", interval=0.5
    )
    assert len(replies(cluster, "c-hot")) == answered
    assert llm.stats()["received"] == answered + 2  # nothing more for c-hot
    assert all({"time", "level", "logger", "message"} <= set(line) for line in json_lines(second))
    second.kill()
