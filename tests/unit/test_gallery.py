"""The gallery agents' decisions (review, triage) through the production dispatcher, with an
in-memory table and publisher, a recording LLM and diff fetcher (no broker); the payload
models on a real GitHub webhook body; the diff fetch against the fake GitHub."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

import agents  # noqa: F401 - declares the gallery agents into streams.runtime
from agents.llm import LLMReply
from agents.review import DiffFetchError, GitHubDiffs, ReviewSettings, ReviewState
from agents.triage import TriageState
from ops.fakes.fake_github import DIFF_MEDIA_TYPE, FakeGitHub
from schemas import GitHubPullRequestOpenedV1, RawEnvelope, VigilError, registry
from schemas.pull_request import OTHER_ACTIONS
from streams import Settings, runtime
from streams.core import codec, topics
from streams.core.dispatcher import Dispatcher
from streams.core.journal import Journal
from streams.core.records import ConsumedRecord
from streams.core.state import StateStore
from streams.core.tables import MemoryTable, str_key
from streams.sinks.settings import SinkSettings

PARTITION = 0
WEBHOOK = json.loads(
    (Path(__file__).parent.parent / "integration/webhooks/github_pull_request_opened.json").read_text()
)
REPO, NUMBER = WEBHOOK["repository"]["full_name"], WEBHOOK["number"]
PR = f"{REPO}#{NUMBER}"
SHA_A, SHA_B = "a" * 40, "b" * 40
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeLLM:
    """An LLM client whose requests are journaled steps named ``llm`` (as ``ctx.llm``'s are):
    asks for each offered tool once (no arguments), then answers quoting the tool results."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def bind(self, agent: str, subject: str | None = None, *, journal: Journal | None = None) -> Bound:
        assert journal is not None
        return Bound(self, journal)

    async def call(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> LLMReply:
        self.calls.append([dict(m) for m in messages])
        results = [m["content"] for m in messages if m["role"] == "tool"]
        if tools and not results:
            calls = [
                {"id": f"call_{len(self.calls)}_{i}", "name": t["function"]["name"], "arguments": "{}"}
                for i, t in enumerate(tools)
            ]
            return LLMReply(text="", model="fake", tool_calls=calls)
        return LLMReply(text=" | ".join([f"reply {len(self.calls)}", *results]), model="fake")


class Bound:
    def __init__(self, client: FakeLLM, journal: Journal) -> None:
        self.client, self.journal = client, journal

    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None, **_: Any
    ) -> LLMReply:
        reply: LLMReply = await self.journal.step(
            "llm", self.client.call, messages, tools, result_type=LLMReply
        )
        return reply


class FakeDiffs:
    def __init__(self, failures: int = 0) -> None:
        self.settings = ReviewSettings(_env_file=None, review_diff_retry_delay=0.05)  # type: ignore[call-arg]
        self.fetched: list[tuple[str, int]] = []
        self.failures = failures

    async def fetch(self, repo: str, number: int) -> str:
        self.fetched.append((repo, number))
        if self.failures:
            self.failures -= 1
            raise DiffFetchError("GET ...: HTTP 502", retriable=True)
        return f"diff --git a/x.py b/x.py\n+print({len(self.fetched)})\n"


class Published:
    def __init__(self) -> None:
        self.sent: list[tuple[str, codec.EncodedRecord]] = []

    async def publish(self, topic: str, records: Sequence[codec.EncodedRecord]) -> None:
        self.sent.extend((topic, r) for r in records)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for _, r in self.sent if r.value is not None]


def dispatcher(
    agent: str, state: type[BaseModel], resources: dict[str, Any]
) -> tuple[Dispatcher, MemoryTable, Published]:
    table, pub = MemoryTable(), Published()
    settings = Settings(topic_prefix="p.", _env_file=None)  # type: ignore[call-arg]
    spec = runtime.agents[agent]
    return Dispatcher(spec, settings, StateStore(table, state), pub, resources), table, pub


def state_of(table: MemoryTable, subject: str) -> dict[str, Any]:
    raw = table.get(PARTITION, str_key(subject))
    assert raw is not None, f"no state for {subject}"
    value: dict[str, Any] = json.loads(raw)["state"]
    return value


