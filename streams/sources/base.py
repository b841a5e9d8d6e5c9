"""The base every source builds on: a long-running producer with a durable checkpoint.

A source turns something outside Kafka (a directory, cron schedules, a database's change
stream) into versioned CloudEvents on catalogue topics. Write one by subclassing ``Source``::

    class Inbox(Source):
        kind = "files"                                    # metrics label, checkpoint topic name

        def topics(self) -> list[str]:                    # logical names, created on start
            return [f"files.{self.name}.v1"]

        async def run(self) -> None:                      # until self.stopping is set
            async for path, digest in watch(...):
                event = Envelope(id=event_id(self.kind, self.name, path, digest), ...)
                await self.emit(f"files.{self.name}.v1", event, checkpoint={path: digest})

    run_source(Inbox("inbox", Settings()))                # what `vigil source files` does

What the base gives every source, and the rules it keeps:

- ``self.settings`` (``Settings``) and ``self.options`` (``SourceSettings``, ``VIGIL_SOURCE_*``).
- ``check()`` runs before anything connects: raise ``ConfigError`` there for bad configuration
  (the CLI prints it as one line and exits 1).
- ``await self.emit(topic, envelope, checkpoint={key: value})`` encodes with
  ``streams.core.codec.encode`` (key = subject, ``ce_id``/``ce_type`` headers) and sends with an
  idempotent acks=all producer without waiting for the ack. The checkpoint changes are visible
  in ``self.checkpoint`` at once but become durable only after the broker acknowledged this
  event *and every event sent before it*. ``self.stage({...})`` does the same for checkpoint
  changes that have no event. ``await self.flush()`` waits for all of it (it also runs every
  ``VIGIL_SOURCE_FLUSH_INTERVAL`` s, and when ``VIGIL_SOURCE_MAX_PENDING`` sends are unacked).
- ``self.checkpoint`` (``streams.sources.checkpoint.Checkpoint``) is loaded before ``run``
  from the compacted topic ``<app_id>-source-<kind>-<name>-checkpoint``; ``acknowledged(updates)``
  is called after each durable checkpoint write (e.g. to confirm a replication position).
- Event ids are deterministic: ``event_id(*parts)`` is a uuid5 of the parts, so a re-emission
  after a crash carries the same id and the consumers' dedup absorbs it.
- ``self.stopping`` is set on SIGTERM/SIGINT: ``run`` returns, then the base flushes (events,
  then checkpoint) and exits 0. A SIGKILL loses at most the last unflushed checkpoint: the next
  start re-emits those events with the same ids.
- ``self.set_lag(kind, value)`` sets ``vigil_source_lag{source,kind}``; sends count in
  ``vigil_source_events_total{source,outcome}``; ``/healthz``, ``/readyz`` and ``/metrics`` are
  served on ``VIGIL_METRICS_HOST:VIGIL_METRICS_PORT`` (0 = off).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import Envelope
from streams import kafka
from streams.core import codec
from streams.core.errors import BrokerUnavailableError, ConfigError
from streams.core.settings import Settings
from streams.observability.metrics import REGISTRY
from streams.sources import metrics
from streams.sources.checkpoint import JSON, Checkpoint

log = logging.getLogger(__name__)

#: namespace of every source event id: uuid5(NAMESPACE, "\x1f".join(parts))
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vigil.dev/sources")


def event_id(*parts: str) -> str:
    """The deterministic id of a source event, from what identifies it (source, path, digest...)."""
    return str(uuid.uuid5(NAMESPACE, "\x1f".join(parts)))


class SourceSettings(BaseSettings):
    """Settings every source shares (``VIGIL_SOURCE_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_SOURCE_", env_file=".env", extra="ignore", frozen=True
    )

    flush_interval: float = Field(
        0.2, gt=0, description="Seconds between waits for the broker's acks and checkpoint writes"
    )
    max_pending: int = Field(5000, ge=1, description="Unacknowledged sends before emit waits for a flush")
    linger_ms: int = Field(5, ge=0, description="Producer linger: batches sends of one burst")


