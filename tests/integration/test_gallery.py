"""The gallery agents end to end on the real broker: signed webhooks POSTed to a ``vigil
gateway`` process, one worker process running ``review``, ``triage`` and ``github_comments``
against a fake LLM of this module's own (its ``/_stats`` count requests) and the fake GitHub
(served from this process, so the test reads the comments and diff requests it received).

- review: an opened pull request, its redeliveries (same and new delivery id), a synchronize of
  the same head sha, then a synchronize with a new sha -> exactly two comments, one per sha,
  each reviewing the diff GitHub served for it, fetched once per sha with the diff media type;
- triage: a critical alert -> incident.triaged.v1 + incident.escalated.v1; three alerts of one
  fingerprint -> one incident.triaged.v1, one LLM request, occurrences 3 in the entity state.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.fake_llm import completion
from agents.triage import prompt
from ops.fakes.fake_github import DIFF_MEDIA_TYPE, FakeGitHub
from schemas import AlertReceivedV1
from streams import kafka
from streams.core.tables import str_key
from streams.sources.gateway.signatures import decode_whsec, github_signature, standard_signature
from tests.support import VIGIL, Cluster, FakeLLMProc, Proc, free_port, start_process, wait_for

pytestmark = pytest.mark.kafka

TOKEN = "ghp-gallery"
GH_SECRET = "gh-gallery-secret"
ALERTS_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WEBHOOK = json.loads((Path(__file__).parent / "webhooks/github_pull_request_opened.json").read_text())
REPO, NUMBER = WEBHOOK["repository"]["full_name"], WEBHOOK["number"]
SHA_A, SHA_B = "1" * 40, "2" * 40
DIFF_A = "diff --git a/app.py b/app.py\n+print('first push')\n"
TRIAGE_PROMPT = "You triage alerts for the gallery test."
DIFF_B = "diff --git a/app.py b/app.py\n+print('second push')\n"


def alert_body(fingerprint: str, severity: str, title: str) -> dict[str, Any]:
    return {"fingerprint": fingerprint, "status": "firing", "severity": severity, "title": title}


@dataclass
class Gallery:
    cluster: Cluster
    llm: FakeLLMProc
    github: FakeGitHub
    gateway: Proc
    gateway_url: str
    worker: Proc

    def procs(self) -> list[Proc]:
        return [self.gateway, self.worker, self.llm.proc]

    def alive(self) -> None:
        for p in self.procs():
            assert p.alive(), f"{p.name} exited with {p.popen.returncode}:\n{p.log()[-3000:]}"

    def wait(self, predicate: Any, what: str, timeout: float = 90) -> Any:
        def check() -> Any:
            self.alive()
            return predicate()

        try:
            return wait_for(check, timeout, what, interval=0.2)
        except AssertionError:
            logs = "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in self.procs())
            raise AssertionError(f"timed out waiting for {what}\n{logs}") from None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(
            f"{self.gateway_url}{path}", data=body, headers={"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def pull_request(self, action: str, sha: str, delivery: str | None = None) -> str:
        """POST a signed ``pull_request`` delivery (202 expected); its delivery id."""
        payload = json.loads(json.dumps(WEBHOOK))
        payload["action"] = action
        payload["pull_request"]["head"]["sha"] = sha
        body = json.dumps(payload).encode()
        delivery = delivery or str(uuid.uuid4())
        headers = {
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": github_signature(GH_SECRET.encode(), body),
        }
        assert self.post("/webhooks/github", body, headers) == 202
        return delivery

    def alert(self, fingerprint: str, severity: str, title: str) -> str:
        """POST a signed Standard Webhooks alert to the ``alerts`` source; its webhook id."""
        body = json.dumps(alert_body(fingerprint, severity, title)).encode()
        msg_id, ts = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": ts,
            "webhook-signature": standard_signature(decode_whsec(ALERTS_SECRET), msg_id, ts, body),
        }
        assert self.post("/webhooks/generic/alerts", body, headers) == 202
        return msg_id

    def records(self, topic: str) -> list[dict[str, Any]]:
        return self.cluster.read_json(topic)

    def state(self, agent: str, subject: str) -> dict[str, Any] | None:
        """The latest state of ``subject`` in ``agent``'s changelog (whatever its group naming)."""

        async def changelogs() -> list[str]:
            async with kafka.admin(self.cluster.settings()) as client:
                names: list[str] = await client.list_topics()
            return [
                t
                for t in names
                if t.startswith(self.cluster.prefix) and t.endswith(f"-{agent}-state-changelog")
            ]

        latest: dict[str, Any] | None = None
        for topic in asyncio.run(changelogs()):
            for rec in self.cluster.read(topic.removeprefix(self.cluster.prefix)):
                if rec.key == str_key(subject) and rec.value is not None:
                    latest = json.loads(rec.value)["state"]
        return latest


