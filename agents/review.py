"""The gallery's pull-request review agent (contract fixed: external checks use it).

``review`` consumes ``github.pull_request.opened.v1`` and ``github.pull_request.synchronize.v1``
on ``github.pull_request.v1`` (the gateway's GitHub webhooks, subject ``owner/repo#number``),
asks the LLM for a review with one tool, ``fetch_diff`` (``GET
{VIGIL_GITHUB_API_BASE}/repos/{owner}/{repo}/pulls/{number}`` with ``Accept:
application/vnd.github.diff``; ``agents.tools.run_tools`` journals each LLM reply and the
tool's result, so a retry or redelivery neither asks nor fetches again) and emits one
``github.comment.requested.v1`` on ``github.comments.v1``, which the GitHub sink (agent
``github_comments``) posts. A 5xx, rate limit or network error on the diff makes the pull
request wait ``VIGIL_REVIEW_DIFF_RETRY_DELAY`` s and try again (no retry attempt used); another
4xx goes back to the model as the tool's result.

Exactly one comment per (pull request, head sha): the entity state keeps the head shas already
reviewed, so the same sha delivered again (a GitHub redelivery has a new delivery id, so event
dedup cannot see it; or ``opened`` and ``synchronize`` of the same commit) emits nothing.

Opt-in: ``vigil worker --agents review,github_comments`` (with the gateway, a GitHub token
and webhook secret).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.llm import agent_prompt
from agents.tools import run_tools, tool
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
from streams.core.backpressure import Blocked
from streams.core.retry import Retry
from streams.sinks.settings import SinkSettings

log = logging.getLogger(__name__)

AGENT = "review"
DIFF_MEDIA_TYPE = "application/vnd.github.diff"
SYSTEM_PROMPT = (
    "You are a careful senior engineer reviewing a pull request. First call the fetch_diff tool "
    "to read its changes. Then point out bugs, risky changes and missing tests; be brief and "
    "concrete; say so when it looks good."
)
#: LLM requests per review: the one that calls fetch_diff, the review, and room for a retry
MAX_STEPS = 4
#: a comment's body limit (GitHubCommentRequestedV1) minus room for the header
MAX_REVIEW_CHARS = 64_000


class ReviewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore", frozen=True)

    review_max_diff_chars: int = Field(
        60_000, ge=1_000, description="Characters of a diff put in the prompt (the rest is cut)"
    )
    review_diff_retry_delay: float = Field(
        5.0, gt=0, description="Seconds a pull request waits before fetching its diff again after a 5xx"
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


@tool
async def fetch_diff(ctx: Context[Any]) -> str:
    """Fetch the unified diff of the pull request under review. Takes no arguments."""
    pr: GitHubPullRequestEvent = ctx.event.data
    diffs: GitHubDiffs = ctx.resources["github_diffs"]
    try:
        return await diffs.fetch(pr.repo, pr.number)
    except DiffFetchError as exc:
        if not exc.retriable:
            raise  # the model reads the error as the tool's result
        # GitHub may answer later: this subject waits and runs again (the LLM's first reply
        # replays from the journal), without using a retry attempt; others go on
        delay = diffs.settings.review_diff_retry_delay
        log.warning("review: %s; fetching the diff again in %.1fs", exc, delay)
        raise Blocked(str(exc), retry_at=time.monotonic() + delay) from exc


def prompt(pr: GitHubPullRequestEvent, system: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    p = pr.pull_request
    author = p.user.login if p.user else "unknown"
    return [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": (
                f"Pull request {pr.repo}#{pr.number} by {author}: {p.title}\n"
                f"{p.body or '(no description)'}\n\n"
                f"Head {p.head.sha} ({p.head.ref}) into {p.base.ref}. Review its diff."
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
    system = agent_prompt(ctx, SYSTEM_PROMPT)  # VIGIL_AGENT__REVIEW__PROMPT overrides it
    run = await run_tools(ctx, prompt(pr, system), [fetch_diff], max_steps=MAX_STEPS)
    if not any(call.name == fetch_diff.name and call.ok for call in run.calls):
        log.warning("review: %s at %s reviewed without its diff (the model did not get it)", expected, sha)
    ctx.state.reviewed.append(sha)
    del ctx.state.reviewed[: -ctx.resources["github_diffs"].settings.review_shas_kept]
    ctx.state.reviews += 1
    await ctx.emit(GitHubCommentRequestedV1(repo=pr.repo, number=pr.number, body=comment(pr, run.text)))