class Source(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, name: str, settings: Settings, options: SourceSettings | None = None) -> None:
        if not name or any(c in name for c in "/\\ \t\n") or len(name) > 100:
            raise ConfigError(f"invalid source name {name!r}: 1-100 characters, no slashes or spaces")
        self.name = name
        self.settings = settings
        self.options = options or SourceSettings()
        self.label = f"{self.kind}:{name}"
        self.checkpoint = Checkpoint(
            settings, settings.topic(f"{settings.app_id}-source-{self.kind}-{name}-checkpoint")
        )
        self.stopping = asyncio.Event()
        self.running = False
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[tuple[asyncio.Future[Any] | None, Mapping[str, JSON]]] = []
        self._flush_lock = asyncio.Lock()

    # -- what a source defines ---------------------------------------------------------------
    def check(self) -> None:  # noqa: B027 - optional hook
        """Validate the configuration before connecting; raise ``ConfigError``."""

    @abc.abstractmethod
    def topics(self) -> list[str]:
        """Logical topics this source writes (created on start if missing)."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Produce events until ``self.stopping`` is set, then return."""

    async def acknowledged(self, updates: Mapping[str, JSON]) -> None:  # noqa: B027 - optional hook
        """Called after ``updates`` were durably written to the checkpoint."""

    # -- what the base gives it --------------------------------------------------------------
    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the source is not started")
        return self._producer

    async def emit(
        self, topic: str, event: Envelope[Any], *, checkpoint: Mapping[str, JSON] | None = None
    ) -> None:
        """Send ``event`` to the logical ``topic``; stage ``checkpoint`` behind its ack."""
        rec = codec.encode(event)
        try:
            future = await self.producer.send(
                self.settings.topic(topic), value=rec.value, key=rec.key, headers=rec.headers
            )
        except KafkaError as exc:
            metrics.SOURCE_EVENTS.labels(self.label, "failed").inc()
            raise BrokerUnavailableError(f"source {self.label}: send failed ({exc})") from None
        self._track(future, checkpoint or {})
        if len(self._pending) >= self.options.max_pending:
            await self.flush()

    def stage(self, checkpoint: Mapping[str, JSON]) -> None:
        """Checkpoint changes without an event, durable once everything sent before is acked."""
        self._track(None, checkpoint)

    def _track(self, future: asyncio.Future[Any] | None, checkpoint: Mapping[str, JSON]) -> None:
        self.checkpoint.stage(checkpoint)
        self._pending.append((future, dict(checkpoint)))

    async def flush(self) -> None:
        """Wait for the acks of everything sent so far, then write its checkpoint changes."""
        async with self._flush_lock:
            # removed only once done: a flush cancelled halfway leaves its batch to the next one
            batch = self._pending[:]
            if not batch:
                return
            futures = [f for f, _ in batch if f is not None]
            # shielded: cancelling a flush must not cancel the producer's delivery futures
            results = await asyncio.gather(*map(asyncio.shield, futures), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                metrics.SOURCE_EVENTS.labels(self.label, "failed").inc(len(failed))
                raise BrokerUnavailableError(
                    f"source {self.label}: {len(failed)} send(s) failed ({failed[0]!r}); "
                    "the checkpoint stays before them"
                )
            merged: dict[str, JSON] = {}
            for _, updates in batch:
                merged.update(updates)
            if merged:
                await self.checkpoint.write(self.producer, merged)
                metrics.SOURCE_CHECKPOINTS.labels(self.label).inc()
                await self.acknowledged(merged)
            del self._pending[: len(batch)]
            if futures:
                metrics.SOURCE_EVENTS.labels(self.label, "sent").inc(len(futures))

    def set_lag(self, kind: str, value: float) -> None:
        metrics.SOURCE_LAG.labels(self.label, kind).set(value)

    def stop(self) -> None:
        self.stopping.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the source was asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def serve(self) -> None:
        """Check, serve the endpoint, create topics, load the checkpoint, run, flush, stop."""
        self.check()
        async with _endpoint(self), kafka.producer(self.settings, linger_ms=self.options.linger_ms) as prod:
            self._producer = prod
            await kafka.create_topics(self.settings, [self.settings.topic(t) for t in self.topics()])
            await self.checkpoint.ensure_topic()
            await self.checkpoint.load()
            flusher = asyncio.create_task(self._flush_periodically())
            runner = asyncio.create_task(self.run())
            self.running = True
            try:
                # a failed flush (broker trouble) ends the run: the checkpoint stays before it
                await asyncio.wait({runner, flusher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.running = False
                for task in (runner, flusher):
                    task.cancel()
                await asyncio.gather(runner, flusher, return_exceptions=True)
            for task in (flusher, runner):
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
            await self.flush()
            log.info("source %s stopped; checkpoint written", self.label)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.options.flush_interval)
            await self.flush()


@contextlib.asynccontextmanager
async def _endpoint(source: Source) -> Any:
    """``/healthz`` (the loop answers), ``/readyz`` (running), ``/metrics`` on the source's loop."""
    settings = source.settings
    if not settings.metrics_port:
        yield
        return

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if source.running and not source.stopping.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: starting or stopping\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot serve /healthz on {settings.metrics_host}:{settings.metrics_port} "
            f"(VIGIL_METRICS_HOST/PORT): {exc.strerror}"
        ) from None
    try:
        yield
    finally:
        await runner.cleanup()


def run_source(source: Source) -> None:
    """Run ``source`` until SIGTERM/SIGINT (then flush and return); errors propagate."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, source.stop)
        try:
            await source.serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
