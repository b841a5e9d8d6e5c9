"""The worker's operations endpoint and lag monitor, run as one service inside the Faust app.

``GET /metrics`` (prometheus-client exposition of ``streams.observability.metrics.REGISTRY``), ``GET /healthz``
(200 whenever the worker's event loop answers) and ``GET /readyz`` (200 once the worker has its
partition assignment and its tables are recovered; 503 with the reason before that, during a
rebalance and while stopping) on ``VIGIL_METRICS_HOST`` (127.0.0.1):``VIGIL_METRICS_PORT``.

The server runs on the worker's own asyncio loop (aiohttp), not in a thread: a thread would keep
answering /healthz while the loop that does the work is stuck. The service is a dependency of
the app (``app.add_dependency``), so it starts before the consumer joins its group (the probes
answer 503 during startup instead of refusing connections) and stops after the consumer has
drained and committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import faust
from aiohttp import web
from mode import Service
from prometheus_client.aiohttp import make_aiohttp_handler

from streams.core import topics
from streams.core.agent import AgentSpec
from streams.core.groups import agent_group
from streams.core.settings import Settings
from streams.observability import metrics
from streams.observability.lag import LagMonitor

log = logging.getLogger(__name__)


class Readiness:
    """Faust's own rebalance and recovery flags, read at each probe (no state of our own to
    drift): ``app.rebalancing`` is set when partitions are revoked and cleared when recovery
    ends; ``tables.recovery.completed`` is first set when the first assignment is recovered.
    A worker runs one app per agent (its consumer group): it is ready when every app is."""

    def __init__(self, app: faust.App, *more: faust.App) -> None:
        self.app = app
        self.apps = (app, *more)
        #: more reasons not to be ready once running (the liveness guard's stalled partitions)
        self.checks: list[Callable[[], str | None]] = []

    def reason(self) -> str | None:
        """Why the worker is not ready, or None when it is."""
        for app in self.apps:
            reason = self._app_reason(app)
            if reason is not None:
                return reason if len(self.apps) == 1 else f"{app_label(app)}: {reason}"
        for check in self.checks:
            reason = check()
            if reason is not None:
                return reason
        return None

    @staticmethod
    def _app_reason(app: faust.App) -> str | None:
        if app.should_stop:
            return "stopping"
        if app.rebalancing:
            return "rebalancing (recovering tables)" if app.in_recovery else "rebalancing"
        if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return "waiting for the first partition assignment"
        if app.in_recovery:
            return "recovering tables"
        return None

    @property
    def ready(self) -> bool:
        return self.reason() is None


class Observability(Service):
    """The HTTP endpoint (if ``port`` > 0) and the lag monitor of one worker."""

    def __init__(
        self,
        app: faust.App,
        port: int,
        lag: LagMonitor,
        host: str = "127.0.0.1",
        more: Sequence[faust.App] = (),
    ) -> None:
        self.app = app
        self.port = port
        self.host = host
        self.lag = lag
        self.readiness = Readiness(app, *more)
        self._runner: web.AppRunner | None = None
        super().__init__(beacon=app.beacon)

    async def on_start(self) -> None:
        metrics.WORKER_READY.set_function(lambda: 1.0 if self.readiness.ready else 0.0)
        if not self.port:
            return
        web_app = web.Application()
        web_app.router.add_get("/metrics", make_aiohttp_handler(metrics.REGISTRY))
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            log.error("cannot serve metrics on %s:%d (VIGIL_METRICS_HOST/PORT)", self.host, self.port)
            raise
        self._runner = runner
        log.info("metrics, /healthz and /readyz on http://%s:%d", self.host, self.port)

    @Service.task
    async def _refresh_lag(self) -> None:
        await self.lag.run()  # cancelled when the service stops; closes its clients

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self.readiness.reason()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")


def app_label(app: faust.App) -> str:
    """The consumer group an app joins (its agent's), for messages."""
    return str(getattr(app, "vigil_group_id", None) or app.conf.id)


def lag_monitor(settings: Settings, specs: Sequence[AgentSpec]) -> LagMonitor:
    """Each agent's own group on its source topics; downstream groups on the topics they emit to."""
    own = {agent_group(settings, spec.name): {settings.topic(t) for t in spec.topics} for spec in specs}
    sources = {t for names in own.values() for t in names}
    emitted = {settings.topic(topics.for_type(m.event_type).name) for spec in specs for m in spec.emits}
    return LagMonitor(
        settings.kafka_bootstrap,
        settings.group_id,
        sources,
        emitted,
        interval=settings.lag_interval,
        groups=own,
    )


def build(
    app: faust.App, settings: Settings, specs: Sequence[AgentSpec], more: Sequence[faust.App] = ()
) -> Observability:
    """The endpoint and the lag monitor of a worker whose apps are ``app`` and ``more`` (one per
    agent); the caller starts it before the apps (``streams.adapter.worker``)."""
    return Observability(
        app, settings.metrics_port, lag_monitor(settings, specs), host=settings.metrics_host, more=more
    )


def install(app: faust.App, settings: Settings, specs: Sequence[AgentSpec]) -> Observability:
    """Attach the endpoint and the lag monitor to ``app`` (before the worker starts it).
    Read lag through the returned service: ``service.lag.lag(group, topic)`` and
    ``service.lag.downstream_lag(topic)``."""
    service = build(app, settings, specs)
    app.add_dependency(service)
    return service
