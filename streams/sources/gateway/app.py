"""The webhook gateway: an aiohttp application that verifies a webhook on its raw bytes, maps
it to a CloudEvents envelope and answers 202 only once Kafka acknowledged it (acks=all).

Every request walks the same steps, and each one can end it with a clear status and nothing
enqueued: generic source known (404) -> in-flight limit (503) -> route has a secret (401) ->
body read incrementally up to the limit (413) -> signature and timestamp (401, or 400 for a
missing signed header) -> routing headers and JSON (400) -> broker ack within the send
timeout (503 + Retry-After)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from prometheus_client.aiohttp import make_aiohttp_handler

from streams.core.errors import BrokerUnavailableError
from streams.core.settings import Settings
from streams.kafka import client as kafka
from streams.observability.metrics import REGISTRY

from . import events, metrics
from .events import PayloadError, Routed
from .settings import GatewaySettings
from .signatures import Clock, SignatureError, verify_github, verify_slack, verify_standard

log = logging.getLogger("vigil.gateway")

GITHUB_PATH = "/webhooks/github"
SLACK_PATH = "/webhooks/slack"
GENERIC_PATH = "/webhooks/generic/{name}"
#: created at start when the GitHub route is configured; other events' topics on first use
GITHUB_TOPICS_AT_START = ("pull_request", "issues", "issue_comment", "push")
RETRY_AFTER_UNAVAILABLE = "5"
RETRY_AFTER_OVERLOADED = "1"
ACKED_IDS = 10_000  # recently acknowledged (topic, id): a sender's retry is answered, not re-sent
TOPIC_TIMEOUT = 10.0
BATCH_BYTES = 256 * 1024
ENVELOPE_BYTES = 64 * 1024
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_READY_TTL = 2.0

Handler = Callable[[web.Request, bytes, str], Awaitable[tuple[web.Response, str]]]


class Rejection(Exception):
    """Ends a request with ``status`` and a one-line ``{"error": ...}``; ``outcome`` is the label."""

    def __init__(
        self, status: int, outcome: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response({"error": str(self)}, status=self.status, headers=self.headers)


def _unavailable(message: str) -> Rejection:
    return Rejection(503, "unavailable", message, {"Retry-After": RETRY_AFTER_UNAVAILABLE})


class Gateway:
    """One gateway process: its producers, the topics it knows exist, the recent acks."""

    def __init__(self, settings: Settings, config: GatewaySettings, *, clock: Clock = time.time) -> None:
        self.settings = settings
        self.config = config
        self._clock = clock
        self._github = config.github_secrets()
        self._slack = config.slack_secrets()
        self._sources = {name: (cfg, cfg.keys()) for name, cfg in config.webhook_sources.items()}
        self._producers: list[AIOKafkaProducer] = []
        self._connecting: asyncio.Task[None] | None = None
        self._topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._acked: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._in_flight = 0
        self._ready_at = -_READY_TTL
        self._ready = False
        self._configured = self.routes()
        # the envelope around a body: its attributes, and JSON escapes a form body may gain
        self._max_record_bytes = max(1 << 20, 2 * config.webhook_max_bytes + ENVELOPE_BYTES)

    # -- what is served -------------------------------------------------------------------------
    def routes(self) -> dict[str, bool]:
        """Path -> configured (False: no secret, the route refuses every request)."""
        out = {GITHUB_PATH: bool(self._github), SLACK_PATH: bool(self._slack)}
        out.update({GENERIC_PATH.format(name=n): bool(keys) for n, (_, keys) in self._sources.items()})
        return out

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(GITHUB_PATH, self._route("github", self._github_hook))
        app.router.add_post(SLACK_PATH, self._route("slack", self._slack_hook))
        app.router.add_post(GENERIC_PATH, self._generic)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
        app.cleanup_ctx.append(self._lifecycle)
        return app

    async def _lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        for path, configured in self.routes().items():
            if configured:
                log.info("webhook route %s: verifying signatures", path)
            else:
                log.warning("webhook route %s fails closed: no secret configured", path)
        if not self._sources:
            log.info("no generic sources configured (VIGIL_WEBHOOK_SOURCES): %s answers 404", GENERIC_PATH)
        self._connecting = asyncio.create_task(self._connect(), name="gateway-kafka-connect")
        try:
            yield
        finally:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
            producers, self._producers = self._producers, []
            for producer in producers:
                await producer.stop()
            metrics.KAFKA_READY.set(0)

    # -- Kafka ----------------------------------------------------------------------------------
    def _topics_at_start(self) -> list[str]:
        names = [f"webhooks.{n}.v1" for n, (_, keys) in self._sources.items() if keys]
        if self._slack:
            names.append(events.SLACK_TOPIC)
        if self._github:
            names.extend(f"github.{e}.v1" for e in GITHUB_TOPICS_AT_START)
        return [self.settings.topic(n) for n in names]

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            # a batch not acknowledged by then fails instead of landing long after its 503
            request_timeout_ms=max(1000, int(self.config.gateway_send_timeout * 1000)),
            # aiokafka keeps one open batch per partition and makes every later send wait for
            # its drain: 16 KB (the default) is four webhooks, a ceiling of its own
            max_batch_size=BATCH_BYTES,
            max_request_size=self._max_record_bytes,
        )

    async def _connect(self) -> None:
        """Start the producers, retrying until Kafka answers; webhooks get 503 until then.
        Several producers: aiokafka has one produce request in flight per broker connection,
        so one producer makes every webhook wait for the previous round trip to finish."""
        delay = 0.5
        while True:
            producers = [self._new_producer() for _ in range(self.config.gateway_producers)]
            try:
                for producer in producers:
                    await asyncio.wait_for(producer.start(), kafka.START_TIMEOUT)
                await self._ensure_topics(self._topics_at_start())
            except (KafkaError, OSError, TimeoutError, BrokerUnavailableError) as exc:
                for producer in producers:
                    await producer.stop()
                log.warning(
                    "Kafka at %s not ready (%s); retrying", self.settings.kafka_bootstrap, type(exc).__name__
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producers = producers
            metrics.KAFKA_READY.set(1)
            log.info("connected to Kafka at %s", self.settings.kafka_bootstrap)
            return

    async def _ensure_topics(self, topics: list[str]) -> None:
        missing = [t for t in topics if t not in self._topics]
        if not missing:
            return
        async with self._topic_lock:
            missing = [t for t in missing if t not in self._topics]
            if missing:
                await asyncio.wait_for(self._create_topics(missing), TOPIC_TIMEOUT)
                self._topics.update(missing)

    async def _create_topics(self, names: list[str]) -> None:
        """Like ``streams.kafka.client.create_topics``, with ``max.message.bytes`` raised so a
        body at the size limit still fits in one record (the broker's default is 1 MB)."""
        configs = {"max.message.bytes": str(self._max_record_bytes)}
        async with kafka.admin(self.settings) as client:
            existing = set(await client.list_topics())
            new = [
                NewTopic(n, self.settings.partitions, self.settings.replication_factor, topic_configs=configs)
                for n in names
                if n not in existing
            ]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):  # another gateway won the race
                    await client.create_topics(new)

    async def _enqueue(self, routed: Routed, request: web.Request) -> tuple[web.Response, str]:
        seen = (routed.topic, routed.id)
        if seen in self._acked:
            self._acked.move_to_end(seen)
            return web.json_response({"id": routed.id, "duplicate": True}, status=202), "duplicate"
        record = events.record(routed, _traceparent(request))
        producers = self._producers
        if not producers:
            raise _unavailable("Kafka is not reachable yet")
        # one subject, one producer: its records keep their order on the partition
        producer = producers[zlib.crc32(record.key or b"") % len(producers)]
        topic = self.settings.topic(routed.topic)
        try:
            await self._ensure_topics([topic])
            async with asyncio.timeout(self.config.gateway_send_timeout):  # one deadline, no extra task
                future = await producer.send(
                    topic, value=record.value, key=record.key, headers=record.headers
                )
                await future
        except MessageSizeTooLargeError:  # a topic made elsewhere with a smaller max.message.bytes
            raise Rejection(413, "too_large", "the event is larger than its topic accepts") from None
        except (KafkaError, OSError, TimeoutError, BrokerUnavailableError) as exc:
            log.warning("Kafka did not acknowledge a %s event (%s)", routed.topic, type(exc).__name__)
            raise _unavailable("Kafka did not acknowledge the event in time") from None
        self._acked[seen] = None
        while len(self._acked) > ACKED_IDS:
            self._acked.popitem(last=False)
        return web.json_response({"id": routed.id}, status=202), "accepted"

    # -- the request pipeline -------------------------------------------------------------------
    def _route(self, route: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            return await self._handle(request, route, handler)

        return serve

    async def _handle(self, request: web.Request, route: str, handler: Handler) -> web.Response:
        started = time.perf_counter()
        if self._in_flight >= self.config.gateway_max_in_flight:
            rejection = Rejection(
                503, "overloaded", "too many requests in flight", {"Retry-After": RETRY_AFTER_OVERLOADED}
            )
            return self._done(route, rejection.outcome, rejection.response(), started)
        self._in_flight += 1
        metrics.IN_FLIGHT.inc()
        try:
            if not self._configured.get(request.path, True):
                raise Rejection(401, "not_configured", "this route has no secret configured (fail closed)")
            try:
                async with asyncio.timeout(self.config.gateway_read_timeout):  # a slow body holds a slot
                    body = await self._read_body(request, route)
            except TimeoutError:
                raise Rejection(408, "timeout", "body not received in time") from None
            response, outcome = await handler(request, body, route)
        except Rejection as rejection:
            response, outcome = rejection.response(), rejection.outcome
        except SignatureError as exc:
            response, outcome = web.json_response({"error": str(exc)}, status=exc.status), exc.reason
        except PayloadError as exc:
            response, outcome = web.json_response({"error": str(exc)}, status=400), exc.reason
        finally:
            self._in_flight -= 1
            metrics.IN_FLIGHT.dec()
        return self._done(route, outcome, response, started)

    @staticmethod
    def _done(route: str, outcome: str, response: web.Response, started: float) -> web.Response:
        metrics.REQUESTS.labels(route, outcome).inc()
        metrics.DURATION.labels(route).observe(time.perf_counter() - started)
        return response

    async def _read_body(self, request: web.Request, route: str) -> bytes:
        """The raw body, read chunk by chunk: past the limit the request ends at once (the
        server does not linger to read the rest; see ``serve``)."""
        limit = self.config.webhook_max_bytes
        too_large = Rejection(413, "too_large", f"body over {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            metrics.BYTES.labels(route).observe(0)
            raise too_large
        chunks: list[bytes] = []
        total = 0
        while chunk := await request.content.readany():
            total += len(chunk)
            if total > limit:
                metrics.BYTES.labels(route).observe(total)
                raise too_large
            chunks.append(chunk)
        metrics.BYTES.labels(route).observe(total)
        return b"".join(chunks)

    # -- routes ---------------------------------------------------------------------------------
    async def _github_hook(self, request: web.Request, body: bytes, _route: str) -> tuple[web.Response, str]:
        verify_github(self._github, body, request.headers.get("X-Hub-Signature-256"))
        event = request.headers.get("X-GitHub-Event")
        if event == "ping":
            return web.json_response({"ping": "ok"}), "answered"
        if events.is_form(request.content_type):
            payload = events.parse_json(events.parse_form(body).get("payload", "").encode())
        else:
            payload = events.parse_json(body)
        routed = events.github_event(event, request.headers.get("X-GitHub-Delivery"), payload)
        return await self._enqueue(routed, request)

    async def _slack_hook(self, request: web.Request, body: bytes, _route: str) -> tuple[web.Response, str]:
        verify_slack(
            self._slack,
            body,
            request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"),
            now=self._clock,
        )
        if events.is_form(request.content_type):
            form = events.parse_form(body)
            if form.get("ssl_check") == "1":
                return web.json_response({}), "answered"
            return await self._enqueue(events.slack_form(form, body), request)
        payload = events.parse_json(body)
        kind = payload.get("type")
        if kind == "url_verification":
            challenge = payload.get("challenge")
            if not isinstance(challenge, str):
                raise PayloadError("malformed", "url_verification without a challenge")
            return web.json_response({"challenge": challenge}), "answered"
        if kind == "app_rate_limited":  # Slack tells us it drops events for a minute
            log.warning("Slack reports the app rate-limited (events are being dropped by Slack)")
            return web.json_response({}), "answered"
        if kind != "event_callback":
            raise PayloadError("malformed", "unknown Slack payload type")
        return await self._enqueue(events.slack_event(payload), request)

    async def _generic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._sources:
            rejection = Rejection(404, "unknown_source", "no such webhook source")
            return self._done("generic", rejection.outcome, rejection.response(), time.perf_counter())
        return await self._handle(request, f"generic:{name}", self._generic_hook)

    async def _generic_hook(self, request: web.Request, body: bytes, route: str) -> tuple[web.Response, str]:
        name = route.removeprefix("generic:")
        config, keys = self._sources[name]
        msg_id = request.headers.get("webhook-id")
        verify_standard(
            keys,
            body,
            msg_id,
            request.headers.get("webhook-timestamp"),
            request.headers.get("webhook-signature"),
            now=self._clock,
        )
        assert msg_id is not None  # verify_standard refuses a request without it
        payload = events.parse_json(body)
        return await self._enqueue(events.generic_event(name, msg_id, payload, config.subject), request)

    # -- probes ---------------------------------------------------------------------------------
    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if await self.ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "Kafka is not reachable"}, status=503)

    async def ready(self) -> bool:
        """The producer is connected and a metadata request to Kafka answers (cached 2 s)."""
        if not self._producers:
            return False
        now = time.monotonic()
        if now - self._ready_at >= _READY_TTL:
            try:
                self._ready = await asyncio.wait_for(kafka.broker_ready(self.settings.kafka_bootstrap), 5)
            except TimeoutError:
                self._ready = False
            self._ready_at = time.monotonic()
            metrics.KAFKA_READY.set(1 if self._ready else 0)
        return self._ready


def _traceparent(request: web.Request) -> str | None:
    value = request.headers.get("traceparent")
    return value if value is not None and _TRACEPARENT.match(value) else None


async def serve(gateway: Gateway, host: str, port: int) -> web.AppRunner:
    """Listen on ``host:port`` (0: any free port, see ``bound_port``); stop with
    ``await runner.cleanup()``. ``lingering_time=0``: after a 413 the connection closes
    instead of reading and discarding the rest of the body."""
    runner = web.AppRunner(gateway.app(), access_log=None, lingering_time=0, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    address: Any = runner.addresses[0]
    return int(address[1])
