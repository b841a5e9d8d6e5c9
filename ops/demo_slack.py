"""`make demo`, part three: Slack and GitHub through the webhook gateway and the reply sinks.

Starts the fake Slack and GitHub API servers (``ops/fakes/``), ``vigil gateway`` and a worker
with the Slack bridge and both sinks; sends a signed Slack ``app_mention`` to the gateway, which
the support agent of ops/demo.py's worker (still running) answers: the fake Slack prints the
reply posted in the mention's thread. Then a signed GitHub ``pull_request`` webhook is accepted
(202) and read back from its topic; the ``review`` agent fetches the pull request's diff from
the fake GitHub through its tool (each LLM reply and the fetch journaled) and its review is
posted as a comment by the GitHub sink. Everything started here is stopped by PID.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

from demo_procs import free_port, say, stop, wait  # noqa: E402 - ops/ is the script's directory

from streams import Settings, kafka  # noqa: E402

VIGIL = str(Path(sys.executable).with_name("vigil"))
SLACK_SECRET = "demo-slack-signing-secret"
GITHUB_SECRET = "demo-github-webhook-secret"
SLACK_TOKEN = "xoxb-demo"
GITHUB_TOKEN = "ghp-demo"
BOT_USER = "U0VIGILBOT"  # the fake Slack's bot user
AGENTS = "slack_mentions,slack_dms,slack_chat_replies,slack_replies,review,github_comments"


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def signed_slack(url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    ts = str(int(time.time()))
    sig = hmac.new(SLACK_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={sig}",
    }
    return http(url, body, headers)


def signed_github(url: str, event: str, delivery: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    sig = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={sig}",
    }
    return http(url, body, headers)


DEMO_DIFF = """diff --git a/courier.py b/courier.py
--- a/courier.py
+++ b/courier.py
@@ -1,3 +1,5 @@
 def lookup(order):