def consumed(
    topic: str, type_: str, subject: str, data: dict[str, Any], id: str, offset: int, at: datetime = T0
) -> ConsumedRecord:
    env = RawEnvelope(id=id, source="tests", type=type_, subject=subject, time=at, data=data)
    rec = codec.encode(env)
    return ConsumedRecord(f"p.{topic}", PARTITION, offset, rec.key, rec.value, rec.headers)


def pull_request(action: str, sha: str, id: str, offset: int) -> ConsumedRecord:
    body = json.loads(json.dumps(WEBHOOK))
    body["action"] = action
    body["pull_request"]["head"]["sha"] = sha
    return consumed("github.pull_request.v1", f"github.pull_request.{action}.v1", PR, body, id, offset)


def alert(fp: str, id: str, offset: int, at: datetime, **fields: Any) -> ConsumedRecord:
    data = {"fingerprint": fp, "status": "firing", "title": "disk full", **fields}
    return consumed("webhooks.alerts.v1", "webhooks.alerts.received.v1", fp, data, id, offset, at)


# -- payload models ---------------------------------------------------------------------------
def test_a_real_github_webhook_body_validates_extra_fields_ignored() -> None:
    pr = registry.validate("github.pull_request.opened.v1", WEBHOOK)
    assert isinstance(pr, GitHubPullRequestOpenedV1)
    assert (pr.repo, pr.number, pr.head_sha) == (REPO, NUMBER, WEBHOOK["pull_request"]["head"]["sha"])
    assert pr.pull_request.title == WEBHOOK["pull_request"]["title"]
    assert pr.pull_request.html_url.startswith("https://github.com/")
    assert not hasattr(pr, "sender_extra") and "_links" not in pr.pull_request.model_dump()
    sync = registry.validate("github.pull_request.synchronize.v1", {**WEBHOOK, "action": "synchronize"})
    assert sync.head_sha == pr.head_sha  # type: ignore[attr-defined]


def test_every_pull_request_action_is_on_the_catalogue_topic() -> None:
    for action in ("opened", "synchronize", *OTHER_ACTIONS):
        assert topics.for_type(f"github.pull_request.{action}.v1").name == "github.pull_request.v1"
    assert topics.for_type("webhooks.alerts.received.v1").name == "webhooks.alerts.v1"
    assert topics.for_type("incident.triaged.v1").name == topics.for_type("incident.escalated.v1").name
    spec = runtime.agents["review"]
    assert spec.topics == ("github.pull_request.v1",)
    assert {p.event_type for p in spec.payloads} == {
        "github.pull_request.opened.v1",
        "github.pull_request.synchronize.v1",
    }
    assert runtime.agents["triage"].topics == ("webhooks.alerts.v1",)


# -- review -----------------------------------------------------------------------------------
async def test_review_comments_once_per_head_sha() -> None:
    llm, diffs = FakeLLM(), FakeDiffs()
    d, table, pub = dispatcher("review", ReviewState, {"llm": llm, "github_diffs": diffs})
    assert await d.handle(pull_request("opened", SHA_A, "delivery-1", 0)) == "ok"
    # GitHub's redelivery (new delivery id), a synchronize of the same sha, the same delivery again
    assert await d.handle(pull_request("opened", SHA_A, "delivery-2", 1)) == "ok"
    assert await d.handle(pull_request("synchronize", SHA_A, "delivery-3", 2)) == "ok"
    assert await d.handle(pull_request("opened", SHA_A, "delivery-1", 3)) == "duplicate"
    # other actions on the topic are skipped, not dead-lettered
    assert await d.handle(pull_request("closed", SHA_A, "delivery-4", 4)) == "ignored"
    assert await d.handle(pull_request("synchronize", SHA_B, "delivery-5", 5)) == "ok"

    out = pub.events()
    assert [t for t, _ in pub.sent] == ["p.github.comments.v1"] * 2
    assert [e["type"] for e in out] == ["github.comment.requested.v1"] * 2
    assert [(e["data"]["repo"], e["data"]["number"]) for e in out] == [(REPO, NUMBER)] * 2
    assert [e["subject"] for e in out] == [PR, PR]
    assert [e["causationid"] for e in out] == ["delivery-1", "delivery-5"]
    # the review is the model's second reply, which read the diff the tool fetched
    assert SHA_A[:12] in out[0]["data"]["body"] and "reply 2 | diff --git" in out[0]["data"]["body"]
    assert "+print(1)" in out[0]["data"]["body"] and "+print(2)" in out[1]["data"]["body"]
    assert SHA_B[:12] in out[1]["data"]["body"] and "reply 4" in out[1]["data"]["body"]
    assert diffs.fetched == [(REPO, NUMBER)] * 2 and len(llm.calls) == 4
    assert WEBHOOK["pull_request"]["title"] in llm.calls[0][-1]["content"]
    assert state_of(table, PR) == {"reviewed": [SHA_A, SHA_B], "reviews": 2}


