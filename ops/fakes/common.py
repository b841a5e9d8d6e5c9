"""What the fake API servers share: request recording, injectable faults, and three ways to run
them (a process with a port, a thread for tests that drive a worker process, the caller's loop).

Faults (``POST /_control`` with a JSON object of ``Faults`` fields, or ``server.faults`` and
``server.add_fault(...)`` in process) apply to the requests whose ``"<METHOD> <path>?<query> <body>"`` contains ``match``:

- ``latency_ms``: every matching request waits this long first;
- ``fail_next`` requests are answered with ``fail_status`` (``fail_body``, and ``Retry-After:
  retry_after`` when set) and have no effect;
- ``store_then_fail_next`` posts take effect and are answered with ``fail_status`` anyway: the
  client cannot know that it posted (a timeout or a 5xx after the write).

``GET /_requests`` lists what was received (method, path, query, JSON body, answered status);
``POST /_reset`` forgets requests, posts and faults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

from aiohttp import web


@dataclass
class Faults:
    latency_ms: float = 0.0
    fail_next: int = 0
    fail_status: int = 500
    fail_body: str = ""
    retry_after: str = ""
    store_then_fail_next: int = 0
    match: str = ""


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str
    status: int = 0
    at: float = 0.0


class FakeServer:
    """Base of the fakes: subclasses add their routes in ``routes`` and call ``answer``."""

    name = "fake"

    def __init__(self, token: str | None = None, *, echo: bool = False) -> None:
        #: the credential requests must carry (None: any)
        self.token = token
        self.echo = echo
        #: the rule ``POST /_control`` edits; ``add_fault`` adds more, tried first
        self.faults = Faults()
        self.rules: list[Faults] = []
        self.requests: list[Recorded] = []

    def add_fault(self, **settings: Any) -> Faults:
        """Another fault rule, tried before ``faults`` (one rule per ``match``, for instance)."""
        rule = Faults(**settings)
        self.rules.append(rule)
        return rule

    # -- for subclasses -------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.faults = Faults()
        self.rules.clear()
        self.requests.clear()

    def authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        return request.headers.get("Authorization", "") in (f"Bearer {self.token}", f"token {self.token}")

    async def receive(self, request: web.Request) -> tuple[Recorded, web.Response | None, bool]:
        """Record ``request`` and apply the faults: ``(record, failure or None, fail after
        storing)``. The handler stores the post when ``failure`` is None or the flag is set."""
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = dict(await request.post()) if request.content_type.endswith("urlencoded") else None
        rec = Recorded(
            request.method,
            request.path,
            dict(request.query),
            body,
            request.headers.get("Authorization", ""),
            at=time.time(),
        )
        self.requests.append(rec)
        line = f"{request.method} {request.path_qs} {raw.decode(errors='replace')}"
        for f in [*self.rules, self.faults]:
            if f.match and f.match not in line:
                continue
            if f.latency_ms:
                await asyncio.sleep(f.latency_ms / 1000)
            if f.fail_next > 0:
                f.fail_next -= 1
                return rec, self._failure(rec, f), False
            if f.store_then_fail_next > 0 and request.method == "POST":
                f.store_then_fail_next -= 1
                return rec, self._failure(rec, f), True
        return rec, None, False

    def _failure(self, rec: Recorded, f: Faults) -> web.Response:
        headers = {"Retry-After": f.retry_after} if f.retry_after else {}
        body = f.fail_body or json.dumps({"message": "injected failure", "ok": False, "error": "injected"})
        return self.answer(rec, web.Response(status=f.fail_status, text=body, headers=headers))

    @staticmethod
    def answer(rec: Recorded, response: web.Response) -> web.Response:
        rec.status = response.status
        return response

    # -- the app --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/_requests", self._requests)
        app.router.add_post("/_control", self._control)
        app.router.add_post("/_reset", self._reset)
        self.routes(app)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests])

    async def _control(self, request: web.Request) -> web.Response:
        changes = await request.json()
        known = {f.name for f in fields(Faults)}
        if unknown := set(changes) - known:
            return web.json_response({"error": f"unknown fault settings: {sorted(unknown)}"}, status=400)
        for key, value in changes.items():
            setattr(self.faults, key, value)
        return web.json_response(asdict(self.faults))

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    # -- running --------------------------------------------------------------------------------
    @asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve in the caller's event loop; yields the base URL."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        try:
            yield f"http://{host}:{bound}"
        finally:
            await runner.cleanup()

    @contextmanager
    def in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve from a thread of this process (a test that drives a worker process reads
        ``requests`` and the posts directly); yields the base URL."""
        loop = asyncio.new_event_loop()
        ready: list[str] = []
        started = threading.Event()
        stop: asyncio.Event | None = None

        async def serve() -> None:
            nonlocal stop
            stop = asyncio.Event()
            async with self.running(host, port) as url:
                ready.append(url)
                started.set()
                await stop.wait()

        thread = threading.Thread(
            target=loop.run_until_complete, args=(serve(),), name=self.name, daemon=True
        )
        thread.start()
        if not started.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        try:
            yield ready[0]
        finally:
            assert stop is not None
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()


def main(server_type: type[FakeServer], default_port: int) -> None:
    """``python -m ops.fakes.<fake> --port N``: serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description=server_type.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--token", default=None, help="credential requests must carry (default: any)")
    parser.add_argument("--echo", action="store_true", help="print every post on stdout")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    server = server_type(args.token, echo=args.echo)
    server.faults.latency_ms = args.latency_ms
    print(f"{server.name} listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(server.app(), host=args.host, port=args.port, print=None, access_log=None)
