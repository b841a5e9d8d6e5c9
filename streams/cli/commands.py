"""``vigil``: run workers, send and tail events, manage topics and the DLQ.

Topic names on the command line are logical; ``VIGIL_TOPIC_PREFIX`` is applied. Every
expected failure (bad arguments, unreachable broker, invalid event) ends in a one-line
error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from pydantic import ValidationError

from schemas import RawEnvelope, VigilError, registry
from streams import kafka
from streams.core import codec, topics
from streams.core.agent import runtime
from streams.core.records import ConsumedRecord
from streams.core.settings import Settings
from streams.kafka import dlq_admin

T = TypeVar("T")


class VigilGroup(click.Group):
    """Turns Vigil's typed errors into click's one-line ``Error: ...`` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VigilError as exc:
            raise click.ClickException(str(exc)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise click.ClickException(f"invalid setting {where}: {first['msg']}") from None


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.ensure_object(dict).setdefault("settings", None) or Settings()
    ctx.obj["settings"] = settings
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def configure_logging() -> None:
    """Short-lived commands report failures as one line; the clients' own retry chatter
    (aiokafka logs every failed connect) would bury it. ``vigil worker`` logs via Faust."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


@click.group(cls=VigilGroup)
@click.version_option(package_name="vigil")
def cli() -> None:
    """Vigil: event-driven LLM agents on Kafka."""


# -- worker -----------------------------------------------------------------------------------
@cli.command()
@click.option("--agents", "agent_names", help="Comma-separated agents to run (default: all not opt-in).")
@click.option(
    "-m",
    "--module",
    "modules",
    multiple=True,
    help="Import this module first (it declares more agents); repeatable.",
)
@click.option(
    "--exit-when-idle",
    "exit_when_idle",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Exit 0 once every assigned partition is handled and committed and no record came for SECONDS.",
)
@click.pass_context
def worker(
    ctx: click.Context, agent_names: str | None, modules: tuple[str, ...], exit_when_idle: float | None
) -> None:
    """Run a worker for the agents (each joins its own consumer group VIGIL_APP_ID.AGENT)."""
    import importlib

    from streams.adapter.worker import run_worker

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise click.BadParameter(f"cannot import {module!r}: {exc}", param_hint="--module") from None

    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # a worker's client warnings matter
    names = [n.strip() for n in agent_names.split(",") if n.strip()] if agent_names else None
    if names is not None and not names:
        raise click.BadParameter("no agent names given", param_hint="--agents")
    run_worker(settings_of(ctx), runtime, names, exit_when_idle=exit_when_idle)


# -- send -------------------------------------------------------------------------------------
def _envelopes_from_lines(lines: list[str], source: str) -> list[RawEnvelope]:
    envelopes: list[RawEnvelope] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"line {n}: not JSON: {exc.msg}") from None
        if not isinstance(body, dict):
            raise click.ClickException(f"line {n}: expected a JSON object (an envelope)")
        body.setdefault("source", source)
        try:
            raw = RawEnvelope.model_validate(body)
            registry.parse(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise click.ClickException(
                f"line {n}: invalid envelope: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None
        except VigilError as exc:
            raise click.ClickException(f"line {n}: {exc}") from None
        envelopes.append(raw)
    return envelopes


@cli.command()
@click.argument("file", type=click.File("r"), required=False)
@click.option("--type", "type_", help="Event type, e.g. chat.message.received.v2 (instead of FILE).")
@click.option("--subject", help="Entity id (Kafka key) with --type.")
@click.option("--data", help="JSON payload with --type.")
@click.option("--id", "event_id", help="Event id with --type (default: a new uuid4).")
@click.option("--source", default="vigil/cli", show_default=True, help="CloudEvents source.")
@click.option("--topic", help="Logical topic (default: the catalogue topic of the type).")
@click.option("--raw", is_flag=True, help="Send each line of FILE as-is, unvalidated (for poison tests).")
@click.option("--key", help="Kafka key with --raw.")
@click.pass_context
def send(
    ctx: click.Context,
    file: IO[str] | None,
    type_: str | None,
    subject: str | None,
    data: str | None,
    event_id: str | None,
    source: str,
    topic: str | None,
    raw: bool,
    key: str | None,
) -> None:
    """Send events: NDJSON envelopes from FILE or stdin, or one built from --type/--subject/--data.

    Everything is validated before anything is sent; the command returns once the broker
    acknowledged every record (acks=all)."""
    settings = settings_of(ctx)
    if raw:
        if not topic:
            raise click.BadParameter("--raw needs --topic", param_hint="--topic")
        stream = file or sys.stdin
        records = [
            codec.EncodedRecord(key.encode() if key else None, line.rstrip("\n").encode(), [])
            for line in stream
            if line.strip()
        ]
        run(kafka.produce(settings, settings.topic(topic), records))
        click.echo(f"sent {len(records)} raw record(s) to {settings.topic(topic)}", err=True)
        return
    if type_:
        if file is not None:
            raise click.UsageError("give either FILE or --type, not both")
        if not subject or data is None:
            raise click.UsageError("--type needs --subject and --data")
        body: dict[str, Any] = {"type": type_, "subject": subject, "source": source}
        try:
            body["data"] = json.loads(data)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc.msg}", param_hint="--data") from None
        if event_id:
            body["id"] = event_id
        envelopes = _envelopes_from_lines([json.dumps(body)], source)
    else:
        stream = file or sys.stdin
        if stream.isatty():
            raise click.UsageError(
                "give NDJSON envelopes on stdin or as FILE, or use --type/--subject/--data"
            )
        envelopes = _envelopes_from_lines(stream.read().splitlines(), source)
    by_topic: dict[str, list[codec.EncodedRecord]] = {}
    for env in envelopes:
        name = settings.topic(topic or topics.for_type(env.type).name)
        by_topic.setdefault(name, []).append(codec.encode(env))

    async def produce_all() -> None:
        for name, records in by_topic.items():
            await kafka.produce(settings, name, records)

    run(produce_all())
    for env in envelopes:
        click.echo(env.id)
    click.echo(f"sent {len(envelopes)} event(s)", err=True)


# -- tail -------------------------------------------------------------------------------------
def _record_json(rec: ConsumedRecord) -> dict[str, Any]:
    value: Any
    try:
        value = json.loads(rec.value) if rec.value is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        value = rec.value.decode("utf-8", errors="replace") if rec.value is not None else None
    return {
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "key": rec.key.decode("utf-8", errors="replace") if rec.key is not None else None,
        "headers": {
            k: v.decode("utf-8", errors="replace") if v is not None else None for k, v in rec.headers
        },
        "value": value,
    }


def _print_record(rec: ConsumedRecord, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_record_json(rec), ensure_ascii=False))
        return
    j = _record_json(rec)
    ce_type = j["headers"].get("ce_type", "-")
    value = j["value"] if isinstance(j["value"], str) else json.dumps(j["value"], ensure_ascii=False)
    click.echo(f"{rec.topic}[{rec.partition}]@{rec.offset} key={j['key']} type={ce_type} {value}")


@cli.command()
@click.argument("topic")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.option("--from-beginning", is_flag=True, help="Start at the earliest offset instead of the end.")
@click.option("--max", "max_records", type=click.IntRange(min=1), help="Stop after N records.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop after S seconds.")
@click.pass_context
def tail(
    ctx: click.Context,
    topic: str,
    as_json: bool,
    from_beginning: bool,
    max_records: int | None,
    timeout: float | None,
) -> None:
    """Print records of TOPIC as they arrive."""
    settings = settings_of(ctx)
    name = settings.topic(topic)

    async def go() -> None:
        if name not in await kafka.list_topics(settings):
            raise click.ClickException(f"topic {name!r} does not exist")
        async for rec in kafka.read_topics(
            settings,
            [name],
            from_beginning=from_beginning,
            follow=True,
            timeout=timeout,
            max_records=max_records,
        ):
            _print_record(rec, as_json)

    with contextlib.suppress(KeyboardInterrupt):
        run(go())


# -- topics -----------------------------------------------------------------------------------
@cli.group("topics")
def topics_group() -> None:
    """The topic catalogue."""


@topics_group.command("ls")
@click.option("--all", "show_all", is_flag=True, help="Also list topics outside the prefix.")
@click.pass_context
def topics_ls(ctx: click.Context, show_all: bool) -> None:
    """List topics on the broker."""
    settings = settings_of(ctx)
    for name in run(kafka.list_topics(settings)):
        if show_all or name.startswith(settings.topic_prefix):
            click.echo(name)


@topics_group.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create the catalogue topics and the DLQs of all agents (existing ones are kept)."""
    settings = settings_of(ctx)
    names = {settings.topic(s.name) for s in topics.CATALOGUE}
    names |= {settings.topic(spec.dlq_topic) for spec in runtime.agents.values()}
    created = run(kafka.create_topics(settings, names))
    for name in sorted(names):
        click.echo(f"{name}\t{'created' if name in created else 'exists'}")


# -- dlq --------------------------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., Any])


def _filter_options(fn: F) -> F:
    """The record filters shared by ``ls``, ``show`` and ``replay`` (all given must match)."""
    options = [
        click.option("--agent", help="Only this agent's DLQ (default: every DLQ under the prefix)."),
        click.option(
            "--id", "event_id", help="Event id: the ce_id header, else the envelope id in the value."
        ),
        click.option("--subject", help="Subject: the record key."),
        click.option("--reason", help="Failure reason (vigil_reason), e.g. handler_error, parked."),
        click.option("--partition", type=click.IntRange(min=0), help="DLQ partition (needs --agent)."),
        click.option(
            "--offset",
            type=click.IntRange(min=0),
            help="DLQ offset (needs --agent; any partition unless --partition).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _find(ctx: click.Context, **filters: Any) -> list[ConsumedRecord]:
    return run(dlq_admin.find(settings_of(ctx), dlq_admin.DlqFilter(**filters)))


def _replay(settings: Settings, records: list[ConsumedRecord], dry_run: bool) -> None:
    async def go() -> list[dlq_admin.Replay]:
        plan = await dlq_admin.plan_replay(settings, records)
        if not dry_run:
            await dlq_admin.replay(settings, plan)
        return plan

    plan = run(go())
    verb = "would replay" if dry_run else "replayed"
    for p in plan:
        click.echo(f"{verb} {dlq_admin.ref(p.source)} -> {p.topic}")
    click.echo(f"{verb} {len(plan)} record(s)", err=True)


@cli.group("dlq")
def dlq_group() -> None:
    """Dead-lettered records: inspect, replay to their origin, purge, release parked subjects."""


@dlq_group.command("ls")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.pass_context
def dlq_ls(ctx: click.Context, /, as_json: bool, **filters: Any) -> None:
    """List dead-lettered records, one line each.

    Each line: DLQ position, reason, event id, subject, origin position, attempts, error."""
    records = _find(ctx, **filters)
    for rec in records:
        click.echo(json.dumps(dlq_admin.summary(rec)) if as_json else dlq_admin.format_line(rec))
    click.echo(f"{len(records)} record(s)", err=True)


@dlq_group.command("show")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.pass_context
def dlq_show(ctx: click.Context, /, as_json: bool, **filters: Any) -> None:
    """Print matching records in full.

    Key, decoded headers, and the value as indented JSON when it parses, else as bytes."""
    records = _find(ctx, **filters)
    if not records:
        raise click.ClickException("no DLQ record matches")
    for n, rec in enumerate(records):
        if as_json:
            click.echo(json.dumps(_record_json(rec), ensure_ascii=False))
        else:
            click.echo(("\n" if n else "") + dlq_admin.format_full(rec))


@dlq_group.command("replay")
@_filter_options
@click.option("--dry-run", is_flag=True, help="List what would be replayed; send nothing.")
@click.pass_context
def dlq_replay(ctx: click.Context, /, dry_run: bool, **filters: Any) -> None:
    """Re-produce matching records to their origin topic, in DLQ order.

    Original key, value and headers, without the vigil_* DLQ headers, plus vigil_replay =
    <dlq topic>:<partition>:<offset>. Replaying twice is harmless: the worker skips handled ids.
    Records of a still-parked subject are parked again: use `vigil dlq release SUBJECT --replay`."""
    _replay(settings_of(ctx), _find(ctx, **filters), dry_run)


@dlq_group.command("purge")
@click.option("--agent", required=True, help="The agent whose DLQ is truncated.")
@click.option("--yes", is_flag=True, help="Really delete (records cannot be recovered).")
@click.option("--partition", type=click.IntRange(min=0), help="Only this DLQ partition.")
@click.option(
    "--before-offset",
    type=click.IntRange(min=0),
    help="Delete offsets below N in each partition (default: everything up to the current end).",
)
@click.pass_context
def dlq_purge(
    ctx: click.Context, agent: str, yes: bool, partition: int | None, before_offset: int | None
) -> None:
    """Delete an agent's dead letters for good.

    Filters (--id, --subject, --reason) do not apply: Kafka cannot delete single records, it
    can only move a partition's start offset forward (DeleteRecords). Purge therefore truncates
    whole partitions, up to their current end or --before-offset. Replay what you need first."""
    settings = settings_of(ctx)
    name = dlq_admin.dlq_topic(settings, agent)
    if not yes:
        raise click.ClickException(f"refusing to purge {name} without --yes (deleted records are gone)")
    cuts = run(dlq_admin.purge(settings, agent, partition=partition, before_offset=before_offset))
    for cut in cuts:
        click.echo(f"{name}:{cut.partition} deleted offsets {cut.before}-{cut.after - 1}")
    click.echo(f"purged {sum(c.after - c.before for c in cuts)} record(s) from {name}", err=True)


@dlq_group.command("release")
@click.argument("subject")
@click.option("--agent", required=True, help="The agent that parked SUBJECT.")
@click.option("--replay", "then_replay", is_flag=True, help="Then replay the agent's DLQ records of SUBJECT.")
@click.option(
    "-m", "--module", "modules", multiple=True, help="Import this module first (declares the agent)."
)
@click.pass_context
def dlq_release(
    ctx: click.Context, subject: str, agent: str, then_replay: bool, modules: tuple[str, ...]
) -> None:
    """Let a parked SUBJECT flow again.

    Produces a release control record to the agent's source topic, keyed by SUBJECT: it lands
    on the subject's partition and takes effect before anything the subject sends next.

    With --replay, the agent's DLQ records of SUBJECT (any reason) follow it, in DLQ order."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise click.BadParameter(f"cannot import {module!r}: {exc}", param_hint="--module") from None
    settings = settings_of(ctx)
    (spec,) = runtime.select([agent])
    if then_replay:
        run(dlq_admin.dlq_topics(settings, agent))  # a missing DLQ fails before the release is sent
    sent = run(dlq_admin.release(settings, agent, settings.topic(spec.topic), subject))
    click.echo(
        f"released {subject!r} of agent {agent}: control record at {sent.topic}:{sent.partition}:{sent.offset}"
    )
    if then_replay:
        # read after the release: records parked until now are included
        _replay(settings, _find(ctx, agent=agent, subject=subject), dry_run=False)


# -- schemas ----------------------------------------------------------------------------------
@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write one file per type here.")
def schemas(out: Path | None) -> None:
    """Export the JSON Schema of every registered event type."""
    all_schemas = {"envelope": registry.envelope_schema(), **registry.json_schemas()}
    if out is None:
        click.echo(json.dumps(all_schemas, indent=2))
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in all_schemas.items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    click.echo(f"wrote {len(all_schemas)} schemas to {out}", err=True)


def add_command(command: Callable[..., Any]) -> None:
    """For layers above the runtime (``agents.cli``) to extend ``vigil``."""
    cli.add_command(command)  # type: ignore[arg-type]


from streams.cli import gateway as _gateway  # noqa: E402,F401
from streams.cli import groups as _groups  # noqa: E402,F401
from streams.cli import sources as _sources  # noqa: E402,F401
