"""The reply sinks against the in-process fake Slack and GitHub servers: what is posted, the
lookup that keeps a post effectively once, and the error policy (429 pauses, 4xx rejects with
the status and a body excerpt, 5xx is retriable)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ops.fakes.fake_github import FakeGitHub
from ops.fakes.fake_slack import FakeSlack
from schemas import Envelope, GitHubCommentRequestedV1, SlackReplyRequestedV1
from streams.core.backpressure import Blocked
from streams.core.retry import is_retriable
from streams.sinks.base import PostLedger, RateLimitGate, SinkRejectedError, SinkUnavailableError, retry_after
from streams.sinks.github import GitHubSink, marker
from streams.sinks.settings import SinkSettings
from streams.sinks.slack import SlackSink

TOKEN = "tok-123"


def slack_event(
    text: str = "hello", *, id: str = "ev-1", thread_ts: str | None = "1700000000.000100", age: float = 0.0
) -> Envelope[SlackReplyRequestedV1]:
    return Envelope[SlackReplyRequestedV1](
        id=id,
        source="test",
        type="slack.reply.requested.v1",
        subject="C1",
        time=datetime.now(UTC) - timedelta(seconds=age),
        data=SlackReplyRequestedV1(channel="C1", thread_ts=thread_ts, text=text),
    )


def github_event(
    body: str = "LGTM", *, id: str = "ev-g1", age: float = 0.0
) -> Envelope[GitHubCommentRequestedV1]:
    return Envelope[GitHubCommentRequestedV1](
        id=id,
        source="test",
        type="github.comment.requested.v1",
        subject="octo/repo#7",
        time=datetime.now(UTC) - timedelta(seconds=age),
        data=GitHubCommentRequestedV1(repo="octo/repo", number=7, body=body),
    )


def fresh(sink: Any) -> None:
    """As if the sink's process had started long before the events: fresh events post at once."""
    sink.ledger.started = time.time() - 3600


@pytest.fixture
async def slack() -> AsyncIterator[tuple[FakeSlack, SlackSink]]:
    fake = FakeSlack(TOKEN)
    async with fake.running() as url:
        sink = SlackSink(SinkSettings(slack_api_base=url, slack_bot_token=TOKEN, sink_timeout=2))
        fresh(sink)
        try:
            yield fake, sink
        finally:
            await sink.close()


@pytest.fixture
async def github() -> AsyncIterator[tuple[FakeGitHub, GitHubSink]]:
    fake = FakeGitHub(TOKEN)
    async with fake.running() as url:
        sink = GitHubSink(SinkSettings(github_api_base=url, github_token=TOKEN, sink_timeout=2))
        fresh(sink)
        try:
            yield fake, sink
        finally:
            await sink.close()


# -- what is posted ---------------------------------------------------------------------------
async def test_slack_post_carries_thread_metadata_and_token(slack: tuple[FakeSlack, SlackSink]) -> None:
    fake, sink = slack
    await sink.deliver(slack_event("hi there"))
    [msg] = fake.messages
    assert msg["channel"] == "C1" and msg["thread_ts"] == "1700000000.000100" and msg["text"] == "hi there"
    assert msg["metadata"] == {"event_type": "vigil_reply", "event_payload": {"event_id": "ev-1"}}
    [req] = fake.requests
    assert (req.method, req.path, req.authorization) == ("POST", "/chat.postMessage", f"Bearer {TOKEN}")


async def test_github_post_carries_the_hidden_marker(github: tuple[FakeGitHub, GitHubSink]) -> None:
    fake, sink = github
    await sink.deliver(github_event("Looks good"))
    [comment] = fake.comments
    assert comment["issue"] == "octo/repo#7"
    assert comment["body"] == "Looks good\n\n<!-- vigil:event-id=ev-g1 -->"
    [req] = fake.requests
    assert (req.method, req.path) == ("POST", "/repos/octo/repo/issues/7/comments")
    assert req.authorization == f"Bearer {TOKEN}"


def test_marker_hashes_ids_that_could_end_the_comment() -> None:
    assert marker("a-b.c:1") == "<!-- vigil:event-id=a-b.c:1 -->"
    tricky = marker("x --> <script>")
    assert "-->" not in tricky[: -len(" -->")] and tricky.startswith("<!-- vigil:event-id=sha256:")


