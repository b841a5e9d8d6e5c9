"""``vigil source ...``: run one source until SIGTERM (``streams.sources``).

Each subcommand builds its ``Source`` from its options and ``Settings`` and hands it to
``streams.sources.base.run_source``. Other modules add subcommands with
``@source_group.command("name")`` (imported at the bottom of ``streams.cli.commands``).
Bad configuration raises ``ConfigError``: one line via ``VigilGroup``, exit 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from streams.cli.commands import VigilGroup, cli, settings_of
from streams.sources.base import run_source


@cli.group("source", cls=VigilGroup)
def source_group() -> None:
    """Run a source: turn files, schedules or database changes into events (until SIGTERM)."""
    logging.getLogger("streams.sources").setLevel(logging.INFO)


# -- files ------------------------------------------------------------------------------------
@source_group.command("files")
@click.option("--name", required=True, help="Source name: the topic is files.NAME.v1.")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(path_type=Path, readable=False),
    help="Directory to watch.",
)
@click.option("--glob", "include", multiple=True, help="Only paths matching this glob; repeatable.")
@click.option("--exclude", multiple=True, help="Skip paths matching this glob; repeatable.")
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds a file's size and mtime must stay unchanged before it is emitted.",
)
@click.option(
    "--rescan",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds between full scans (the watch can miss events).",
)
@click.pass_context
def files_command(
    ctx: click.Context,
    name: str,
    directory: Path,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    settle: float,
    rescan: float,
) -> None:
    """Emit file.created|modified|deleted.v1 for the files under DIR (key = relative path)."""
    from streams.sources.files import FilesConfig, FilesSource

    config = FilesConfig(directory=directory, include=include, exclude=exclude, settle=settle, rescan=rescan)
    run_source(FilesSource(name, config, settings_of(ctx)))


# -- schedules --------------------------------------------------------------------------------
@source_group.command("schedules")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file of [[schedule]] tables (name, cron, timezone, catchup_window, overlap, payload).",
)
@click.option(
    "--name",
    default="schedules",
    show_default=True,
    help="Source name: instances with the same name and VIGIL_APP_ID share the schedules.",
)
@click.pass_context
def schedules_command(ctx: click.Context, config_path: Path, name: str) -> None:
    """Emit schedule.tick.v1 on schedules.v1, one event per slot across all instances."""
    from streams.sources import cron
    from streams.sources.schedules import SchedulesSource

    run_source(SchedulesSource(name, cron.load(config_path), settings_of(ctx)))


from streams.cli import source_cdc as _source_cdc  # noqa: E402,F401 - postgres, debezium
