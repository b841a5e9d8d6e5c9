"""The `vigil` command line (`streams.cli.commands`); `agents.cli` adds the LLM layer's commands."""

from streams.cli.commands import add_command, cli, configure_logging

__all__ = ["add_command", "cli", "configure_logging"]
