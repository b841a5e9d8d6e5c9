"""``vigil gateway``: the webhook gateway as a long-running process (until SIGTERM or Ctrl-C).
Logs which routes verify signatures and which fail closed; never a secret or a body."""

from __future__ import annotations

import asyncio
import logging
import signal

import click
from pydantic_settings import SettingsError

from streams.sources.gateway import Gateway, GatewaySettings, bound_port, serve

from .commands import cli, run, settings_of

log = logging.getLogger("vigil.gateway")


async def _run(gateway: Gateway, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(gateway, host, port)
    log.info("gateway listening on http://%s:%d", host, bound_port(runner))
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping")
        await runner.cleanup()


@cli.command("gateway")
@click.option("--host", help="Address to bind (default VIGIL_GATEWAY_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default VIGIL_GATEWAY_PORT, 8080).")
@click.pass_context
def gateway(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Receive GitHub, Slack and Standard Webhooks and put them on Kafka (202 once acked)."""
    try:
        config = GatewaySettings()
    except SettingsError as exc:  # a complex variable that is not JSON, before any validation
        parts = str(exc).split('"')  # 'error parsing value for field "webhook_sources" from ...'
        if len(parts) < 2:
            raise click.ClickException(f"invalid setting: {exc}") from None
        raise click.ClickException(f"VIGIL_{parts[1].upper()} is not valid JSON") from None
    try:
        instance = Gateway(settings_of(ctx), config)
    except OSError as exc:  # a *_FILE secret that cannot be read
        raise click.ClickException(f"cannot read a secret file: {exc.strerror} ({exc.filename})") from None
    logging.getLogger("vigil.gateway").setLevel(logging.INFO)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the gateway logs Kafka trouble itself
    run(_run(instance, host or config.gateway_host, config.gateway_port if port is None else port))
