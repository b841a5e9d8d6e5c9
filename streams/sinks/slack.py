"""The Slack message sink: agent ``slack_replies`` posts each ``slack.reply.requested.v1``
(``slack.replies.v1``) with ``chat.postMessage``, in the thread of ``thread_ts`` when given.

``{VIGIL_SLACK_API_BASE}/chat.postMessage`` with ``VIGIL_SLACK_BOT_TOKEN``. Each message
carries metadata ``{"event_type": "vigil_reply", "event_payload": {"event_id": ...}}``; the
lookup reads the thread (``conversations.replies``) or the channel (``conversations.history``)
since shortly before the event was created, with ``include_all_metadata``, and looks for it.
The bot needs ``chat:write`` and the ``*:history`` scopes of the conversations it answers in.

Slack answers most errors with HTTP 200 and ``{"ok": false, "error": ...}``: server-side ones
(``internal_error``, ``fatal_error``, ``service_unavailable``, ``request_timeout``) are retried,
``ratelimited`` pauses the agent, every other error is dead-lettered with the body excerpt.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from schemas import Envelope, SlackReplyRequestedV1
from streams import Context, Settings, runtime
from streams.core.errors import ConfigError
from streams.core.retry import Retry
from streams.sinks.base import (
    DEFAULT_PAUSE,
    HttpSink,
    Response,
    SinkError,
    SinkRejectedError,
    SinkUnavailableError,
    excerpt,
)
from streams.sinks.settings import SinkSettings

AGENT = "slack_replies"
METADATA_TYPE = "vigil_reply"
#: clock skew allowed between the event's producer and Slack when reading history ``oldest``
SKEW = timedelta(minutes=5)
RETRIABLE_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})


def metadata(event_id: str) -> dict[str, Any]:
    return {"event_type": METADATA_TYPE, "event_payload": {"event_id": event_id}}


def posted_for(message: dict[str, Any], event_id: str) -> bool:
    meta = message.get("metadata") or {}
    payload = meta.get("event_payload") or {}
    return bool(meta.get("event_type") == METADATA_TYPE and payload.get("event_id") == event_id)


class SlackSink(HttpSink):
    name = "slack"
    agents: ClassVar[frozenset[str]] = frozenset({AGENT})

    @classmethod
    def from_settings(cls, _: Settings) -> SlackSink:
        return cls(SinkSettings())

    def auth_headers(self) -> dict[str, str]:
        token = self.settings.slack_bot_token
        if token is None:
            raise ConfigError("VIGIL_SLACK_BOT_TOKEN is not set: the Slack sink cannot post")
        return {"Authorization": f"Bearer {token.get_secret_value()}"}

    def _url(self, method: str) -> str:
        return f"{self.settings.slack_api_base.rstrip('/')}/{method}"

    def api_error(self, call: str, response: Response) -> SinkError | None:
        try:
            body = response.json()
        except ValueError:
            return SinkUnavailableError(
                f"slack {call}: HTTP {response.status}, not JSON: {excerpt(response.body)}"
            )
        if body.get("ok") is True:
            return None
        error = str(body.get("error") or "unknown")
        if error in RETRIABLE_ERRORS:
            return SinkUnavailableError(f"slack {call}: {error}: {excerpt(response.body)}")
        return SinkRejectedError("slack", call, response.status, excerpt(response.body))

    def rate_limit_delay(self, response: Response) -> float | None:
        delay = super().rate_limit_delay(response)
        if delay is None and response.status == 200 and b'"ratelimited"' in response.body:
            return DEFAULT_PAUSE  # some methods say it in the body
        return delay

    async def find(self, event: Envelope[Any]) -> str | None:
        data: SlackReplyRequestedV1 = event.data
        params = {
            "channel": data.channel,
            "oldest": f"{(event.time - SKEW).timestamp():.6f}",
            "include_all_metadata": "true",
            "limit": "200",
        }
        if data.thread_ts:
            method, params["ts"] = "conversations.replies", data.thread_ts
        else:
            method = "conversations.history"
        while True:
            page = (await self.request("lookup", "GET", self._url(method), params=params)).json()
            for message in page.get("messages") or []:
                if posted_for(message, event.id):
                    return str(message.get("ts"))
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
            params["cursor"] = cursor

    async def post(self, event: Envelope[Any]) -> str:
        data: SlackReplyRequestedV1 = event.data
        body: dict[str, Any] = {"channel": data.channel, "text": data.text, "metadata": metadata(event.id)}
        if data.thread_ts:
            body["thread_ts"] = data.thread_ts
        response = await self.request("post", "POST", self._url("chat.postMessage"), json=body)
        return str(response.json().get("ts"))


runtime.provide("slack", SlackSink.from_settings)


@runtime.agent(SlackReplyRequestedV1, name=AGENT, retry=Retry(max_attempts=5, backoff=1.0), default=False)
async def slack_replies(event: Envelope[SlackReplyRequestedV1], ctx: Context[None]) -> None:
    sink: SlackSink = ctx.resources["slack"]
    await sink.deliver(event)
