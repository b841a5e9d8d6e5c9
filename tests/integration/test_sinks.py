"""The reply sinks in a worker process on the real broker, against the fake Slack and GitHub
servers (served from this process, so the test reads what they received):

- a worker that dies right after a post (``VIGIL_FAIL_EXIT_AFTER_POST``: exit 137 before the
  state and offset are written) and restarts on the same data: one post per event;
- 429 pauses the sink and everything is posted, a 4xx is dead-lettered with the status and a
  body excerpt, a 500 after the write is retried and still posts once;
- Slack end to end: a mention and a direct message reach the support agent and its replies go
  out through the Slack sink in the right thread; the bot's own message is not answered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ops.fakes.fake_github import FakeGitHub
from ops.fakes.fake_slack import FakeSlack
from schemas import RawEnvelope
from streams.core import codec
from streams.core.codec import EncodedRecord
from tests.support import Cluster, Proc, committed_offsets, end_offsets, free_port, wait_for

from .test_backpressure import PauseWatch

pytestmark = pytest.mark.kafka

SLACK_IN, GITHUB_IN = "slack.replies.v1", "github.comments.v1"
TOKEN = "tok-sinks"


@pytest.fixture
def fakes() -> Iterator[tuple[FakeSlack, str, FakeGitHub, str]]:
    slack, github = FakeSlack(TOKEN), FakeGitHub(TOKEN)
    with slack.in_thread() as slack_url, github.in_thread() as github_url:
        yield slack, slack_url, github, github_url


def env_for(fakes: tuple[FakeSlack, str, FakeGitHub, str], **extra: str) -> dict[str, str]:
    _, slack_url, _, github_url = fakes
    return {
        "VIGIL_SLACK_API_BASE": slack_url,
        "VIGIL_SLACK_BOT_TOKEN": TOKEN,
        "VIGIL_GITHUB_API_BASE": github_url,
        "VIGIL_GITHUB_TOKEN": TOKEN,
        **extra,
    }


def record(type_: str, subject: str, data: dict[str, Any], id: str | None = None) -> EncodedRecord:
    env = RawEnvelope(id=id or str(uuid.uuid4()), source="tests", type=type_, subject=subject, data=data)
    return codec.encode(env)


def slack_reply(id: str, channel: str, text: str, thread_ts: str | None = None) -> EncodedRecord:
    data = {"channel": channel, "text": text, "thread_ts": thread_ts}
    return record("slack.reply.requested.v1", f"{channel}:{thread_ts}" if thread_ts else channel, data, id)


def github_comment(id: str, repo: str, number: int, body: str) -> EncodedRecord:
    return record(
        "github.comment.requested.v1", f"{repo}#{number}", {"repo": repo, "number": number, "body": body}, id
    )


def posted_at(fake: FakeSlack | FakeGitHub, path: str) -> float:
    return min(
        r.at for r in fake.requests if r.method == "POST" and r.path == path and r.status in (200, 201)
    )


def all_committed(cluster: Cluster, app_id: str, topic: str, procs: list[Proc]) -> bool:
    for p in procs:
        assert p.alive(), f"{p.name} exited with {p.popen.returncode}:\n{p.log()[-3000:]}"
    settings = cluster.settings(app_id=app_id)
    ends = {p: o for p, o in end_offsets(settings, settings.topic(topic)).items() if o > 0}
    done = committed_offsets(settings, settings.topic(topic))
    return all(done.get(p, 0) >= o for p, o in ends.items())


@pytest.mark.slow
def test_a_post_before_a_crash_is_not_posted_again(
    cluster: Cluster, fakes: tuple[FakeSlack, str, FakeGitHub, str]
) -> None:
    """One event per sink, and a worker that exits right after its second post: each sink has
    posted an event whose state and offset the worker never wrote. The restart on the same data
    redelivers them (and more events sent meanwhile): every event is posted exactly once."""
    slack, _, github, _ = fakes
    cluster.create_topics(SLACK_IN, GITHUB_IN)
    cluster.produce(SLACK_IN, [slack_reply("s-0", "C0", "reply s-0", "1700000000.000100")])
    cluster.produce(GITHUB_IN, [github_comment("g-0", "octo/repo", 1, "comment g-0")])
    data = cluster.tmp / "data-sinks"
    args = ["--agents", "slack_replies,github_comments"]
    first = cluster.start_worker(
        "w1", data_dir=data, args=args, **env_for(fakes, VIGIL_FAIL_EXIT_AFTER_POST="2")
    )
    wait_for(lambda: not first.alive(), 90, "the worker to exit at the failpoint")
    assert first.popen.returncode == 137, first.log()[-3000:]
    assert len(slack.posts_for("s-0")) == 1 and len(github.posts_for("g-0")) == 1
    restarted_at = time.time()

    slack_ids, github_ids = ["s-0", "s-1", "s-2"], ["g-0", "g-1", "g-2"]
    cluster.produce(SLACK_IN, [slack_reply(i, f"C{i}", f"reply {i}") for i in slack_ids[1:]])
    cluster.produce(
        GITHUB_IN,
        [github_comment(i, "octo/repo", n + 2, f"comment {i}") for n, i in enumerate(github_ids[1:])],
    )
    again = cluster.start_worker("w2", data_dir=data, args=args, **env_for(fakes))
    for topic in (SLACK_IN, GITHUB_IN):
        wait_for(lambda t=topic: all_committed(cluster, "vigil", t, [again]), 90, f"{topic} committed", 0.5)  # type: ignore[misc]

    assert {e: len(slack.posts_for(e)) for e in slack_ids} == dict.fromkeys(slack_ids, 1)
    assert {e: len(github.posts_for(e)) for e in github_ids} == dict.fromkeys(github_ids, 1)
    # The second post's event never had its offset committed: the restart redelivered it and
    # found its post by the lookup (the first post's event may have been committed before).
    first_posts = {
        "slack": posted_at(slack, "/chat.postMessage"),
        "github": posted_at(github, "/repos/octo/repo/issues/1/comments"),
    }
    last = max(first_posts, key=first_posts.__getitem__)
    lookups = {
        "slack": [r for r in slack.requests if r.at >= restarted_at and r.path == "/conversations.replies"],
        "github": [
            r
            for r in github.requests
            if r.at >= restarted_at and r.method == "GET" and r.path.endswith("issues/1/comments")
        ],
    }
    assert lookups[last], f"the {last} sink must look up its redelivered event"
    assert cluster.read("dlq.slack_replies") == [] and cluster.read("dlq.github_comments") == []
    again.kill()  # nothing to drain: spares the teardown's graceful stop


def test_rate_limits_pause_4xx_dead_letters_5xx_retries(
    cluster: Cluster, fakes: tuple[FakeSlack, str, FakeGitHub, str]
) -> None:
    slack, _, github, _ = fakes
    slack.add_fault(match='"channel": "C_LIMIT"', fail_next=2, fail_status=429, retry_after="1")
    slack.add_fault(
        match='"channel": "C_GONE"',
        fail_next=100,
        fail_status=200,
        fail_body='{"ok": false, "error": "channel_not_found"}',
    )
    github.add_fault(match="octo/gone", fail_next=100, fail_status=404, fail_body='{"message": "Not Found"}')
    github.add_fault(match="octo/flaky", store_then_fail_next=1, fail_status=500)
    cluster.create_topics(SLACK_IN, GITHUB_IN)
    cluster.produce(
        SLACK_IN,
        [
            slack_reply("s-limit", "C_LIMIT", "wait for it"),
            slack_reply("s-gone", "C_GONE", "lost"),
            slack_reply("s-ok", "C_OK", "fine"),
        ],
    )
    cluster.produce(
        GITHUB_IN,
        [
            github_comment("g-gone", "octo/gone", 1, "nobody"),
            github_comment("g-flaky", "octo/flaky", 2, "once"),
            github_comment("g-ok", "octo/ok", 3, "fine"),
        ],
    )
    port = free_port()
    worker = cluster.start_worker(
        args=["--agents", "slack_replies,github_comments"], **env_for(fakes, VIGIL_METRICS_PORT=str(port))
    )
    watch = PauseWatch(port, "rate_limit")
    wait_for(
        lambda: watch.now() > 0 or slack.posts_for("s-limit"), 60, "the rate limit to pause the sink", 0.05
    )
    wait_for(lambda: all_committed(cluster, "vigil", SLACK_IN, [worker]), 60, "slack offsets committed", 0.5)
    wait_for(
        lambda: all_committed(cluster, "vigil", GITHUB_IN, [worker]), 60, "github offsets committed", 0.5
    )

    assert watch.peak > 0, "a 429 must pause the sink's partitions"
    assert [len(slack.posts_for(e)) for e in ("s-limit", "s-gone", "s-ok")] == [1, 0, 1]
    limited = [r for r in slack.requests if r.path == "/chat.postMessage" and r.body["channel"] == "C_LIMIT"]
    assert [r.status for r in limited] == [429, 429, 200]
    assert limited[-1].at - limited[0].at >= 1.8, "each 429 asked for a 1 s pause"
    assert [len(github.posts_for(e)) for e in ("g-gone", "g-flaky", "g-ok")] == [0, 1, 1]
    # (events older than the worker are looked up before their first post too)
    flaky = [(r.method, r.status) for r in github.requests if "octo/flaky" in r.path]
    assert [m for m, _ in flaky].count("POST") == 1 and ("POST", 500) in flaky
    assert flaky[-1] == ("GET", 200), "the retry looks up and finds the post the 500 hid"

    def letters(dlq: str) -> list[dict[str, str]]:
        return [{k: v.decode() for k, v in r.headers} for r in cluster.read(dlq)]

    [slack_dead] = letters("dlq.slack_replies")
    assert slack_dead["ce_id"] == "s-gone" and slack_dead["vigil_reason"] == "http_rejected"
    assert (
        "HTTP 200" in slack_dead["vigil_error_message"]
        and "channel_not_found" in slack_dead["vigil_error_message"]
    )
    assert slack_dead["vigil_attempts"] == "1"
    [github_dead] = letters("dlq.github_comments")
    assert github_dead["ce_id"] == "g-gone" and "HTTP 404" in github_dead["vigil_error_message"]
    assert '"message": "Not Found"' in github_dead["vigil_error_message"]
    worker.kill()


def slack_callback(event_id: str, event: dict[str, Any], bot: str = "U0VIGILBOT") -> dict[str, Any]:
    return {
        "type": "event_callback",
        "team_id": "T1",
        "api_app_id": "A1",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": event,
        "authorizations": [{"team_id": "T1", "user_id": bot, "is_bot": True}],
    }


def test_support_answers_slack_in_the_thread(
    cluster: Cluster, fakes: tuple[FakeSlack, str, FakeGitHub, str]
) -> None:
    slack, _, _, _ = fakes
    cluster.create_topics("slack.events.v1", "chat.messages.v1", "chat.replies.v1", SLACK_IN)
    mention = {
        "type": "app_mention",
        "channel": "C1",
        "user": "U1",
        "text": "<@U0VIGILBOT> my order is late",
        "ts": "1700000001.000100",
    }
    dm = {
        "type": "message",
        "channel": "D1",
        "channel_type": "im",
        "user": "U2",
        "text": "hello?",
        "ts": "1700000002.000200",
    }
    own = {
        **dm,
        "user": "U0VIGILBOT",
        "bot_id": "B0VIGIL",
        "text": "an earlier answer",
        "ts": "1700000003.000300",
    }
    cluster.produce(
        "slack.events.v1",
        [
            record("slack.app_mention.v1", "C1", slack_callback("Ev1", mention), "Ev1"),
            record("slack.message.v1", "D1", slack_callback("Ev2", dm), "Ev2"),
            record("slack.message.v1", "D1", slack_callback("Ev3", own), "Ev3"),
        ],
    )
    agents = "slack_mentions,slack_dms,support,slack_chat_replies,slack_replies"
    worker = cluster.start_worker(args=["--agents", agents], **env_for(fakes))

    def posted() -> list[dict[str, Any]] | None:
        assert worker.alive(), worker.log()[-3000:]
        return list(slack.messages) if len(slack.messages) >= 2 else None

    messages = wait_for(posted, 90, "two replies posted to the fake Slack", 0.3)
    by_channel = {m["channel"]: m for m in messages}
    assert by_channel["C1"]["thread_ts"] == "1700000001.000100"  # in the mention's thread
    assert "thread_ts" not in by_channel["D1"]  # a DM is answered in the conversation
    assert "U1: my order is late" in by_channel["C1"]["text"]  # the LLM saw the mention without the @
    assert "U2: hello?" in by_channel["D1"]["text"]
    # the bot's own message went nowhere: wait until the bridge committed it, then count again
    wait_for(
        lambda: all_committed(cluster, "vigil", "slack.events.v1", [worker]),
        60,
        "slack events committed",
        0.5,
    )
    replies = [r for r in cluster.read_json("chat.replies.v1")]
    assert sorted(r["subject"] for r in replies) == ["slack:C1:1700000001.000100", "slack:D1"]
    assert len(slack.messages) == 2
    for dlq in ("dlq.slack_mentions", "dlq.slack_dms", "dlq.support", "dlq.slack_replies"):
        assert cluster.read(dlq) == [], dlq
    worker.kill()
