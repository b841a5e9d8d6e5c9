"""The gallery's pull-request review agent (contract fixed: external checks use it).

``review`` consumes ``github.pull_request.opened.v1`` and ``github.pull_request.synchronize.v1``
on ``github.pull_request.v1`` (the gateway's GitHub webhooks, subject ``owner/repo#number``),
fetches the pull request's diff (``GET {VIGIL_GITHUB_API_BASE}/repos/{owner}/{repo}/pulls/{number}``
with ``Accept: application/vnd.github.diff``, a journaled step: a retry or redelivery does not
fetch it again), asks the LLM for a review and emits one ``github.comment.requested.v1`` on
``github.comments.v1``, which the GitHub sink (agent ``github_comments``) posts.

Exactly one comment per (pull request, head sha): the entity state keeps the head shas already
reviewed, so the same sha delivered again (a GitHub redelivery has a new delivery id, so event
dedup cannot see it; or ``opened`` and ``synchronize`` of the same commit) emits nothing.

Opt-in: ``vigil worker --agents review,github_comments`` (with the gateway, a GitHub token
and webhook secret).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import (
    Envelope,
    GitHubCommentRequestedV1,
    GitHubPullRequestOpenedV1,
    GitHubPullRequestSynchronizeV1,
    InvalidPayloadError,
    VigilError,
)
from schemas.pull_request import GitHubPullRequestEvent
from streams import Context, Settings, runtime
from streams.core.retry import Retry
from streams.sinks.settings import SinkSettings

log = logging.getLogger(__name__)

AGENT = "review"
DIFF_MEDIA_TYPE = "application/vnd.github.diff"
SYSTEM_PROMPT = (
    "You are a careful senior engineer reviewing a pull request. Point out bugs, risky changes "
    "and missing tests in the diff; be brief and concrete; say so when it looks good."
)
#: a comment's body limit (GitHubCommentRequestedV1) minus room for the header
MAX_REVIEW_CHARS = 64_000


class ReviewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True)

    review_max_diff_chars: int = Field(
        60_000, ge=1_000, description="Characters of a diff put in the prompt (the rest is cut)"
    )
    review_shas_kept: int = Field(
        100, ge=1, description="Head shas a pull request's state remembers as reviewed (newest)"
    )


class ReviewState(BaseModel):
    #: head shas already reviewed (a comment was emitted for each), oldest first
    reviewed: list[str] = Field(default_factory=list)
    reviews: int = 0


class DiffFetchError(VigilError):
    """The diff could not be fetched; ``retriable`` for 5xx, rate limits and network errors."""

    reason = "diff_fetch"

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class GitHubDiffs:
    """Fetches pull-request diffs from the GitHub REST API (the GitHub sink's base URL, token
    and timeout: ``VIGIL_GITHUB_API_BASE``, ``VIGIL_GITHUB_TOKEN``, ``VIGIL_SINK_TIMEOUT``)."""

    def __init__(self, sink: SinkSettings, settings: ReviewSettings) -> None:
        self.sink = sink
        self.settings = settings
        self.max_chars = settings.review_max_diff_chars
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, _: Settings) -> GitHubDiffs:
        return cls(SinkSettings(), ReviewSettings())

    def url(self, repo: str, number: int) -> str:
        return f"{self.sink.github_api_base.rstrip('/')}/repos/{repo}/pulls/{number}"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": DIFF_MEDIA_TYPE, "X-GitHub-Api-Version": "2022-11-28"}
        if self.sink.github_token is not None:
            headers["Authorization"] = f"Bearer {self.sink.github_token.get_secret_value()}"
        return headers

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:  # created in the worker's loop
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.sink.sink_timeout),
                headers={"User-Agent": "vigil-review"},
            )
        return self._session

    async def fetch(self, repo: str, number: int) -> str:
        """The unified diff of ``repo``'s pull request ``number``, cut at ``max_chars``."""
        url = self.url(repo, number)
        try:
            async with self.session().get(url, headers=self.headers()) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DiffFetchError(f"GET {url}: {type(exc).__name__}: {exc}", retriable=True) from exc
        if status != 200:
            # 5xx and rate limits (429, 403 with a limit) may pass; other 4xx will not
            limited = status == 429 or (status == 403 and "rate limit" in text.lower())
            raise DiffFetchError(
                f"GET {url}: HTTP {status}: {text[:300]}", retriable=status >= 500 or limited
            )
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"\n... (diff cut at {self.max_chars} characters)\n"
        return text


runtime.provide("github_diffs", GitHubDiffs.from_settings)


def prompt(pr: GitHubPullRequestEvent, diff: str) -> list[dict[str, Any]]:
    p = pr.pull_request
    author = p.user.login if p.user else "unknown"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": (
                f"Pull request {pr.repo}#{pr.number} by {author}: {p.title}\n"
                f"{p.body or '(no description)'}\n\n"
                f"Head {p.head.sha} ({p.head.ref}) into {p.base.ref}. The diff:\n\n{diff}"
            ),
        },
    ]


def comment(pr: GitHubPullRequestEvent, review: str) -> str:
    sha = pr.head_sha
    return f"**Vigil review** of {sha[:12]}\n\n{review[:MAX_REVIEW_CHARS]}"


@runtime.agent(
    GitHubPullRequestOpenedV1,
    GitHubPullRequestSynchronizeV1,
    name=AGENT,
    state=ReviewState,
    emits=[GitHubCommentRequestedV1],
    retry=Retry(max_attempts=5, backoff=1.0),
    default=False,
)
async def review(event: Envelope[GitHubPullRequestEvent], ctx: Context[ReviewState]) -> None:
    pr = event.data
    expected = f"{pr.repo}#{pr.number}"
    if event.subject != expected:
        raise InvalidPayloadError(f"subject {event.subject!r} must be {expected!r} (repository#number)")
    sha = pr.head_sha
    if sha in ctx.state.reviewed:
        log.info("review: %s at %s was reviewed already (%s); no second comment", expected, sha, event.type)
        return
    diffs: GitHubDiffs = ctx.resources["github_diffs"]
    diff: str = await ctx.step("fetch_diff", diffs.fetch, pr.repo, pr.number, result_type=str)
    reply = await ctx.llm.complete(prompt(pr, diff))
    ctx.state.reviewed.append(sha)
    del ctx.state.reviewed[: -diffs.settings.review_shas_kept]
    ctx.state.reviews += 1
    await ctx.emit(GitHubCommentRequestedV1(repo=pr.repo, number=pr.number, body=comment(pr, reply.text)))
