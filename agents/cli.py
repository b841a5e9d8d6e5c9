"""The ``vigil`` entry point: the runtime's commands plus the agent layer's (``fake-llm``).
Importing ``agents`` declares the agents that ``vigil worker`` runs."""

from __future__ import annotations

import click

import agents  # noqa: F401 - declares the agents and the llm resource
from streams.cli.commands import cli, configure_logging
from streams.observability import startup

from .fake_llm import Faults, serve


@cli.command("fake-llm")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8089, show_default=True)
@click.option(
    "--latency-ms", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Delay per request."
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share answered with --error-status.",
)
@click.option("--error-status", type=click.Choice(["429", "500", "503"]), default="500", show_default=True)
@click.option(
    "--timeout-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share that hang (client timeout).",
)
@click.option("--hang-seconds", type=click.FloatRange(min=0), default=60.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault dice.")
def fake_llm(
    host: str,
    port: int,
    latency_ms: float,
    error_rate: float,
    error_status: str,
    timeout_rate: float,
    hang_seconds: float,
    seed: int,
) -> None:
    """Serve a deterministic OpenAI-compatible /v1/chat/completions (use model openai/<any>)."""
    click.echo(f"fake-llm listening on http://{host}:{port}/v1", err=True)
    serve(host, port, Faults(latency_ms, error_rate, int(error_status), timeout_rate, hang_seconds, seed))


def main() -> None:
    startup.mark("imports")
    configure_logging()
    cli(prog_name="vigil")
