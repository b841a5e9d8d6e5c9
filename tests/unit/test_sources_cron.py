"""Schedules without a broker: the TOML configuration, cronsim's slots in IANA zones (the DST
days of Europe/Berlin), the catch-up policy, and the source's tick with an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas import Envelope
from streams.core.errors import ConfigError
from streams.core.settings import Settings
from streams.sources import cron
from streams.sources.base import event_id
from streams.sources.cron import Schedule, plan
from streams.sources.schedules import SchedulesSource

BERLIN_DAILY = Schedule(name="nightly", cron="30 2 * * *", timezone="Europe/Berlin", catchup_window=86400 * 3)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- DST in Europe/Berlin: Debian cron's rules, as cronsim implements them ---------------------
def test_spring_forward_the_skipped_0230_fires_once_at_0300_cest() -> None:
    # 2026-03-29: clocks jump from 02:00 CET to 03:00 CEST; 02:30 does not exist that day
    last = utc(2026, 3, 28, 1, 30)  # 02:30 CET on the 28th
    p = plan(BERLIN_DAILY, last, owned_since=last, now=utc(2026, 3, 29, 12, 0))
    assert p.fire == (utc(2026, 3, 29, 1, 0),)
    assert BERLIN_DAILY.local(p.fire[0]) == "2026-03-29T03:00:00+02:00"
    # and the day after it is 02:30 CEST again
    after = plan(BERLIN_DAILY, p.fire[0], owned_since=last, now=utc(2026, 3, 30, 12, 0))
    assert [BERLIN_DAILY.local(s) for s in after.fire] == ["2026-03-30T02:30:00+02:00"]


def test_fall_back_the_repeated_0230_fires_once_at_its_first_occurrence() -> None:
    # 2026-10-25: clocks go back from 03:00 CEST to 02:00 CET; 02:30 happens twice
    last = utc(2026, 10, 24, 0, 30)
    first = plan(BERLIN_DAILY, last, owned_since=last, now=utc(2026, 10, 25, 1, 45))  # 02:45 CET
    assert first.fire == (utc(2026, 10, 25, 0, 30),)
    assert BERLIN_DAILY.local(first.fire[0]) == "2026-10-25T02:30:00+02:00"
    # the second 02:30 (CET, 01:30 UTC) has passed by now and did not fire
    again = plan(BERLIN_DAILY, first.fire[0], owned_since=last, now=utc(2026, 10, 25, 1, 45))
    assert again.fire == ()
    nxt = BERLIN_DAILY.next_slot(first.fire[0])
    assert nxt == utc(2026, 10, 26, 1, 30)
    assert BERLIN_DAILY.local(nxt) == "2026-10-26T02:30:00+01:00"


def test_hourly_schedules_follow_elapsed_time_across_both_transitions() -> None:
    # Debian cron: jobs with a wildcard hour run by real time: one per real hour
    hourly = Schedule(name="h", cron="30 * * * *", timezone="Europe/Berlin")
    fall = list(hourly.slots(utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 3, 0)))
    assert [hourly.local(s) for s in fall] == [
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",  # the repeated hour fires again: an hourly job
        "2026-10-25T03:30:00+01:00",
    ]
    spring = list(hourly.slots(utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 3, 0)))
    assert [hourly.local(s) for s in spring] == [
        "2026-03-29T00:30:00+01:00",
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-29T04:30:00+02:00",
    ]


def test_six_fields_have_seconds_first() -> None:
    s = Schedule(name="s", cron="*/2 * * * * *")
    assert list(s.slots(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 0, 7))) == [
        utc(2026, 1, 1, 0, 0, 2),
        utc(2026, 1, 1, 0, 0, 4),
        utc(2026, 1, 1, 0, 0, 6),
    ]


# -- missed slots: catchup_window and overlap -------------------------------------------------
MINUTELY = {"name": "m", "cron": "* * * * *", "catchup_window": 300}
T0 = utc(2026, 5, 1, 12, 0)


@pytest.mark.parametrize(
    ("overlap", "fired"),
    [
        ("all", [T0 + timedelta(minutes=m) for m in (6, 7, 8, 9, 10)]),
        ("buffer_one", [T0 + timedelta(minutes=10)]),
        ("skip", []),
    ],
)
def test_backlog_after_downtime_follows_the_overlap_policy(overlap: str, fired: list[datetime]) -> None:
    s = Schedule.model_validate({**MINUTELY, "overlap": overlap})
    now = T0 + timedelta(minutes=10, seconds=30)  # down since 12:00; window = 5 min
    p = plan(s, last=T0, owned_since=now, now=now)
    assert list(p.fire) == fired
    assert p.skipped == 10 - len(fired)  # 12:01..12:05 are outside the window in every policy
    assert p.advance_to == T0 + timedelta(minutes=10)


def test_slots_due_while_owning_always_fire() -> None:
    s = Schedule.model_validate({**MINUTELY, "overlap": "skip"})
    since = T0 + timedelta(minutes=2, seconds=30)
    p = plan(s, last=T0, owned_since=since, now=T0 + timedelta(minutes=4, seconds=1))
    assert list(p.fire) == [T0 + timedelta(minutes=3), T0 + timedelta(minutes=4)]
    assert p.skipped == 2  # 12:01, 12:02: before the takeover, skip


def test_a_new_schedule_is_not_back_filled_and_nothing_due_moves_nothing() -> None:
    s = Schedule.model_validate({**MINUTELY, "overlap": "all"})
    p = plan(s, last=None, owned_since=T0 + timedelta(seconds=10), now=T0 + timedelta(seconds=50))
    assert p == cron.Plan((), 0, None)


def test_a_long_outage_is_skipped_in_bounded_steps() -> None:
    s = Schedule(name="fast", cron="* * * * * *", catchup_window=10, overlap="all")
    now = T0 + timedelta(days=2)
    p = plan(s, last=T0, owned_since=now, now=now)
    assert len(p.fire) == 11  # now-10 s .. now
    assert p.skipped == cron.MAX_SLOTS_PER_PLAN  # counted up to the bound, then jumped over
    assert p.fire[-1] == now


# -- configuration errors: one line naming the file and the schedule --------------------------
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[schedule]]\nname = "a"\ncron = "61 * * * *"\n',
            "schedule 'a': cron: invalid cron expression '61 * * * *'",
        ),
        ('[[schedule]]\nname = "a"\ncron = "* * *"\n', "schedule 'a': cron: invalid cron expression"),
        (
            '[[schedule]]\nname = "a"\ncron = "* * * * *"\ntimezone = "Europe/Atlantis"\n',
            "schedule 'a': timezone: unknown time zone 'Europe/Atlantis'",
        ),
        ('[[schedule]]\nname = "a"\ncron = "* * * * *"\noverlap = "cancel"\n', "schedule 'a': overlap:"),
        ('[[schedule]]\nname = "a"\ncron = "* * * * *"\nevery = 5\n', "schedule 'a': every: Extra inputs"),
        ('[[schedule]]\nname = "a"\ncron = "* * * * *"\n' * 2, "duplicate schedule name(s) a"),
        ("[schedule\n", "not valid TOML"),
        ("", "no [[schedule]] tables"),
    ],
)
def test_bad_configuration_is_one_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        cron.load(write(tmp_path, body))
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_full_table_loads(tmp_path: Path) -> None:
    (s,) = cron.load(
        write(
            tmp_path,
            '[[schedule]]\nname = "report"\ncron = "0 9 * * 1-5"\ntimezone = "Europe/Berlin"\n'
            'catchup_window = 600\noverlap = "buffer_one"\npayload = { kind = "daily", n = 3 }\n',
        )
    )
    assert (s.name, s.timezone, s.catchup_window, s.overlap) == ("report", "Europe/Berlin", 600, "buffer_one")
    assert s.payload == {"kind": "daily", "n": 3}


# -- the source's tick, clock injected, emits recorded (no broker) ----------------------------
class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Recording(SchedulesSource):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Envelope[Any]] = []

    async def emit(
        self, topic: str, event: Envelope[Any], *, checkpoint: Mapping[str, Any] | None = None
    ) -> None:
        assert topic == "schedules.v1"
        self.sent.append(event)
        self.stage(checkpoint or {})


async def test_tick_emits_each_due_slot_once_with_a_deterministic_id() -> None:
    clock = Clock(utc(2026, 3, 28, 20, 0))
    src = Recording("main", [BERLIN_DAILY], Settings(), clock=clock)
    src.owned = {"nightly": clock.now}
    src.checkpoint.stage({"nightly": {"after": utc(2026, 3, 28, 1, 30).isoformat()}})
    assert await src.tick() == utc(2026, 3, 29, 1, 0)  # the next slot: 03:00 CEST
    assert src.sent == []
    clock.now = utc(2026, 3, 29, 1, 0, 0, 200000)
    await src.tick()
    await src.tick()  # nothing new: the checkpoint moved in memory at once
    (tick,) = src.sent
    assert tick.subject == "nightly"
    assert tick.id == event_id("schedule", "nightly", "2026-03-29T01:00:00Z")
    body = tick.data.model_dump(mode="json")
    assert body["slot"] == "2026-03-29T01:00:00Z"
    assert body["slot_local"] == "2026-03-29T03:00:00+02:00"
    assert src.checkpoint.get("nightly") == {"after": "2026-03-29T01:00:00+00:00"}


async def test_release_stops_emitting_and_an_unowned_schedule_never_fires() -> None:
    clock = Clock(T0)
    s = Schedule.model_validate({**MINUTELY, "overlap": "all"})
    src = Recording("main", [s], Settings(), clock=clock)
    src.owned = {"m": T0}
    src.stage({"m": {"after": T0.isoformat()}})  # staged, not yet durable
    src._producer = Producer()  # type: ignore[assignment]
    await src.release()
    assert src._producer.sent == [(src.checkpoint.topic, b"m", b'{"after":"2026-05-01T12:00:00+00:00"}')]  # type: ignore[attr-defined]
    clock.now = T0 + timedelta(minutes=3)
    assert await src.tick() is None
    assert src.sent == []


class Producer:
    """Acks every send at once: enough for the checkpoint write of a release."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> Any:
        self.sent.append((topic, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done
