"""A local fake of the Slack Web API methods the Slack sink uses (tests and the demo only;
production code never imports it).

``POST /chat.postMessage`` (JSON or form; ``channel``, ``text``, ``thread_ts``, ``metadata``)
stores a bot message and answers ``{"ok": true, "ts": ...}``; ``GET|POST
/conversations.history`` (top-level messages of a channel) and ``/conversations.replies``
(a thread, ``ts`` = the thread's ts) answer newest first, after ``oldest``, ``limit`` per page
with a ``next_cursor``, and include message metadata only with ``include_all_metadata=true``,
as Slack does. Like Slack, errors are HTTP 200 with ``{"ok": false, "error": ...}``
(``invalid_auth`` without the right bearer token, ``channel_not_found`` without a channel).
``GET /_messages`` lists every stored message. Faults: ``ops.fakes.common``.

    python -m ops.fakes.fake_slack --port 8091 --token xoxb-test --echo
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

from ops.fakes.common import FakeServer, main

BOT_USER = "U0VIGILBOT"
BOT_ID = "B0VIGIL"


class FakeSlack(FakeServer):
    """Fake Slack Web API: chat.postMessage, conversations.history, conversations.replies."""

    name = "fake-slack"

    def __init__(self, token: str | None = None, *, echo: bool = False) -> None:
        super().__init__(token, echo=echo)
        self.messages: list[dict[str, Any]] = []
        self._seq = itertools.count(1)

    def reset(self) -> None:
        super().reset()
        self.messages.clear()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/chat.postMessage", self.post_message)
        for method in ("conversations.history", "conversations.replies"):
            app.router.add_route("GET", f"/{method}", self.read)
            app.router.add_route("POST", f"/{method}", self.read)
        app.router.add_get("/_messages", self._messages)

    def posts_for(self, event_id: str) -> list[dict[str, Any]]:
        """Stored messages whose metadata names ``event_id`` (the sink's own mark)."""
        return [
            m
            for m in self.messages
            if ((m.get("metadata") or {}).get("event_payload") or {}).get("event_id") == event_id
        ]

    def _ts(self) -> str:
        # unique and increasing like Slack's: seconds.micro-ish sequence
        return f"{int(time.time())}.{next(self._seq):06d}"

    async def post_message(self, request: web.Request) -> web.Response:
        rec, failure, store_anyway = await self.receive(request)
        if failure is not None and not store_anyway:
            return failure
        if not self.authorized(request):
            return self.answer(rec, web.json_response({"ok": False, "error": "invalid_auth"}))
        body = rec.body if isinstance(rec.body, dict) else {}
        channel = str(body.get("channel") or "")
        if not channel:
            return self.answer(rec, web.json_response({"ok": False, "error": "channel_not_found"}))
        message: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "ts": self._ts(),
            "text": str(body.get("text") or ""),
            "user": BOT_USER,
            "bot_id": BOT_ID,
        }
        if body.get("thread_ts"):
            message["thread_ts"] = str(body["thread_ts"])
        if isinstance(body.get("metadata"), dict):
            message["metadata"] = body["metadata"]
        self.messages.append(message)
        if self.echo:
            where = f" (thread {message['thread_ts']})" if "thread_ts" in message else ""
            print(f"fake-slack: posted to {channel}{where}: {message['text']}", flush=True)
        if failure is not None:
            return failure
        shown = {k: v for k, v in message.items() if k != "channel"}
        return self.answer(
            rec, web.json_response({"ok": True, "channel": channel, "ts": message["ts"], "message": shown})
        )

    async def read(self, request: web.Request) -> web.Response:
        rec, failure, _ = await self.receive(request)
        if failure is not None:
            return failure
        if not self.authorized(request):
            return self.answer(rec, web.json_response({"ok": False, "error": "invalid_auth"}))
        args = {**rec.query, **(rec.body if isinstance(rec.body, dict) else {})}
        channel = str(args.get("channel") or "")
        if not channel:
            return self.answer(rec, web.json_response({"ok": False, "error": "channel_not_found"}))
        oldest = float(args.get("oldest") or 0)
        in_channel = [m for m in self.messages if m["channel"] == channel and float(m["ts"]) >= oldest]
        if request.path.endswith("replies"):
            thread = str(args.get("ts") or "")
            if not thread:
                return self.answer(rec, web.json_response({"ok": False, "error": "invalid_arguments"}))
            found = [m for m in in_channel if m["ts"] == thread or m.get("thread_ts") == thread]
        else:
            found = [m for m in in_channel if m.get("thread_ts") in (None, m["ts"])]
        found.sort(key=lambda m: float(m["ts"]), reverse=True)
        limit = max(1, min(int(args.get("limit") or 100), 1000))
        start = int(args.get("cursor") or 0)
        page = found[start : start + limit]
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("true", "1")
        shown = [
            {k: v for k, v in m.items() if k != "channel" and (with_metadata or k != "metadata")}
            for m in page
        ]
        more = start + limit < len(found)
        return self.answer(
            rec,
            web.json_response(
                {
                    "ok": True,
                    "messages": shown,
                    "has_more": more,
                    "response_metadata": {"next_cursor": str(start + limit) if more else ""},
                }
            ),
        )

    async def _messages(self, request: web.Request) -> web.Response:
        return web.json_response(self.messages)


if __name__ == "__main__":
    main(FakeSlack, 8091)
