"""The runtime: settings, codec, topic catalogue, agent decorator, dispatcher, worker, CLI."""

from streams.core.agent import AgentSpec, Runtime, runtime
from streams.core.context import Context
from streams.core.settings import Settings

__all__ = ["AgentSpec", "Context", "Runtime", "Settings", "runtime"]
