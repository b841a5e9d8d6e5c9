"""``vigil groups ...``: the agents' consumer groups (``<app id>.<agent>``, ``streams.core.groups``)
and the one-time move of an existing deployment from the single shared group (the app id) to
them (``streams.kafka.groups``)."""

from __future__ import annotations

import importlib
import json

import click

from streams.cli.commands import VigilGroup, cli, run, settings_of
from streams.core.agent import AgentSpec, runtime
from streams.core.groups import agent_group, legacy_group
from streams.kafka import groups


def _specs(agent_names: str | None, modules: tuple[str, ...]) -> list[AgentSpec]:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise click.BadParameter(f"cannot import {module!r}: {exc}", param_hint="--module") from None
    names = [n.strip() for n in agent_names.split(",") if n.strip()] if agent_names else None
    return runtime.select(names)


_agents_option = click.option(
    "--agents",
    "agent_names",
    help="Comma-separated agents, as given to vigil worker (default: all not opt-in).",
)
_module_option = click.option(
    "-m", "--module", "modules", multiple=True, help="Import this module first (declares agents); repeatable."
)


@cli.group("groups", cls=VigilGroup)
def groups_group() -> None:
    """The agents' consumer groups: list them, move a deployment from the shared group."""


@groups_group.command("ls")
@_agents_option
@_module_option
@click.pass_context
def groups_ls(ctx: click.Context, agent_names: str | None, modules: tuple[str, ...]) -> None:
    """Each agent's consumer group and source topics."""
    settings = settings_of(ctx)
    for spec in _specs(agent_names, modules):
        topics = ",".join(settings.topic(t) for t in spec.topics)
        click.echo(f"{spec.name}\t{agent_group(settings, spec.name)}\t{topics}")


@groups_group.command("migrate")
@_agents_option
@_module_option
@click.option(
    "--from",
    "source",
    metavar="GROUP",
    help="The shared group to copy from (default: VIGIL_TOPIC_PREFIX + VIGIL_APP_ID).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be copied; commit nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per partition.")
@click.pass_context
def groups_migrate(
    ctx: click.Context,
    agent_names: str | None,
    modules: tuple[str, ...],
    source: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Copy the shared group's committed offsets to each agent's own group.

    Run once, with the workers stopped, before the first start of this version. A partition the
    agent's group already committed is left as it is. Without it each agent's group starts at
    the earliest retained record: safe (handled event ids are skipped) but it re-reads the
    topics."""
    settings = settings_of(ctx)
    specs = _specs(agent_names, modules)
    moves = run(groups.migrate(settings, specs, source, dry_run=dry_run))
    verb = "would copy" if dry_run else "copied"
    for move in moves:
        if as_json:
            click.echo(json.dumps(move.as_dict()))
            continue
        where = f"{move.topic}[{move.partition}]"
        if move.status == "copy":
            click.echo(f"{verb} {move.agent}: {where} -> {move.group} at {move.source}")
        elif move.status == "kept":
            click.echo(f"kept {move.agent}: {where} of {move.group} stays at {move.current}")
    copied = sum(1 for m in moves if m.status == "copy")
    click.echo(
        f"{verb} {copied} offset(s) from {source or legacy_group(settings)} to {len(specs)} agent group(s)",
        err=True,
    )
