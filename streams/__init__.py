"""The runtime: settings, codec, topic catalogue, agent decorator, dispatcher, worker, CLI."""

from .agent import AgentSpec, Runtime, runtime
from .context import Context
from .settings import Settings

__all__ = ["AgentSpec", "Context", "Runtime", "Settings", "runtime"]