@pytest.fixture(scope="module")
def gallery(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gallery]:
    tmp = tmp_path_factory.mktemp("gallery")
    cluster = Cluster(kafka_bootstrap, f"t{uuid.uuid4().hex[:10]}.", "", tmp)
    github = FakeGitHub(TOKEN)
    try:
        llm = cluster.start_fake_llm()
        cluster.llm_base = llm.api_base
        with github.in_thread() as github_url:
            port = free_port()
            gateway = start_process(
                "gateway",
                [*VIGIL, "gateway", "--port", str(port)],
                cluster.env(
                    VIGIL_GITHUB_WEBHOOK_SECRET=GH_SECRET,
                    VIGIL_WEBHOOK_SOURCES=json.dumps(
                        {"alerts": {"secrets": [ALERTS_SECRET], "subject": "/fingerprint"}}
                    ),
                ),
                tmp / "gateway.log",
            )
            cluster.procs.append(gateway)
            worker = cluster.start_worker(
                "gallery",
                args=["--agents", "review,triage,github_comments"],
                VIGIL_GITHUB_API_BASE=github_url,
                VIGIL_GITHUB_TOKEN=TOKEN,
                VIGIL_TRIAGE_WINDOW="300",
                VIGIL_AGENT__TRIAGE__PROMPT=TRIAGE_PROMPT,
            )
            gallery = Gallery(cluster, llm, github, gateway, f"http://127.0.0.1:{port}", worker)

            def gateway_ready() -> bool:
                try:
                    with urllib.request.urlopen(f"{gallery.gateway_url}/readyz", timeout=2) as r:
                        return bool(r.status == 200)
                except OSError:
                    return False

            gallery.wait(gateway_ready, "vigil gateway /readyz", timeout=60)
            yield gallery
    finally:
        cluster.stop_all()


def test_review_comments_once_per_head_sha(gallery: Gallery) -> None:
    github = gallery.github
    issue = f"{REPO}#{NUMBER}"
    github.add_pull(REPO, NUMBER, DIFF_A, title=WEBHOOK["pull_request"]["title"])
    first = gallery.pull_request("opened", SHA_A)
    gallery.wait(lambda: len(github.comments) >= 1, "the review of the first head sha")

    gallery.pull_request("opened", SHA_A, delivery=first)  # the same delivery again
    gallery.pull_request("opened", SHA_A)  # GitHub's redelivery: a new delivery id
    gallery.pull_request("synchronize", SHA_A)  # the same commit reported again
    github.add_pull(REPO, NUMBER, DIFF_B, title=WEBHOOK["pull_request"]["title"])
    gallery.pull_request("synchronize", SHA_B)
    # one subject, one partition, handled in order: any second comment for SHA_A would be
    # emitted (and posted, same key) before the one for SHA_B
    gallery.wait(lambda: any(SHA_B[:12] in c["body"] for c in github.comments), "the second review")

    comments = github.comments
    assert [c["issue"] for c in comments] == [issue, issue]
    assert SHA_A[:12] in comments[0]["body"] and "+print('first push')" in comments[0]["body"]
    assert SHA_B[:12] in comments[1]["body"] and "+print('second push')" in comments[1]["body"]
    assert "second push" not in comments[0]["body"]
    requested = gallery.records("github.comments.v1")
    assert [r["type"] for r in requested] == ["github.comment.requested.v1"] * 2
    assert requested[0]["causationid"] == first
    assert all(f"vigil:event-id={r['id']} -->" in c["body"] for r, c in zip(requested, comments, strict=True))
    # the diff tool ran once per reviewed sha (journaled), asking for the diff media type
    assert github.diff_requests == [{"pull": issue, "accept": DIFF_MEDIA_TYPE, "status": 200}] * 2
    assert gallery.state("review", issue) == {"reviewed": [SHA_A, SHA_B], "reviews": 2}


def test_triage_counts_repeats_and_escalates_critical(gallery: Gallery) -> None:
    run = uuid.uuid4().hex[:6]
    critical, repeated = f"fp-db-{run}", f"fp-disk-{run}"
    gallery.alert(critical, "critical", "database down")
    gallery.wait(lambda: len(gallery.records("incidents.v1")) >= 2, "the critical incident")
    before = gallery.llm.stats()["received"]

    first = gallery.alert(repeated, "warning", "disk 91% full")
    gallery.alert(repeated, "warning", "disk 93% full")
    gallery.alert(repeated, "warning", "disk 95% full")
    gallery.wait(
        lambda: (gallery.state("triage", repeated) or {}).get("occurrences") == 3,
        "three occurrences in the triage state",
    )

    incidents = gallery.records("incidents.v1")  # partitions differ: no order across subjects
    by_subject = {s: [e for e in incidents if e["subject"] == s] for s in (critical, repeated)}
    assert len(incidents) == 3
    assert [e["type"] for e in by_subject[critical]] == ["incident.triaged.v1", "incident.escalated.v1"]
    assert [e["type"] for e in by_subject[repeated]] == ["incident.triaged.v1"]
    triaged = by_subject[repeated][0]["data"]
    assert triaged["alert_id"] == first and triaged["severity"] == "warning"
    # the LLM's reply to the agent's prompt, its system prompt from VIGIL_AGENT__TRIAGE__PROMPT
    alert = AlertReceivedV1.model_validate(alert_body(repeated, "warning", "disk 91% full"))
    expected = completion({"messages": prompt(alert, TRIAGE_PROMPT)})["choices"][0]["message"]["content"]
    assert triaged["title"] == "disk 91% full" and triaged["summary"] == expected
    escalated = by_subject[critical][1]["data"]
    assert escalated["severity"] == "critical"
    assert escalated["alert_id"] == by_subject[critical][0]["data"]["alert_id"]
    assert gallery.llm.stats()["received"] - before == 1  # the repeats made no LLM request
    state = gallery.state("triage", repeated)
    assert state is not None and state["incident_id"] == first and state["total"] == 3