async def test_review_waits_out_a_failing_diff_fetch_and_asks_the_model_once() -> None:
    llm, diffs = FakeLLM(), FakeDiffs(failures=2)
    d, _, pub = dispatcher("review", ReviewState, {"llm": llm, "github_diffs": diffs})
    assert await d.handle(pull_request("opened", SHA_A, "delivery-1", 0)) == "ok"
    assert len(diffs.fetched) == 3  # two 502s, then the diff
    # the first reply (the tool call) was journaled: replayed after each wait, not asked again
    assert len(llm.calls) == 2
    (comment,) = pub.events()
    assert "+print(3)" in comment["data"]["body"]


async def test_review_subject_must_name_the_pull_request() -> None:
    d, _, pub = dispatcher("review", ReviewState, {"llm": FakeLLM(), "github_diffs": FakeDiffs()})
    body = {**WEBHOOK, "action": "opened"}
    rec = consumed("github.pull_request.v1", "github.pull_request.opened.v1", "other/repo#1", body, "x", 0)
    assert await d.handle(rec) == "dlq"
    assert [t for t, _ in pub.sent] == ["p.dlq.review"]


async def test_review_state_remembers_only_the_newest_shas(monkeypatch: pytest.MonkeyPatch) -> None:
    diffs = FakeDiffs()
    diffs.settings = ReviewSettings(_env_file=None, review_shas_kept=2)  # type: ignore[call-arg]
    d, table, pub = dispatcher("review", ReviewState, {"llm": FakeLLM(), "github_diffs": diffs})
    shas = [c * 40 for c in "abc"]
    for i, sha in enumerate(shas):
        assert await d.handle(pull_request("synchronize", sha, f"d{i}", i)) == "ok"
    assert state_of(table, PR)["reviewed"] == shas[1:]
    assert len(pub.sent) == 3


# -- triage -----------------------------------------------------------------------------------
def incidents(pub: Published) -> list[dict[str, Any]]:
    assert {t for t, _ in pub.sent} <= {"p.incidents.v1"}
    return pub.events()


async def test_triage_repeats_in_the_window_only_count() -> None:
    llm = FakeLLM()
    d, table, pub = dispatcher("triage", TriageState, {"llm": llm})
    for i in range(3):
        assert await d.handle(alert("fp-1", f"a{i}", i, T0 + timedelta(seconds=100 * i))) == "ok"
    out = incidents(pub)
    assert [e["type"] for e in out] == ["incident.triaged.v1"]
    assert out[0]["subject"] == "fp-1" and out[0]["data"]["alert_id"] == "a0"
    assert out[0]["data"]["summary"] == "reply 1" and out[0]["data"]["previous_occurrences"] == 0
    assert len(llm.calls) == 1 and "disk full" in llm.calls[0][-1]["content"]
    state = state_of(table, "fp-1")
    assert state["occurrences"] == 3 and state["incident_id"] == "a0"

    # 300 s after the incident opened (the default window): a new incident, the count carried
    assert await d.handle(alert("fp-1", "a3", 3, T0 + timedelta(seconds=300))) == "ok"
    out = incidents(pub)
    assert [e["data"]["alert_id"] for e in out] == ["a0", "a3"]
    assert out[1]["data"]["previous_occurrences"] == 3 and len(llm.calls) == 2
    assert state_of(table, "fp-1")["occurrences"] == 1


