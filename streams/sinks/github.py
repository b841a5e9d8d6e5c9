"""The GitHub comment sink: agent ``github_comments`` posts each ``github.comment.requested.v1``
(``github.comments.v1``) as an issue or pull-request comment.

``POST {VIGIL_GITHUB_API_BASE}/repos/{owner}/{repo}/issues/{number}/comments`` with
``VIGIL_GITHUB_TOKEN``. Each body ends in a hidden marker ``<!-- vigil:event-id=... -->``; the
lookup lists the issue's comments updated since shortly before the event was created and looks
for it. Rate limits (429, or 403 with ``Retry-After``, ``x-ratelimit-remaining: 0`` or GitHub's
"secondary rate limit" message) pause the agent, as ``streams.sinks.base`` describes.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, timedelta
from typing import Any, ClassVar

from schemas import Envelope, GitHubCommentRequestedV1
from streams import Context, Settings, runtime
from streams.core.errors import ConfigError
from streams.core.retry import Retry
from streams.sinks.base import HttpSink, Response, retry_after
from streams.sinks.settings import SinkSettings

AGENT = "github_comments"
#: GitHub's advice when a secondary rate limit names no time: wait at least a minute
SECONDARY_PAUSE = 60.0
#: clock skew allowed between the event's producer and GitHub when listing comments ``since``
SKEW = timedelta(minutes=5)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:]+(?:-[A-Za-z0-9_.:]+)*$")  # no "--": it would end the comment


def marker(event_id: str) -> str:
    """The hidden HTML comment a post carries; ids unsafe inside a comment are hashed."""
    shown = (
        event_id if _SAFE_ID.match(event_id) else "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()
    )
    return f"<!-- vigil:event-id={shown} -->"


class GitHubSink(HttpSink):
    name = "github"
    agents: ClassVar[frozenset[str]] = frozenset({AGENT})

    @classmethod
    def from_settings(cls, _: Settings) -> GitHubSink:
        return cls(SinkSettings())

    def auth_headers(self) -> dict[str, str]:
        token = self.settings.github_token
        if token is None:
            raise ConfigError("VIGIL_GITHUB_TOKEN is not set: the GitHub sink cannot post")
        return {
            "Authorization": f"Bearer {token.get_secret_value()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }

    def _comments_url(self, data: GitHubCommentRequestedV1) -> str:
        return f"{self.settings.github_api_base.rstrip('/')}/repos/{data.repo}/issues/{data.number}/comments"

    async def find(self, event: Envelope[Any]) -> str | None:
        data: GitHubCommentRequestedV1 = event.data
        tag = marker(event.id)
        since = (event.time - SKEW).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        url: str | None = self._comments_url(data)
        params: dict[str, str] | None = {"since": since, "per_page": "100"}
        while url is not None:
            page = await self.request("lookup", "GET", url, params=params)
            for comment in page.json():
                if tag in str(comment.get("body") or ""):
                    return str(comment.get("id"))
            url, params = page.next_url, None  # the next link carries the query
        return None

    async def post(self, event: Envelope[Any]) -> str:
        data: GitHubCommentRequestedV1 = event.data
        body = f"{data.body}\n\n{marker(event.id)}"
        response = await self.request("post", "POST", self._comments_url(data), json={"body": body})
        return str(response.json().get("id"))

    def rate_limit_delay(self, response: Response) -> float | None:
        if response.status not in (403, 429):
            return None
        delay = retry_after(response.headers)
        if delay is not None:
            return delay
        if response.headers.get("x-ratelimit-remaining") == "0":
            try:
                return max(1.0, float(response.headers.get("x-ratelimit-reset", "")) - time.time())
            except ValueError:
                return SECONDARY_PAUSE
        if response.status == 429 or b"secondary rate limit" in response.body.lower():
            return SECONDARY_PAUSE
        return None  # a plain 403: no permission, dead-lettered


runtime.provide("github", GitHubSink.from_settings)


@runtime.agent(GitHubCommentRequestedV1, name=AGENT, retry=Retry(max_attempts=5, backoff=1.0), default=False)
async def github_comments(event: Envelope[GitHubCommentRequestedV1], ctx: Context[None]) -> None:
    sink: GitHubSink = ctx.resources["github"]
    await sink.deliver(event)
