"""The webhook gateway on a real port against the real broker: every bad input at the edge
answers its status and leaves the topic's end offsets where they were; good GitHub, Slack and
Standard Webhooks requests land on their topics with the contract's type, id and subject, and
only after the broker acknowledged them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from streams import kafka
from streams.core.settings import Settings
from streams.kafka.client import admin
from streams.sources.gateway import Gateway, GatewaySettings, SourceConfig, bound_port, serve
from streams.sources.gateway.signatures import (
    decode_whsec,
    github_signature,
    slack_signature,
    standard_signature,
)
from tests.support import VIGIL, free_port, start_process

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="module")]

PR_OPENED = (Path(__file__).parent / "webhooks/github_pull_request_opened.json").read_bytes()
GH_NEW, GH_OLD = "gh-new-secret", "gh-old-secret"
SLACK_NEW, SLACK_OLD = "slack-new-secret", "slack-old-secret"
ALERTS_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PLAIN_SECRET = "whsec_" + "cGxhaW4tc291cmNlLXNlY3JldC1rZXk="
MAX_BYTES = 64 * 1024


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Running:
    gateway: Gateway
    runner: Any
    url: str
    settings: Settings

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(settings: Settings, config: GatewaySettings, *, ready: bool = True) -> Running:
    gateway = Gateway(settings, config)
    runner = await serve(gateway, "127.0.0.1", 0)
    running = Running(gateway, runner, f"http://127.0.0.1:{bound_port(runner)}", settings)
    if ready:
        await until(gateway.ready, 30, "the gateway's producer")
    return running


def config(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "github_webhook_secret": SecretStr(f"{GH_NEW},{GH_OLD}"),
        "slack_signing_secret": SecretStr(f"{SLACK_NEW},{SLACK_OLD}"),
        "webhook_sources": {
            "alerts": SourceConfig(secrets=[SecretStr(ALERTS_SECRET)], subject="/fingerprint"),
            "plain": SourceConfig(secrets=[SecretStr(PLAIN_SECRET)]),
        },
        "webhook_max_bytes": MAX_BYTES,
    }
    values.update(overrides)
    return GatewaySettings(_env_file=None, **values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(kafka_bootstrap: str) -> AsyncIterator[Running]:
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=2
    )
    running = await start(settings, config())
    try:
        yield running
    finally:
        await running.stop()
        async with admin(settings) as client:
            mine = [t for t in await client.list_topics() if t.startswith(settings.topic_prefix)]
            if mine:
                await client.delete_topics(mine)


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def total(settings: Settings, topic: str) -> int:
    """Records ever written to the (logical) topic: the sum of its end offsets."""
    return sum((await kafka.end_offsets(settings, settings.topic(topic))).values())


async def records(settings: Settings, topic: str) -> list[Any]:
    return [r async for r in kafka.read_topics(settings, [settings.topic(topic)])]


# -- signed requests --------------------------------------------------------------------------
def github(body: bytes, *, event: str = "pull_request", secret: str = GH_NEW, **extra: str) -> dict[str, Any]:
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": github_signature(secret.encode(), body),
        "Content-Type": "application/json",
        **extra,
    }
    return {"data": body, "headers": {k: v for k, v in headers.items() if v}}


def slack(
    body: bytes, *, secret: str = SLACK_NEW, skew: int = 0, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    ts = str(int(time.time()) + skew)
    headers = {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": slack_signature(secret.encode(), ts, body),
        "Content-Type": "application/json",
        **(extra or {}),
    }
    return {"data": body, "headers": headers}


def standard(
    body: bytes, *, secret: str = ALERTS_SECRET, skew: int = 0, msg_id: str | None = None
) -> dict[str, Any]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = str(int(time.time()) + skew)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": standard_signature(decode_whsec(secret), msg_id, ts, body),
        "Content-Type": "application/json",
    }
    return {"data": body, "headers": headers}


def slack_event(event_id: str, **event: Any) -> bytes:
    return json.dumps(
        {
            "type": "event_callback",
            "team_id": "T1",
            "event_id": event_id,
            "event": {"type": "app_mention", **event},
        }
    ).encode()


ALERT = json.dumps({"fingerprint": "fp-42", "status": "firing"}).encode()
SLACK_MSG = slack_event("Ev0", channel="C1", text="hi")


def tamper(request: dict[str, Any]) -> dict[str, Any]:
    return {**request, "data": request["data"][:-1] + b" }"}


def without(request: dict[str, Any], header: str) -> dict[str, Any]:
    return {**request, "headers": {k: v for k, v in request["headers"].items() if k != header}}


def resign(request: dict[str, Any], header: str, value: str) -> dict[str, Any]:
    return {**request, "headers": {**request["headers"], header: value}}


# (path, topic, request builder, expected status, expected outcome label)
BAD: list[tuple[str, str, Callable[[], dict[str, Any]], int, str]] = [
    ("github", "github.pull_request.v1", lambda: github(PR_OPENED, secret="wrong"), 401, "bad_signature"),
    (
        "github",
        "github.pull_request.v1",
        lambda: without(github(PR_OPENED), "X-Hub-Signature-256"),
        401,
        "missing_signature",
    ),
    ("github", "github.pull_request.v1", lambda: tamper(github(PR_OPENED)), 401, "bad_signature"),
    ("github", "github.pull_request.v1", lambda: github(b'{"action": "opened", '), 400, "malformed"),
    (
        "github",
        "github.pull_request.v1",
        lambda: without(github(PR_OPENED), "X-GitHub-Delivery"),
        400,
        "missing_header",
    ),
    ("slack", "slack.events.v1", lambda: slack(SLACK_MSG, secret="wrong"), 401, "bad_signature"),
    (
        "slack",
        "slack.events.v1",
        lambda: without(slack(SLACK_MSG), "X-Slack-Signature"),
        401,
        "missing_signature",
    ),
    ("slack", "slack.events.v1", lambda: tamper(slack(SLACK_MSG)), 401, "bad_signature"),
    ("slack", "slack.events.v1", lambda: slack(SLACK_MSG, skew=-400), 401, "stale"),
    ("slack", "slack.events.v1", lambda: slack(SLACK_MSG, skew=400), 401, "future"),
    ("slack", "slack.events.v1", lambda: slack(b"{not json"), 400, "malformed"),
    (
        "generic/alerts",
        "webhooks.alerts.v1",
        lambda: standard(ALERT, secret=PLAIN_SECRET),
        401,
        "bad_signature",
    ),
    ("generic/alerts", "webhooks.alerts.v1", lambda: tamper(standard(ALERT)), 401, "bad_signature"),
    (
        "generic/alerts",
        "webhooks.alerts.v1",
        lambda: without(standard(ALERT), "webhook-id"),
        400,
        "missing_header",
    ),
    (
        "generic/alerts",
        "webhooks.alerts.v1",
        lambda: without(standard(ALERT), "webhook-signature"),
        401,
        "missing_signature",
    ),
    (
        "slack",
        "slack.events.v1",
        lambda: without(slack(SLACK_MSG), "X-Slack-Request-Timestamp"),
        400,
        "missing_header",
    ),
    (
        "github",
        "github.pull_request.v1",
        lambda: without(github(PR_OPENED), "X-GitHub-Event"),
        400,
        "missing_header",
    ),
    ("generic/alerts", "webhooks.alerts.v1", lambda: standard(ALERT, skew=-400), 401, "stale"),
    ("generic/alerts", "webhooks.alerts.v1", lambda: standard(ALERT, skew=400), 401, "future"),
    ("generic/alerts", "webhooks.alerts.v1", lambda: standard(b"[1, 2"), 400, "malformed"),
    (
        "generic/alerts",
        "webhooks.alerts.v1",
        lambda: standard(b'{"status": "firing"}'),
        400,
        "malformed",
    ),  # no /fingerprint
    ("generic/alerts", "webhooks.alerts.v1", lambda: standard(b"x" * (MAX_BYTES + 1)), 413, "too_large"),
    (
        "github",
        "github.pull_request.v1",
        lambda: github(b" " * (MAX_BYTES + 1) + PR_OPENED),
        413,
        "too_large",
    ),
]


async def outcome_count(http: aiohttp.ClientSession, gw: Running, route: str, outcome: str) -> float:
    async with http.get(f"{gw.url}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vigil_webhook_requests_total" and sample.labels == {
                "route": route,
                "outcome": outcome,
            }:
                return float(sample.value)
    return 0.0


async def test_every_bad_input_is_refused_and_nothing_is_enqueued(
    gw: Running, http: aiohttp.ClientSession
) -> None:
    topics = {topic for _, topic, *_ in BAD}
    before = {t: await total(gw.settings, t) for t in topics}
    for path, _topic, build, status, outcome in BAD:
        route = "generic:alerts" if path.startswith("generic") else path
        counted = await outcome_count(http, gw, route, outcome)
        async with http.post(f"{gw.url}/webhooks/{path}", **build()) as response:
            body = await response.json()
            assert response.status == status, (path, outcome, body)
            assert body["error"], body  # a reason, always
        assert await outcome_count(http, gw, route, outcome) == counted + 1, (path, outcome)
    after = {t: await total(gw.settings, t) for t in topics}
    assert after == before


async def test_unknown_generic_source_is_404(gw: Running, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gw.url}/webhooks/generic/nope", **standard(ALERT)) as response:
        assert response.status == 404
    assert await total(gw.settings, "webhooks.nope.v1") == 0


async def test_oversize_body_is_refused_before_it_is_sent(gw: Running) -> None:
    """Content-Length over the limit: 413 after the headers alone, the body never read."""
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {50 * MAX_BYTES}\r\n\r\n".encode()
            + b"{"
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 413"), status
        rest = await asyncio.wait_for(reader.read(), 5)  # the server closes the connection
        assert b"over" in rest
    finally:
        writer.close()


async def test_chunked_oversize_body_stops_at_the_limit(gw: Running) -> None:
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /webhooks/slack HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 16384
        for _ in range(MAX_BYTES // len(chunk) + 1):
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()  # no terminating chunk: the request is never complete
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 413"), status
    finally:
        writer.close()


async def test_github_pull_request_opened_end_to_end(gw: Running, http: aiohttp.ClientSession) -> None:
    before = await total(gw.settings, "github.pull_request.v1")
    request = github(PR_OPENED)
    delivery = request["headers"]["X-GitHub-Delivery"]
    async with http.post(f"{gw.url}/webhooks/github", **request) as response:
        assert response.status == 202
        assert await response.json() == {"id": delivery}
    assert await total(gw.settings, "github.pull_request.v1") == before + 1  # acked before the 202
    (record,) = [
        r
        for r in await records(gw.settings, "github.pull_request.v1")
        if r.key == b"octocat/Hello-World#1347"
    ]
    headers = dict(record.headers)
    assert headers["ce_id"] == delivery.encode()
    assert headers["ce_type"] == b"github.pull_request.opened.v1"
    envelope = json.loads(record.value)
    assert envelope["id"] == delivery
    assert envelope["type"] == "github.pull_request.opened.v1"
    assert envelope["subject"] == "octocat/Hello-World#1347"
    assert envelope["specversion"] == "1.0"
    assert envelope["data"] == json.loads(PR_OPENED)


async def test_github_ping_rotation_and_push(gw: Running, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{gw.url}/webhooks/github", **github(b'{"zen": "Keep it simple."}', event="ping")
    ) as r:
        assert r.status == 200
    assert await total(gw.settings, "github.ping.v1") == 0
    push = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "octo/r"}}).encode()
    for secret in (GH_OLD, GH_NEW):  # rotation: both secrets accepted
        async with http.post(f"{gw.url}/webhooks/github", **github(push, event="push", secret=secret)) as r:
            assert r.status == 202, secret
    keys = [r.key for r in await records(gw.settings, "github.push.v1")]
    assert keys == [b"octo/r@refs/heads/main"] * 2


async def test_slack_url_verification(gw: Running, http: aiohttp.ClientSession) -> None:
    before = await total(gw.settings, "slack.events.v1")
    body = json.dumps(
        {"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV", "type": "url_verification"}
    ).encode()
    async with http.post(f"{gw.url}/webhooks/slack", **slack(body)) as response:
        assert response.status == 200
        assert (await response.json())["challenge"] == "3eZbrw1aBm2rZgRNFdxV"
    async with http.post(f"{gw.url}/webhooks/slack", **slack(body, secret="wrong")) as response:
        assert response.status == 401  # the handshake is signed too
    assert await total(gw.settings, "slack.events.v1") == before


async def test_slack_event_callback_and_its_retries(gw: Running, http: aiohttp.ClientSession) -> None:
    event_id = f"Ev{uuid.uuid4().hex[:8]}"
    body = slack_event(event_id, channel="C42", thread_ts="1700000000.000100", text="<@U1> help")
    started = time.monotonic()
    async with http.post(f"{gw.url}/webhooks/slack", **slack(body, secret=SLACK_OLD)) as response:
        assert response.status == 202
        assert await response.json() == {"id": event_id}
    assert time.monotonic() - started < 3  # Slack's deadline
    for retry in ("1", "2"):  # Slack re-sends the same event_id, freshly signed
        extra = {"X-Slack-Retry-Num": retry, "X-Slack-Retry-Reason": "http_timeout"}
        async with http.post(f"{gw.url}/webhooks/slack", **slack(body, extra=extra)) as response:
            assert response.status == 202
            assert (await response.json())["id"] == event_id
    mine = [
        r
        for r in await records(gw.settings, "slack.events.v1")
        if dict(r.headers)["ce_id"] == event_id.encode()
    ]
    assert len(mine) == 1  # the retries were answered, not enqueued again
    assert mine[0].key == b"C42:1700000000.000100"
    assert dict(mine[0].headers)["ce_type"] == b"slack.app_mention.v1"
    assert json.loads(mine[0].value)["data"]["event"]["text"] == "<@U1> help"


async def test_slack_slash_command_is_verified_on_the_form_bytes(
    gw: Running, http: aiohttp.ClientSession
) -> None:
    form = b"command=%2Fdeploy&text=prod&channel_id=C9&user_id=U9&trigger_id=13345224609.738474920.8088930838d88f008e0"
    form_request = slack(form)
    form_request["headers"]["Content-Type"] = "application/x-www-form-urlencoded"
    before = await total(gw.settings, "slack.events.v1")
    async with http.post(f"{gw.url}/webhooks/slack", **tamper(form_request)) as response:
        assert response.status == 401
    assert await total(gw.settings, "slack.events.v1") == before
    async with http.post(f"{gw.url}/webhooks/slack", **form_request) as response:
        assert response.status == 202
    (record,) = [r for r in await records(gw.settings, "slack.events.v1") if r.key == b"C9"]
    assert dict(record.headers)["ce_type"] == b"slack.slash_command.v1"
    assert json.loads(record.value)["data"]["text"] == "prod"


async def test_generic_source_keyed_by_json_pointer_or_webhook_id(
    gw: Running, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gw.url}/webhooks/generic/alerts", **standard(ALERT, msg_id="msg_a1")) as response:
        assert response.status == 202
        assert await response.json() == {"id": "msg_a1"}
    (record,) = await records(gw.settings, "webhooks.alerts.v1")
    assert record.key == b"fp-42"
    assert dict(record.headers)["ce_type"] == b"webhooks.alerts.received.v1"
    assert json.loads(record.value)["data"] == {"fingerprint": "fp-42", "status": "firing"}
    request = standard(b'{"any": "thing"}', secret=PLAIN_SECRET, msg_id="msg_p1")
    async with http.post(f"{gw.url}/webhooks/generic/plain", **request) as response:
        assert response.status == 202
    (record,) = await records(gw.settings, "webhooks.plain.v1")
    assert record.key == b"msg_p1"


async def test_probes_and_metrics(gw: Running, http: aiohttp.ClientSession) -> None:
    for path in ("/healthz", "/readyz"):
        async with http.get(gw.url + path) as response:
            assert response.status == 200, path
    async with http.get(f"{gw.url}/metrics") as response:
        text = await response.text()
    assert await outcome_count(http, gw, "github", "accepted") >= 1
    assert "vigil_webhook_request_duration_seconds_bucket" in text
    assert "vigil_webhook_request_bytes_bucket" in text


async def test_fail_closed_routes(gw: Running, http: aiohttp.ClientSession) -> None:
    """No secret configured: every request refused, even one signed with an empty secret."""
    closed = await start(
        gw.settings,
        config(
            github_webhook_secret=None,
            slack_signing_secret=SecretStr(" , "),
            webhook_sources={"alerts": SourceConfig(secrets=[])},
        ),
    )
    try:
        topics = ("github.pull_request.v1", "slack.events.v1", "webhooks.alerts.v1")
        before = {t: await total(gw.settings, t) for t in topics}
        for path, request in [
            ("github", github(PR_OPENED, secret="")),
            ("slack", slack(SLACK_MSG, secret="")),
            ("generic/alerts", standard(ALERT)),
        ]:
            async with http.post(f"{closed.url}/webhooks/{path}", **request) as response:
                assert response.status == 401, path
                assert "fail closed" in (await response.json())["error"]
        assert {t: await total(gw.settings, t) for t in topics} == before
    finally:
        await closed.stop()


async def test_kafka_down_is_503_with_retry_after(gw: Running, http: aiohttp.ClientSession) -> None:
    down = await start(
        Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", topic_prefix=gw.settings.topic_prefix),
        config(),
        ready=False,
    )
    try:
        before = await total(gw.settings, "github.pull_request.v1")
        async with http.get(f"{down.url}/readyz") as response:
            assert response.status == 503
        async with http.get(f"{down.url}/healthz") as response:
            assert response.status == 200  # alive, just not ready
        for path, request in [("github", github(PR_OPENED)), ("slack", slack(SLACK_MSG))]:
            async with http.post(f"{down.url}/webhooks/{path}", **request) as response:
                assert response.status == 503, path
                assert int(response.headers["Retry-After"]) > 0
        async with http.post(f"{down.url}/webhooks/github", **github(PR_OPENED, secret="wrong")) as response:
            assert response.status == 401  # authentication first: no hint about the broker
        assert await total(gw.settings, "github.pull_request.v1") == before
    finally:
        await down.stop()


async def test_in_flight_limit_answers_503(gw: Running, http: aiohttp.ClientSession) -> None:
    small = await start(gw.settings, config(gateway_max_in_flight=1))
    host, port = small.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    try:  # one request holds the only slot: its body never finishes arriving
        writer.write(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await until(lambda: _in_flight(small), 5, "the first request to be in flight")
        async with http.post(f"{small.url}/webhooks/github", **github(PR_OPENED)) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
    finally:
        writer.close()
        await small.stop()


async def _in_flight(running: Running) -> bool:
    return running.gateway._in_flight >= 1


def large(request: dict[str, Any]) -> dict[str, Any]:
    return {**request, "data": io.BytesIO(request["data"])}  # aiohttp warns on large raw bytes


async def test_a_body_at_the_default_limit_fits_in_one_record(
    kafka_bootstrap: str, http: aiohttp.ClientSession
) -> None:
    """1 MiB of body plus the envelope is more than Kafka's default 1 MB record: the gateway
    creates its topics with a larger max.message.bytes and sends it whole."""
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=1
    )
    big = await start(
        settings,
        config(
            webhook_max_bytes=1 << 20,
            webhook_sources={"plain": SourceConfig(secrets=[SecretStr(PLAIN_SECRET)])},
        ),
    )
    try:
        prefix = b'{"blob": "'
        body = prefix + b"x" * ((1 << 20) - len(prefix) - 2) + b'"}'
        assert len(body) == 1 << 20
        async with http.post(
            f"{big.url}/webhooks/generic/plain", **large(standard(body, secret=PLAIN_SECRET))
        ) as response:
            assert response.status == 202, await response.text()
        (record,) = await records(settings, "webhooks.plain.v1")
        assert len(record.value) > 1 << 20
        async with http.post(
            f"{big.url}/webhooks/generic/plain", **large(standard(body + b" ", secret=PLAIN_SECRET))
        ) as response:
            assert response.status == 413
    finally:
        await big.stop()
        async with admin(settings) as client:
            await client.delete_topics(
                [t for t in await client.list_topics() if t.startswith(settings.topic_prefix)]
            )


async def test_vigil_gateway_command(gw: Running, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The CLI process: serves until SIGTERM (exit 0), logs which routes fail closed, and
    never logs a secret or a body."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_KAFKA_BOOTSTRAP=gw.settings.kafka_bootstrap,
        VIGIL_TOPIC_PREFIX=gw.settings.topic_prefix,
        VIGIL_GITHUB_WEBHOOK_SECRET=GH_NEW,
        VIGIL_WEBHOOK_SOURCES=json.dumps({"alerts": {"secrets": [ALERTS_SECRET], "subject": "/fingerprint"}}),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    proc = start_process("gateway", [*VIGIL, "gateway", "--port", str(port)], env, tmp_path / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            assert proc.alive(), proc.log()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as response:
                    return response.status == 200
            return False

        await until(ready, 60, "vigil gateway /readyz")
        async with http.post(f"{url}/webhooks/github", **github(PR_OPENED)) as response:
            assert response.status == 202
        async with http.post(f"{url}/webhooks/slack", **slack(SLACK_MSG)) as response:
            assert response.status == 401
    finally:
        code = await asyncio.to_thread(proc.stop, signal.SIGTERM, 30)
    log = proc.log()
    assert code == 0, log
    assert "/webhooks/slack fails closed" in log
    assert "/webhooks/github: verifying signatures" in log
    assert GH_NEW not in log and ALERTS_SECRET not in log
    assert "Amazing new feature" not in log and "hubot" not in log


async def test_a_slow_body_times_out_with_408(gw: Running) -> None:
    slow = await start(gw.settings, config(gateway_read_timeout=0.5))
    host, port = slow.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.1 408"), status
    finally:
        writer.close()
        await slow.stop()
