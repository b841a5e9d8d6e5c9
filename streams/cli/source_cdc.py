"""``vigil source postgres`` and ``vigil source debezium``: database change streams as
``db.<schema>.<table>.<op>.v1`` events (``streams.sources.cdc``)."""

from __future__ import annotations

import click

from streams.cli.commands import settings_of
from streams.cli.sources import source_group
from streams.sources.base import run_source


@source_group.command("postgres")
@click.option("--dsn", required=True, help="libpq connection string of a role with REPLICATION.")
@click.option("--slot", required=True, help="Logical replication slot (created if missing); the source name.")
@click.option(
    "--publication", required=True, help="Publication to stream (created FOR ALL TABLES if missing)."
)
@click.option(
    "--snapshot", is_flag=True, help="First emit every existing row (op r), consistent with the slot."
)
@click.pass_context
def postgres_command(ctx: click.Context, dsn: str, slot: str, publication: str, snapshot: bool) -> None:
    """Stream PostgreSQL changes (pgoutput) to db.<schema>.<table>.v1 (key = primary key)."""
    from streams.sources.cdc.postgres import PostgresConfig, PostgresSource

    config = PostgresConfig(dsn=dsn, slot=slot, publication=publication, snapshot=snapshot)
    run_source(PostgresSource(config, settings_of(ctx)))


@source_group.command("debezium")
@click.option("--name", required=True, help="Source name (checkpoint, metrics, dlq.debezium_NAME).")
@click.option(
    "--topic", "topics", required=True, multiple=True, help="Debezium topic to translate; repeatable."
)
@click.pass_context
def debezium_command(ctx: click.Context, name: str, topics: tuple[str, ...]) -> None:
    """Translate Debezium change topics (JSON converter) into db.<schema>.<table>.<op>.v1 events."""
    from streams.sources.cdc.translator import DebeziumSource

    run_source(DebeziumSource(name, topics, settings_of(ctx)))
