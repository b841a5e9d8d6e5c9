"""A local fake of the GitHub REST API's issue comments (tests and the demo only; production
code never imports it).

``POST /repos/{owner}/{repo}/issues/{number}/comments`` (``{"body": ...}``) stores a comment and
answers 201 with it; ``GET`` on the same path lists the issue's comments oldest first, filtered
by ``since`` (updated at or after, ISO 8601), paged by ``per_page`` (default 30, at most 100)
and ``page`` with a ``Link: <...>; rel="next"`` header, as GitHub does. ``GET
/repos/{owner}/{repo}/pulls/{number}`` answers a pull request registered with ``add_pull`` (or
``POST /_pulls`` ``{"repo", "number", "diff", ...}``): its unified diff with ``Accept:
application/vnd.github.diff``, else its JSON; 404 for an unknown one; ``diff_requests`` (``GET
/_pulls/requests``) keeps each such request's pull and ``Accept`` header. Without the right
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
PULL_PATH = "/repos/{owner}/{repo}/pulls/{number}"
DIFF_MEDIA_TYPE = "application/vnd.github.diff"


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
        #: pull requests by "owner/repo#number": their JSON, with the diff under "diff"
        self.pulls: dict[str, dict[str, Any]] = {}
        #: every GET of a pull request: {"pull": "owner/repo#number", "accept": ..., "status": ...}
        self.diff_requests: list[dict[str, Any]] = []

    def reset(self) -> None:
        super().reset()
        self.comments.clear()
        self.pulls.clear()
        self.diff_requests.clear()

    def add_pull(self, repo: str, number: int, diff: str, **fields: Any) -> None:
        """Serve pull request ``number`` of ``repo`` with ``diff`` (other fields: its JSON)."""
        self.pulls[f"{repo}#{number}"] = {"number": number, **fields, "diff": diff}

    def routes(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.create)
        app.router.add_get(PATH, self.list)
        app.router.add_get("/_comments", self._comments)
        app.router.add_get(PULL_PATH, self.pull)
        app.router.add_post("/_pulls", self._add_pull)
        app.router.add_get("/_pulls/requests", self._diff_requests)

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

    async def pull(self, request: web.Request) -> web.Response:
        rec, failure, _ = await self.receive(request)
        accept = request.headers.get("Accept", "")
        seen = {"pull": self._issue(request), "accept": accept, "status": 0}
        self.diff_requests.append(seen)
        response = failure
        if response is None and not self.authorized(request):
            response = self._denied(rec)
        found = self.pulls.get(str(seen["pull"]))
        if response is None and found is None:
            response = self.answer(
                rec,
                web.json_response(
                    {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}, status=404
                ),
            )
        if response is None and found is not None:
            if DIFF_MEDIA_TYPE in accept:
                response = self.answer(
                    rec,
                    web.Response(text=found["diff"], content_type=DIFF_MEDIA_TYPE, charset="utf-8"),
                )
            else:
                response = self.answer(
                    rec, web.json_response({k: v for k, v in found.items() if k != "diff"})
                )
        assert response is not None
        seen["status"] = response.status
        return response

    async def _add_pull(self, request: web.Request) -> web.Response:
        body = await request.json()
        fields = {k: v for k, v in body.items() if k not in ("repo", "number", "diff")}
        self.add_pull(str(body["repo"]), int(body["number"]), str(body["diff"]), **fields)
        return web.json_response({"ok": True})

    async def _diff_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.diff_requests)

    async def _comments(self, request: web.Request) -> web.Response:
        return web.json_response(self.comments)


if __name__ == "__main__":
    main(FakeGitHub, 8092)
