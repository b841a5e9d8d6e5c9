"""GitHub ``pull_request`` webhook deliveries as the gateway writes them: type
``github.pull_request.<action>.v1`` on ``github.pull_request.v1``, subject ``owner/repo#number``,
``data`` the delivery's whole JSON body.

GitHub adds fields without notice and these models name only what Vigil reads, so unlike
Vigil's own payloads they ignore unknown fields instead of treating them as a new version.
``opened`` and ``synchronize`` (new commits pushed) are what the review agent reads; every other
action GitHub sends on the same topic is registered too, with a model that reads nothing, so
a consumer of the topic skips it instead of dead-lettering it as an unknown type.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .payload import Payload
from .registry import registry

_LENIENT = ConfigDict(extra="ignore", frozen=True)


class GitHubUser(BaseModel):
    model_config = _LENIENT

    login: str


class GitHubRepository(BaseModel):
    model_config = _LENIENT

    full_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description='"owner/name"')


class GitHubRef(BaseModel):
    """``head`` or ``base`` of a pull request: the branch and the commit it points at."""

    model_config = _LENIENT

    ref: str
    sha: str = Field(pattern=r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$", description="SHA-1 (or SHA-256)")
    #: None when the head repository (a fork) was deleted
    repo: GitHubRepository | None = None


class GitHubPullRequest(BaseModel):
    model_config = _LENIENT

    number: int = Field(ge=1)
    title: str
    body: str | None = None
    html_url: str
    state: str = "open"
    draft: bool = False
    user: GitHubUser | None = None
    head: GitHubRef
    base: GitHubRef
    additions: int | None = None
    deletions: int | None = None
    changed_files: int | None = None


class GitHubPullRequestEvent(Payload):
    """A ``pull_request`` delivery that carries the pull request (``opened``, ``synchronize``)."""

    model_config = _LENIENT

    action: str
    number: int = Field(ge=1)
    pull_request: GitHubPullRequest
    repository: GitHubRepository
    sender: GitHubUser | None = None

    @property
    def repo(self) -> str:
        """The repository the pull request lives in (its comments are posted there)."""
        return self.repository.full_name

    @property
    def head_sha(self) -> str:
        return self.pull_request.head.sha


@registry.event("github.pull_request.opened", 1)
class GitHubPullRequestOpenedV1(GitHubPullRequestEvent):
    """A pull request was opened."""


@registry.event("github.pull_request.synchronize", 1)
class GitHubPullRequestSynchronizeV1(GitHubPullRequestEvent):
    """New commits were pushed to a pull request's head branch (``pull_request.head.sha`` is the new head)."""

    before: str | None = None
    after: str | None = None


class GitHubPullRequestOtherV1(Payload):
    """Any other ``pull_request`` action: registered so consumers skip it; reads nothing."""

    model_config = ConfigDict(extra="allow", frozen=True)


#: the ``pull_request`` actions GitHub sends besides ``opened`` and ``synchronize``
OTHER_ACTIONS = (
    "assigned",
    "auto_merge_disabled",
    "auto_merge_enabled",
    "closed",
    "converted_to_draft",
    "demilestoned",
    "dequeued",
    "edited",
    "enqueued",
    "labeled",
    "locked",
    "milestoned",
    "ready_for_review",
    "reopened",
    "review_request_removed",
    "review_requested",
    "unassigned",
    "unlabeled",
    "unlocked",
)

OTHER_MODELS: dict[str, type[Payload]] = {
    action: registry.event(f"github.pull_request.{action}", 1)(
        type(f"GitHubPullRequest_{action}_V1", (GitHubPullRequestOtherV1,), {"__module__": __name__})
    )
    for action in OTHER_ACTIONS
}

#: every event base on ``github.pull_request.v1`` (the topic catalogue lists them)
PULL_REQUEST_TYPES: tuple[str, ...] = (
    "github.pull_request.opened",
    "github.pull_request.synchronize",
    *(f"github.pull_request.{a}" for a in OTHER_ACTIONS),
)
