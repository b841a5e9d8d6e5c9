"""What both reply sinks share: the HTTP call with its error policy, the rate-limit gate, and the
ledger that makes a post effectively once.

Error policy of one HTTP call (the type says what happens, never a string match downstream):

- 2xx: done;
- 429 (and GitHub's rate limits, see ``GitHubSink.rate_limit_delay``): the sink's gate closes for
  ``Retry-After`` seconds and the call raises ``Blocked``: the agent's partitions pause and the
  record runs again once the gate opens, without using a retry attempt;
- other 4xx (and Slack's ``ok: false`` errors): ``SinkRejectedError`` (not retriable: DLQ at once,
  with the status and a body excerpt in the error message);
- 5xx, timeouts, connection errors: ``SinkUnavailableError`` (retriable: the agent's retry policy).

Effectively once: neither API takes an idempotency key, so a post is made recognisable (the
subclass puts the event id in it) and, whenever an earlier attempt at the same event may have
posted already, the sink looks for that post before posting again (``PostLedger``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDictProxy

from schemas import Envelope, VigilError
from streams.core.backpressure import Blocked
from streams.sinks import metrics
from streams.sinks.settings import SinkSettings

log = logging.getLogger(__name__)

#: longest pause a Retry-After may impose (a bad header must not stop a sink for a day)
MAX_PAUSE = 900.0
#: pause on a 429 that names no Retry-After
DEFAULT_PAUSE = 5.0
EXCERPT_BYTES = 300
#: events whose post a lookup remembers, per sink and process
LEDGER_SIZE = 10_000
#: successful posts of every sink of this process (the VIGIL_FAIL_EXIT_AFTER_POST failpoint)
_POSTS = itertools.count(1)


class SinkError(VigilError):
    reason = "sink"


class SinkRejectedError(SinkError):
    """The API refused the request for good (a 4xx other than rate limits, a Slack error)."""

    reason = "http_rejected"
    retriable = False

    def __init__(self, sink: str, call: str, status: int, excerpt: str) -> None:
        super().__init__(f"{sink} {call}: HTTP {status}: {excerpt}")
        self.status = status
        self.excerpt = excerpt


class SinkUnavailableError(SinkError):
    """A 5xx, a timeout or a connection error: the request may or may not have taken effect."""

    reason = "http_unavailable"
    retriable = True


class RateLimitGate:
    """Closed until a point in time (``time.monotonic()``) a rate-limited response named."""

    reason = "rate_limit"

    def __init__(self) -> None:
        self._until = 0.0

    def block_for(self, seconds: float) -> None:
        self._until = max(self._until, time.monotonic() + min(max(seconds, 0.0), MAX_PAUSE))

    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    def blocked(self) -> bool:
        return self.remaining() > 0

    async def wait_unblocked(self) -> None:
        # a sleep, not an Event: a later 429 may push the deadline while we wait
        while (left := self.remaining()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)


def retry_after(headers: CIMultiDictProxy[str] | dict[str, str]) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), None if absent or bad."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def excerpt(body: bytes) -> str:
    text = body[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    text = re.sub(r"\s+", " ", text).strip()
    return text + ("..." if len(body) > EXCERPT_BYTES else "")


@dataclass(frozen=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    #: the URL of the next page (``Link: <...>; rel="next"``), if any
    next_url: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class PostLedger:
    """What this process knows about its own posts, and when a lookup must come first.

    A lookup is needed whenever another attempt at the event may have posted already:

    - an attempt of this process got no clear answer (5xx, timeout: the event is *in doubt*);
    - the event was created before this process started (plus ``lookup_age``): a previous
      process may have posted it and died before its state and offset were written;
    - the event is older than ``lookup_age``: the partition may have moved from another worker
      that posted it and died or was revoked. That worker was dropped from the group after
      ``VIGIL_SESSION_TIMEOUT`` or cancelled after ``VIGIL_DRAIN_TIMEOUT``, so an event it was
      posting is at least that old by the time it is redelivered here.

    A fresh event in a long-running process, the common case, is posted without a lookup
    (Slack's history methods are heavily rate limited). ``lookup_age`` 0 looks up every time.
    """

    def __init__(self, lookup_age: float, *, started: float | None = None, size: int = LEDGER_SIZE) -> None:
        self.lookup_age = lookup_age
        self.started = time.time() if started is None else started
        self._size = size
        self._posted: OrderedDict[str, None] = OrderedDict()
        self._in_doubt: OrderedDict[str, None] = OrderedDict()

    def posted(self, event_id: str) -> bool:
        return event_id in self._posted

    def must_look_up(self, event_id: str, created: datetime, now: float | None = None) -> bool:
        if self.lookup_age <= 0 or event_id in self._in_doubt:
            return True
        t = created.timestamp()
        now = time.time() if now is None else now
        return t < self.started + self.lookup_age or now - t > self.lookup_age

    def sending(self, event_id: str) -> None:
        self._remember(self._in_doubt, event_id)

    def sent(self, event_id: str) -> None:
        self._in_doubt.pop(event_id, None)
        self._remember(self._posted, event_id)

    def not_sent(self, event_id: str) -> None:
        self._in_doubt.pop(event_id, None)

    def _remember(self, ids: OrderedDict[str, None], event_id: str) -> None:
        ids[event_id] = None
        ids.move_to_end(event_id)
        while len(ids) > self._size:
            ids.popitem(last=False)


class HttpSink:
    """One API's sink: an aiohttp session (created on first use, in the worker's loop), the
    gate its agent pauses on, the ledger. Subclasses build the requests and recognise posts."""

    #: metric label and log name
    name: ClassVar[str]
    #: the agents this sink's gate pauses (``GateProvider.gates_for``)
    agents: ClassVar[frozenset[str]]

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.gate = RateLimitGate()
        self.ledger = PostLedger(settings.sink_lookup_age)
        self._session: aiohttp.ClientSession | None = None

    # -- what a subclass provides -----------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def find(self, event: Envelope[Any]) -> str | None:
        """The id of a post made for ``event`` earlier, or None."""
        raise NotImplementedError

    async def post(self, event: Envelope[Any]) -> str:
        """Post ``event``; the id of the new post."""
        raise NotImplementedError

    def rate_limit_delay(self, response: Response) -> float | None:
        """Seconds to pause for when ``response`` is a rate limit, else None."""
        if response.status == 429:
            delay = retry_after(response.headers)
            return DEFAULT_PAUSE if delay is None else delay
        return None

    def api_error(self, call: str, response: Response) -> SinkError | None:
        """An error a 2xx response reports in its body (Slack's ``ok: false``), else None."""
        return None

    # -- the one delivery path --------------------------------------------------------------
    async def deliver(self, event: Envelope[Any]) -> None:
        if self.ledger.posted(event.id):
            metrics.SINK_POSTS.labels(self.name, "already_posted").inc()
            return
        if self.ledger.must_look_up(event.id, event.time):
            found = await self.find(event)
            if found is not None:
                log.info(
                    "%s sink: %s was posted before (%s); not posting it again", self.name, event.id, found
                )
                self.ledger.sent(event.id)
                metrics.SINK_POSTS.labels(self.name, "already_posted").inc()
                return
        self.ledger.sending(event.id)
        try:
            await self.post(event)
        except (Blocked, SinkRejectedError):
            self.ledger.not_sent(event.id)  # refused: certainly not posted
            raise
        self.ledger.sent(event.id)
        metrics.SINK_POSTS.labels(self.name, "posted").inc()
        limit = self.settings.fail_exit_after_post
        if next(_POSTS) >= limit > 0:
            log.warning("%s sink: VIGIL_FAIL_EXIT_AFTER_POST=%d reached; exiting now", self.name, limit)
            os._exit(137)  # testing failpoint: as a SIGKILL between the post and the commit

    # -- HTTP -------------------------------------------------------------------------------
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.sink_timeout),
                headers={"User-Agent": "vigil-sink"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def gates_for(self, agent: str) -> list[RateLimitGate]:
        """``streams.core.backpressure.GateProvider``: only this sink's own agent pauses."""
        return [self.gate] if agent in self.agents else []

    async def request(
        self,
        call: str,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        """One HTTP request under the error policy of the module docstring; 2xx comes back."""
        if self.gate.blocked():  # do not spend a request on a limit that still holds
            raise Blocked(
                f"{self.name} sink rate-limited for {self.gate.remaining():.1f}s more", gate=self.gate
            )
        started = time.perf_counter()
        try:
            async with self.session().request(
                method, url, json=json, params=params, headers=self.auth_headers()
            ) as resp:
                body = await resp.read()
                link = resp.links.get("next")
                next_url = str(link["url"]) if link is not None else None
                response = Response(resp.status, resp.headers, body, next_url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.SINK_REQUESTS.labels(self.name, call, "failed").inc()
            raise SinkUnavailableError(f"{self.name} {call}: {type(exc).__name__}: {exc}") from exc
        finally:
            metrics.SINK_REQUEST_SECONDS.labels(self.name, call).observe(time.perf_counter() - started)
        delay = self.rate_limit_delay(response)
        if delay is not None:
            self.gate.block_for(delay)
            metrics.SINK_REQUESTS.labels(self.name, call, "rate_limited").inc()
            log.warning(
                "%s sink: rate limited (HTTP %d), pausing for %.1fs", self.name, response.status, delay
            )
            raise Blocked(
                f"{self.name} {call}: HTTP {response.status}, retry after {delay:.1f}s", gate=self.gate
            )
        if response.status >= 500:
            metrics.SINK_REQUESTS.labels(self.name, call, "failed").inc()
            raise SinkUnavailableError(
                f"{self.name} {call}: HTTP {response.status}: {excerpt(response.body)}"
            )
        if response.status >= 400:
            metrics.SINK_REQUESTS.labels(self.name, call, "rejected").inc()
            raise SinkRejectedError(self.name, call, response.status, excerpt(response.body))
        error = self.api_error(call, response)
        if error is not None:
            outcome = "failed" if error.retriable else "rejected"
            metrics.SINK_REQUESTS.labels(self.name, call, outcome).inc()
            raise error
        metrics.SINK_REQUESTS.labels(self.name, call, "ok").inc()
        return response
