"""Schedules as pure data and time arithmetic (no I/O): the TOML configuration, the slots of a
cron expression in an IANA time zone, and which due slots fire after a gap.

Cron expressions are evaluated by ``cronsim`` (5 fields, or 6 with seconds first), which follows
Debian cron's daylight-saving rules: a local time skipped by the spring-forward jump fires once
at the first valid time after it (02:30 in Europe/Berlin fires at 03:00 CEST on that day), and a
local time repeated by the fall-back fires once, at its first occurrence (02:30 CEST, not again
at 02:30 CET). Slots are kept in UTC.

Missed slots (the emitter was down, lost its group membership, or stalled) follow a policy per
schedule, after Temporal's schedules:

- ``catchup_window`` (seconds, default 3600): slots older than this when the emitter looks at
  them never fire (counted as skipped);
- ``overlap``: what fires of the slots that came due before this emitter took the schedule
  over (``owned_since``) — ``all`` (every one, oldest first), ``buffer_one`` (only the most
  recent one) or ``skip`` (none; the first tick is the first slot after the takeover). Slots
  that come due while the emitter owns the schedule always fire (within the catch-up window).

A schedule never emitted before starts at ``owned_since``: nothing is back-filled.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.core.errors import ConfigError

Overlap = Literal["skip", "buffer_one", "all"]


class Schedule(BaseModel):
    """One ``[[schedule]]`` table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\s/]+$")
    cron: str = Field(min_length=1)
    timezone: str = "UTC"
    catchup_window: float = Field(3600.0, ge=0)
    overlap: Overlap = "skip"
    payload: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            CronSim(value, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after ``after`` (any aware datetime), in UTC."""
        local = after.astimezone(self.zone)
        return next(iter(CronSim(self.cron, local))).astimezone(UTC)

    def slots(self, after: datetime, until: datetime) -> Iterable[datetime]:
        """Slots in (after, until], in UTC, oldest first."""
        for slot in CronSim(self.cron, after.astimezone(self.zone)):
            utc = slot.astimezone(UTC)
            if utc > until:
                return
            yield utc

    def local(self, slot: datetime) -> str:
        return slot.astimezone(self.zone).isoformat()


def load(path: Path) -> list[Schedule]:
    """The schedules of a TOML file, or one ``ConfigError`` naming the file and the problem."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    extra = set(doc) - {"schedule"}
    if extra:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(extra))} (expected [[schedule]])"
        )
    tables = doc.get("schedule")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: no [[schedule]] tables")
    schedules: list[Schedule] = []
    for n, table in enumerate(tables, 1):
        label = f"schedule {table.get('name')!r}" if isinstance(table.get("name"), str) else f"schedule #{n}"
        try:
            schedules.append(Schedule.model_validate(table))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<table>"
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{path}: {label}: {where}: {msg}") from None
    names = [s.name for s in schedules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: duplicate schedule name(s) {', '.join(dupes)}")
    return schedules


@dataclass(frozen=True)
class Plan:
    """What to do with a schedule now: ``fire`` these slots, count ``skipped`` ones, and move
    the checkpoint to ``advance_to`` (the newest slot considered; None: nothing due)."""

    fire: tuple[datetime, ...]
    skipped: int
    advance_to: datetime | None


MAX_SLOTS_PER_PLAN = 10_000


def plan(schedule: Schedule, last: datetime | None, owned_since: datetime, now: datetime) -> Plan:
    """The slots due at ``now`` after ``last`` (the last emitted or skipped slot)."""
    start = last if last is not None else owned_since
    window_start = now - timedelta(seconds=schedule.catchup_window)
    fire: list[datetime] = []
    skipped = 0
    newest: datetime | None = None
    if start < window_start:  # too late to fire: counted (up to a bound), then jumped over
        before_window = window_start - timedelta(microseconds=1)
        for slot in schedule.slots(start, before_window):
            newest = slot
            skipped += 1
            if skipped >= MAX_SLOTS_PER_PLAN:
                break
        start = before_window
    missed: list[datetime] = []  # came due before the takeover
    for slot in schedule.slots(start, now):
        newest = slot
        if slot < owned_since:
            missed.append(slot)
        else:
            fire.append(slot)
        if len(fire) + len(missed) >= MAX_SLOTS_PER_PLAN:
            break  # the rest in the next plan: the checkpoint moves in steps
    if schedule.overlap == "all":
        kept = missed
    elif schedule.overlap == "buffer_one":
        kept = missed[-1:]
    else:
        kept = []
    skipped += len(missed) - len(kept)
    return Plan(tuple(kept + fire), skipped, newest)