-    return api.get(order)
+    for attempt in range(3):
+        return api.get(order, timeout=2)
"""


def head_sha(run: str) -> str:
    """One head sha per demo run: the review agent comments once per (pull request, sha)."""
    return hashlib.sha1(run.encode()).hexdigest()


def pull_request_opened(run: str) -> dict[str, Any]:
    repo = {"id": 1, "name": "demo", "full_name": "octo/demo", "owner": {"login": "octo", "type": "User"}}
    return {
        "action": "opened",
        "number": 42,
        "pull_request": {
            "number": 42,
            "state": "open",
            "title": f"Retry the courier lookup ({run})",
            "user": {"login": "ann"},
            "head": {"ref": "retry-courier", "sha": head_sha(run)},
            "base": {"ref": "main", "sha": "b" * 40},
            "html_url": "https://github.com/octo/demo/pull/42",
        },
        "repository": repo,
        "sender": {"login": "ann"},
    }


def run(logs: Path) -> None:
    settings = Settings()
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    run_id = uuid.uuid4().hex[:6]
    slack_port, github_port, gateway_port = free_port(), free_port(), free_port()
    slack_url, github_url = f"http://127.0.0.1:{slack_port}", f"http://127.0.0.1:{github_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    env = {
        **os.environ,
        "VIGIL_SLACK_SIGNING_SECRET": SLACK_SECRET,
        "VIGIL_GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
        "VIGIL_SLACK_API_BASE": slack_url,
        "VIGIL_SLACK_BOT_TOKEN": SLACK_TOKEN,
        "VIGIL_GITHUB_API_BASE": github_url,
        "VIGIL_GITHUB_TOKEN": GITHUB_TOKEN,
    }
    try:
        say(
            f"starting the fake Slack on {slack_url} (it prints what is posted) and the fake GitHub on {github_url}"
        )
        fake_slack = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.fakes.fake_slack",
                "--port",
                str(slack_port),
                "--token",
                SLACK_TOKEN,
                "--echo",
            ],
            cwd=REPO,
        )
        started.append((fake_slack, "fake Slack"))
        fake_github = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.fakes.fake_github",
                "--port",
                str(github_port),
                "--token",
                GITHUB_TOKEN,
            ],
            cwd=REPO,
            stdout=(logs / "fake-github.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((fake_github, "fake GitHub"))
        say(f"starting vigil gateway on {gateway_url}, log in .cache/demo-logs/gateway.log")
        gateway = subprocess.Popen(
            [VIGIL, "gateway", "--port", str(gateway_port)],
            env=env,
            stdout=(logs / "gateway.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((gateway, "gateway"))
        say(f"starting a worker with {AGENTS}, log in .cache/demo-logs/worker-slack.log")
        worker = subprocess.Popen(
            [VIGIL, "worker", "--agents", AGENTS],
            env={
                **env,
                "VIGIL_APP_ID": "vigil-slack",
                "VIGIL_DATA_DIR": str(REPO / ".cache" / "demo-data-slack"),
            },
            stdout=(logs / "worker-slack.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((worker, "slack worker"))

        def alive(proc: subprocess.Popen[bytes], name: str) -> None:
            if proc.poll() is not None:
                raise SystemExit(f"demo: {name} exited with {proc.returncode}, see {logs}")

        for url, name in ((slack_url, "fake Slack"), (github_url, "fake GitHub"), (gateway_url, "gateway")):
            wait(lambda u=url: http(f"{u}/healthz")[0] == 200, 60, f"{name} /healthz")  # type: ignore[misc]
        wait(
            lambda: alive(gateway, "gateway") or http(f"{gateway_url}/readyz")[0] == 200,
            60,
            "gateway /readyz",
        )

        ts = f"{time.time():.6f}"
        mention = {
            "type": "event_callback",
            "team_id": "T0DEMO",
            "api_app_id": "A0DEMO",
            "event_id": f"Ev{run_id.upper()}",
            "event_time": int(time.time()),
            "event": {
                "type": "app_mention",
                "channel": "C0SUPPORT",
                "user": "U0ANN",
                "text": f"<@{BOT_USER}> my order #1234 has not arrived, can you check?",
                "ts": ts,
            },
            "authorizations": [{"team_id": "T0DEMO", "user_id": BOT_USER, "is_bot": True}],
        }
        status, body = signed_slack(f"{gateway_url}/webhooks/slack", mention)
        say(f"signed Slack app_mention -> POST /webhooks/slack: {status} {body.decode(errors='replace')}")
        if status != 202:
            raise SystemExit("demo: the gateway did not accept the Slack event")

        def reply() -> list[dict[str, Any]]:
            alive(worker, "slack worker")
            _, raw = http(f"{slack_url}/_messages")
            return [m for m in json.loads(raw or b"[]") if m.get("thread_ts") == ts]

        [posted] = wait(reply, 180, "the support agent's reply in the Slack thread")
        say(
            f"reply posted to Slack {posted['channel']} in thread {posted['thread_ts']} "
            f"(metadata {posted['metadata']['event_type']}: {posted['metadata']['event_payload']})"
        )

        http(
            f"{github_url}/_pulls",
            json.dumps({"repo": "octo/demo", "number": 42, "diff": DEMO_DIFF}).encode(),
            {"Content-Type": "application/json"},
        )
        delivery = str(uuid.uuid4())
        status, body = signed_github(
            f"{gateway_url}/webhooks/github", "pull_request", delivery, pull_request_opened(run_id)
        )
        say(
            f"signed GitHub pull_request webhook -> POST /webhooks/github: {status} {body.decode(errors='replace')}"
        )
        if status != 202:
            raise SystemExit("demo: the gateway did not accept the GitHub webhook")
        topic = settings.topic("github.pull_request.v1")

        def on_topic() -> list[dict[str, Any]]:
            records = asyncio.run(_read(settings, topic))
            return [e for e in records if e["id"] == delivery]

        [event] = wait(on_topic, 30, f"the webhook on {topic}")
        say(f"on {topic}: type={event['type']} id={event['id']} subject={event['subject']}")

        def comments() -> list[dict[str, Any]]:
            alive(worker, "slack worker")
            _, raw = http(f"{github_url}/_comments")
            return [c for c in json.loads(raw or b"[]") if head_sha(run_id)[:12] in c["body"]]

        [posted_comment] = wait(comments, 120, "the review agent's comment on the fake GitHub")
        _, raw = http(f"{github_url}/_pulls/requests")
        fetched = [r for r in json.loads(raw or b"[]") if r["pull"] == "octo/demo#42"]
        say(
            f"review agent fetched the diff through its tool (Accept: {fetched[-1]['accept'] if fetched else '-'}); "
            f"comment posted to {posted_comment['issue']} by the GitHub sink:"
        )
        for line in posted_comment["body"].splitlines()[:6]:
            say(f"    {line}")
    finally:
        for proc, name in reversed(started):
            stop(proc, name)


async def _read(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) async for r in kafka.read_topics(settings, [topic]) if r.value is not None]
