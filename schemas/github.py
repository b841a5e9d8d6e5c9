"""GitHub events Vigil writes itself: comments it asks the GitHub sink to post.

(Webhook deliveries from GitHub travel as ``github.<event>.<action>.v1`` with the delivery's
payload as ``data``; the gateway writes them and nothing in Vigil decodes them yet.)
"""

from __future__ import annotations

from pydantic import Field

from .payload import Payload
from .registry import registry


@registry.event("github.comment.requested", 1)
class GitHubCommentRequestedV1(Payload):
    """Post ``body`` as a comment on issue or pull request ``number`` of ``repo``."""

    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description='"owner/name"')
    number: int = Field(ge=1)
    #: GitHub caps a comment at 65,536 characters; the sink adds a marker of about 60
    body: str = Field(min_length=1, max_length=65_000)