# -- effectively once -------------------------------------------------------------------------
@pytest.mark.parametrize("thread_ts", ["1700000000.000100", None])
async def test_slack_redelivery_after_a_restart_finds_the_post(
    slack: tuple[FakeSlack, SlackSink], thread_ts: str | None
) -> None:
    fake, sink = slack
    await sink.deliver(slack_event(thread_ts=thread_ts))
    # a new process (empty ledger, started after the event was created) gets the event again
    restarted = SlackSink(sink.settings)
    try:
        await restarted.deliver(slack_event(thread_ts=thread_ts))
    finally:
        await restarted.close()
    assert len(fake.posts_for("ev-1")) == 1
    lookup = fake.requests[-1]
    method = "conversations.replies" if thread_ts else "conversations.history"
    assert lookup.path == f"/{method}" and lookup.query["include_all_metadata"] == "true"


async def test_github_redelivery_of_an_old_event_finds_the_post_across_pages(
    github: tuple[FakeGitHub, GitHubSink],
) -> None:
    fake, sink = github
    for i in range(120):  # other comments on the issue: the marker is on the second page
        await sink.deliver(github_event(f"c{i}", id=f"other-{i}"))
    await sink.deliver(github_event(id="ev-old"))
    other = GitHubSink(sink.settings)  # the worker that takes the partition over
    fresh(other)
    try:
        await other.deliver(github_event(id="ev-old", age=60))  # old: it may have been posted
    finally:
        await other.close()
    assert len(fake.posts_for("ev-old")) == 1
    lookups = [r for r in fake.requests if r.method == "GET"]
    assert len(lookups) == 2 and lookups[1].query.get("page") == "2"


async def test_an_answer_lost_after_the_post_is_looked_up_before_the_retry(
    slack: tuple[FakeSlack, SlackSink],
) -> None:
    fake, sink = slack
    fake.faults.store_then_fail_next = 1  # posted, but the client sees a 500
    with pytest.raises(SinkUnavailableError) as failed:
        await sink.deliver(slack_event())
    assert is_retriable(failed.value)
    await sink.deliver(slack_event())  # the retry: in doubt, so it looks first
    assert len(fake.posts_for("ev-1")) == 1
    assert [r.path for r in fake.requests] == ["/chat.postMessage", "/conversations.replies"]


async def test_a_fresh_event_posts_without_a_lookup_and_a_second_delivery_is_skipped(
    github: tuple[FakeGitHub, GitHubSink],
) -> None:
    fake, sink = github
    await sink.deliver(github_event())
    await sink.deliver(github_event())  # this process knows it posted it
    assert [r.method for r in fake.requests] == ["POST"]
    assert len(fake.comments) == 1


