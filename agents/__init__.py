"""The LLM layer and the concrete agents. Importing this package declares every agent into
``streams.runtime`` and provides the ``llm`` resource their contexts use."""

from streams import runtime
from streams.sinks import github as _github_sink  # noqa: F401 - declares the reply sinks
from streams.sinks import slack as _slack_sink  # noqa: F401

from . import file_watch, onboarding, review, slack_bridge, support, triage
from .llm import LLMClient, LLMError, LLMReply

runtime.provide("llm", LLMClient.from_settings)

__all__ = [
    "LLMClient",
    "LLMError",
    "LLMReply",
    "file_watch",
    "onboarding",
    "review",
    "slack_bridge",
    "support",
    "triage",
]
