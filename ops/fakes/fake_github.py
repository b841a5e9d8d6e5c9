"""A local fake of the GitHub REST API's issue comments (tests and the demo only; production
code never imports it).

``POST /repos/{owner}/{repo}/issues/{number}/comments`` (``{"body": ...}``) stores a comment and
answers 201 with it; ``GET`` on the same path lists the issue's comments oldest first, filtered
by ``since`` (updated at or after, ISO 8601), paged by ``per_page`` (default 30, at most 100)
and ``page`` with a ``Link: <...>; rel="next"`` header, as GitHub does. Without the right
token: 401 ``Bad credentials``. ``GET /_comments`` lists every stored comment with its issue.
Faults: ``ops.fakes.common`` (e.g. ``fail_status=403`` with ``fail_body`` naming a secondary
rate limit).

    python -m ops.fakes.fake_github --port 8092 --token ghp-test
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ops.fakes.common import FakeServer, main

PATH = "/repos/{owner}/{repo}/issues/{number}/comments"


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGitHub(FakeServer):
    """Fake GitHub REST API: issue comments (create, list)."""

    name = "fake-github"

    def __init__(self, token: str | None = None, *, echo: bool = False) -> None:
        super().__init__(token, echo=echo)
        #: comments with an extra "issue" key: "owner/repo#number"
        self.comments: list[dict[str, Any]] = []
        self._ids = itertools.count(1001)

    def reset(self) -> None:
        super().reset()
        self.comments.clear()

    def routes(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.create)
        app.router.add_get(PATH, self.list)
        app.router.add_get("/_comments", self._comments)

    def posts_for(self, event_id: str) -> list[dict[str, Any]]:
        """Stored comments whose body carries the sink's marker for ``event_id``."""
        return [c for c in self.comments if f"vigil:event-id={event_id} -->" in c["body"]]

    @staticmethod
    def _issue(request: web.Request) -> str:
        m = request.match_info
        return f"{m['owner']}/{m['repo']}#{m['number']}"

    def _denied(self, rec: Any) -> web.Response:
        return self.answer(
            rec,
            web.json_response(
                {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
                status=401,
            ),
        )

    async def create(self, request: web.Request) -> web.Response:
        rec, failure, store_anyway = await self.receive(request)
        if failure is not None and not store_anyway:
            return failure
        if not self.authorized(request):
            return self._denied(rec)
        body = rec.body.get("body") if isinstance(rec.body, dict) else None
        if not isinstance(body, str) or not body:
            return self.answer(
                rec,
                web.json_response(
                    {"message": "Validation Failed", "errors": [{"field": "body", "code": "missing_field"}]},
                    status=422,
                ),
            )
        now = _iso(datetime.now(UTC))
        comment = {
            "id": next(self._ids),
            "issue": self._issue(request),
            "body": body,
            "user": {"login": "vigil-bot", "type": "Bot"},
            "created_at": now,
            "updated_at": now,
        }
        self.comments.append(comment)
        if self.echo:
            print(f"fake-github: comment on {comment['issue']}: {body.splitlines()[0]}", flush=True)
        if failure is not None:
            return failure
        return self.answer(
            rec, web.json_response({k: v for k, v in comment.items() if k != "issue"}, status=201)
        )

    async def list(self, request: web.Request) -> web.Response:
        rec, failure, _ = await self.receive(request)
        if failure is not None:
            return failure
        if not self.authorized(request):
            return self._denied(rec)
        issue = self._issue(request)
        since = rec.query.get("since", "")
        found = [c for c in self.comments if c["issue"] == issue and c["updated_at"] >= since]
        per_page = max(1, min(int(rec.query.get("per_page", "30")), 100))
        page = max(1, int(rec.query.get("page", "1")))
        chunk = found[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(found):
            nxt = request.url.update_query({"page": str(page + 1), "per_page": str(per_page)})
            headers["Link"] = f'<{nxt}>; rel="next"'
        shown = [{k: v for k, v in c.items() if k != "issue"} for c in chunk]
        return self.answer(rec, web.json_response(shown, headers=headers))

    async def _comments(self, request: web.Request) -> web.Response:
        return web.json_response(self.comments)


if __name__ == "__main__":
    main(FakeGitHub, 8092)