def test_ledger_rule() -> None:
    start = 1_000_000.0
    ledger = PostLedger(5.0, started=start)

    def at(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    assert ledger.must_look_up("a", at(start - 1), now=start + 100)  # created before the start
    assert ledger.must_look_up("a", at(start + 2), now=start + 3)  # within the start margin
    assert not ledger.must_look_up("a", at(start + 50), now=start + 51)  # fresh
    assert ledger.must_look_up("a", at(start + 50), now=start + 56)  # older than lookup_age
    ledger.sending("a")
    assert ledger.must_look_up("a", at(start + 50), now=start + 51)  # in doubt
    ledger.sent("a")
    assert ledger.posted("a") and not ledger.must_look_up("a", at(start + 50), now=start + 51)
    assert PostLedger(0.0, started=start).must_look_up("b", at(start + 50), now=start + 50)


# -- the error policy -------------------------------------------------------------------------
async def test_429_closes_the_gate_for_retry_after_and_posts_nothing(
    slack: tuple[FakeSlack, SlackSink],
) -> None:
    fake, sink = slack
    fake.faults.fail_next, fake.faults.fail_status, fake.faults.retry_after = 1, 429, "1"
    assert sink.gates_for("slack_replies") == [sink.gate] and sink.gates_for("support") == []
    with pytest.raises(Blocked) as blocked:
        await sink.deliver(slack_event())
    assert blocked.value.gate is sink.gate and sink.gate.blocked()
    assert 0.5 < sink.gate.remaining() <= 1.0
    with pytest.raises(Blocked):  # while closed, no request is spent
        await sink.deliver(slack_event())
    assert len(fake.requests) == 1
    started = time.monotonic()
    await blocked.value.wait()
    assert time.monotonic() - started > 0.5 and not sink.gate.blocked()
    await sink.deliver(slack_event())  # rejected before: posts without a lookup
    assert len(fake.posts_for("ev-1")) == 1 and [r.path for r in fake.requests][-1] == "/chat.postMessage"


@pytest.mark.parametrize(
    ("status", "headers_or_body", "pause"),
    [
        (403, {"retry_after": "7"}, 7.0),
        (403, {"fail_body": '{"message": "You have exceeded a secondary rate limit."}'}, 60.0),
        (429, {}, 60.0),
    ],
)
async def test_github_rate_limits_pause_the_sink(
    github: tuple[FakeGitHub, GitHubSink], status: int, headers_or_body: dict[str, str], pause: float
) -> None:
    fake, sink = github
    fake.faults.fail_next, fake.faults.fail_status = 1, status
    for key, value in headers_or_body.items():
        setattr(fake.faults, key, value)
    with pytest.raises(Blocked):
        await sink.deliver(github_event())
    assert pause - 1 < sink.gate.remaining() <= pause
    assert fake.comments == []


async def test_github_4xx_is_rejected_with_status_and_excerpt(github: tuple[FakeGitHub, GitHubSink]) -> None:
    fake, sink = github
    fake.faults.fail_next, fake.faults.fail_status = 1, 404
    fake.faults.fail_body = '{"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}'
    with pytest.raises(SinkRejectedError) as rejected:
        await sink.deliver(github_event())
    err = rejected.value
    assert (err.status, is_retriable(err), err.reason) == (404, False, "http_rejected")
    assert "HTTP 404" in str(err) and '"message": "Not Found"' in str(err)
    assert not sink.gate.blocked()


async def test_slack_errors_in_a_200_body(slack: tuple[FakeSlack, SlackSink]) -> None:
    fake, sink = slack
    fake.faults.fail_next, fake.faults.fail_status = 1, 200
    fake.faults.fail_body = '{"ok": false, "error": "channel_not_found"}'
    with pytest.raises(SinkRejectedError) as rejected:
        await sink.deliver(slack_event())
    assert rejected.value.status == 200 and "channel_not_found" in str(rejected.value)
    fake.faults.fail_next, fake.faults.fail_body = 1, '{"ok": false, "error": "internal_error"}'
    with pytest.raises(SinkUnavailableError):
        await sink.deliver(slack_event())
    bad_token = SlackSink(SinkSettings(slack_api_base=sink.settings.slack_api_base, slack_bot_token="nope"))
    fresh(bad_token)
    try:
        with pytest.raises(SinkRejectedError, match="invalid_auth"):
            await bad_token.deliver(slack_event(id="ev-2"))
    finally:
        await bad_token.close()


async def test_500_and_unreachable_are_retriable(github: tuple[FakeGitHub, GitHubSink]) -> None:
    fake, sink = github
    fake.faults.fail_next, fake.faults.fail_status = 1, 502
    with pytest.raises(SinkUnavailableError) as failed:
        await sink.deliver(github_event())
    assert is_retriable(failed.value) and "HTTP 502" in str(failed.value)
    nowhere = GitHubSink(
        SinkSettings(github_api_base="http://127.0.0.1:9", github_token=TOKEN, sink_timeout=2)
    )
    try:
        with pytest.raises(SinkUnavailableError) as unreachable:
            await nowhere.deliver(github_event())
    finally:
        await nowhere.close()
    assert is_retriable(unreachable.value)


def test_retry_after_forms_and_gate_bounds() -> None:
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({}) is None and retry_after({"Retry-After": "soon"}) is None
    http_date = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    got = retry_after({"Retry-After": http_date})
    assert got is not None and 25 < got <= 30
    gate = RateLimitGate()
    assert not gate.blocked()
    gate.block_for(10**6)  # an absurd header cannot stop the sink for days
    assert gate.remaining() <= 900
