"""The LLM layer and the concrete agents. Importing this package declares every agent into
``streams.runtime`` and provides the ``llm`` resource their contexts use."""

from streams import runtime

from . import support
from .llm import LLMClient, LLMError, LLMReply

runtime.provide("llm", LLMClient.from_settings)

__all__ = ["LLMClient", "LLMError", "LLMReply", "support"]