async def test_triage_fingerprints_are_independent_and_critical_escalates() -> None:
    llm = FakeLLM()
    d, table, pub = dispatcher("triage", TriageState, {"llm": llm})
    assert await d.handle(alert("fp-w", "w0", 0, T0, severity="warning")) == "ok"
    assert await d.handle(alert("fp-c", "c0", 1, T0, labels={"severity": "CRITICAL"})) == "ok"
    assert await d.handle(alert("fp-c", "c1", 2, T0 + timedelta(seconds=1), severity="critical")) == "ok"
    out = incidents(pub)
    assert [(e["type"], e["subject"]) for e in out] == [
        ("incident.triaged.v1", "fp-w"),
        ("incident.triaged.v1", "fp-c"),
        ("incident.escalated.v1", "fp-c"),
    ]
    assert out[1]["data"]["severity"] == out[2]["data"]["severity"] == "critical"
    assert out[2]["data"]["summary"] == out[1]["data"]["summary"] and out[2]["data"]["alert_id"] == "c0"
    assert len(llm.calls) == 2
    # a repeat that turns an open incident critical escalates it once, with no LLM call
    assert await d.handle(alert("fp-w", "w1", 3, T0 + timedelta(seconds=5), severity="critical")) == "ok"
    assert await d.handle(alert("fp-w", "w2", 4, T0 + timedelta(seconds=6), severity="critical")) == "ok"
    out = incidents(pub)
    assert [(e["type"], e["subject"]) for e in out[3:]] == [("incident.escalated.v1", "fp-w")]
    assert out[3]["data"]["alert_id"] == "w0" and len(llm.calls) == 2
    assert state_of(table, "fp-w")["occurrences"] == 3


async def test_triage_resolved_opens_nothing_and_subject_must_be_the_fingerprint() -> None:
    llm = FakeLLM()
    d, table, pub = dispatcher("triage", TriageState, {"llm": llm})
    assert await d.handle(alert("fp-r", "r0", 0, T0, status="resolved")) == "ok"
    assert pub.sent == [] and llm.calls == []
    assert state_of(table, "fp-r")["total"] == 1 and state_of(table, "fp-r")["occurrences"] == 0
    rec = consumed(
        "webhooks.alerts.v1", "webhooks.alerts.received.v1", "msg_1", {"fingerprint": "fp-x"}, "m1", 1
    )
    assert await d.handle(rec) == "dlq"
    assert [t for t, _ in pub.sent] == ["p.dlq.triage"]


# -- the diff fetch ---------------------------------------------------------------------------
async def test_diff_fetch_against_the_fake_github() -> None:
    fake = FakeGitHub("tok")
    fake.add_pull(REPO, NUMBER, "diff --git a/a b/a\n" + "+x\n" * 600, title="t")
    async with fake.running() as url:
        sink = SinkSettings(_env_file=None, github_api_base=url, github_token=SecretStr("tok"))  # type: ignore[call-arg]
        diffs = GitHubDiffs(sink, ReviewSettings(_env_file=None, review_max_diff_chars=1000))  # type: ignore[call-arg]
        try:
            diff = await diffs.fetch(REPO, NUMBER)
            assert diff.startswith("diff --git a/a b/a\n+x\n") and "diff cut at 1000" in diff
            assert len(diff) < 1100
            assert fake.diff_requests[-1] == {"pull": PR, "accept": DIFF_MEDIA_TYPE, "status": 200}

            with pytest.raises(VigilError) as missing:
                await diffs.fetch(REPO, NUMBER + 1)
            assert not missing.value.retriable and "404" in str(missing.value)

            fake.faults.fail_next, fake.faults.fail_status = 1, 502
            with pytest.raises(VigilError) as failed:
                await diffs.fetch(REPO, NUMBER)
            assert failed.value.retriable

            diffs.sink = SinkSettings(_env_file=None, github_api_base=url, github_token=SecretStr("bad"))  # type: ignore[call-arg]
            with pytest.raises(VigilError) as denied:
                await diffs.fetch(REPO, NUMBER)
            assert not denied.value.retriable and "401" in str(denied.value)
        finally:
            await diffs.session().close()
