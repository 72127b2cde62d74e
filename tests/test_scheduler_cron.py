"""Periodic(cron=...): wall-clock fire times, DST, clock jumps, in virtual time."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

import pytest
import trio
import trio.testing

import periodic
from periodic import Periodic
from periodic.events import Skipped, SkipReason, Started
from periodic.testing import capture_events, serve_for, sync_tick

pytest.importorskip("cronsim")

UTC = dt.timezone.utc


class FakeWall:
    """A wall clock that follows Trio's (virtual) clock from ``start``, and can jump."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.offset = 0.0

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=trio.current_time() + self.offset)

    def at(self, moment: dt.datetime) -> float:
        """The virtual time at which this clock shows ``moment``."""
        return (moment - self.start).total_seconds() - self.offset


async def noop() -> None:
    pass


def cron_job(spec: str, wall: FakeWall, **options: object) -> Periodic:
    return Periodic(run=noop, cron=spec, wall_clock=wall, name="cron", **options)  # type: ignore[arg-type]


async def test_a_cron_job_fires_on_its_wall_clock_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    seen: list[periodic.RunInfo] = []

    async def job() -> None:
        seen.append(periodic.current_run())

    p = Periodic(run=job, cron="*/15 * * * *", wall_clock=wall)
    events = await serve_for(p, 3000)
    started = events.of(Started)
    assert [s.started_at for s in started] == [600.0, 1500.0, 2400.0]
    assert [s.fire_time for s in started] == [
        dt.datetime(2026, 1, 1, 0, m, tzinfo=UTC) for m in (15, 30, 45)
    ]
    assert [s.scheduled_at for s in started] == [600.0, 1500.0, 2400.0]
    assert [info.fire_time for info in seen] == [s.fire_time for s in started]


async def test_every_macro_is_an_interval(autojump_clock: trio.testing.MockClock) -> None:
    p = Periodic(run=noop, cron="@every 1m30s")
    assert (p.every, p.initial_delay, p.delay_mode, p.cron) == (None, None, None, "@every 1m30s")
    events = await serve_for(p, 200)
    assert [s.started_at for s in events.of(Started)] == [90.0, 180.0]
    assert [s.fire_time for s in events.of(Started)] == [None, None]


@pytest.mark.parametrize(
    ("zone", "start", "spec", "fires_utc"),
    [
        # Spring forward: 02:30 does not exist; it fires once, right after the jump.
        (
            "Europe/Berlin",
            dt.datetime(2026, 3, 28, 12, tzinfo=UTC),
            "30 2 * * *",
            [dt.datetime(2026, 3, 29, 1, 0), dt.datetime(2026, 3, 30, 0, 30)],
        ),
        # Fall back: 02:30 happens twice; it fires once.
        (
            "Europe/Berlin",
            dt.datetime(2026, 10, 24, 12, tzinfo=UTC),
            "30 2 * * *",
            [dt.datetime(2026, 10, 25, 0, 30), dt.datetime(2026, 10, 26, 1, 30)],
        ),
        (
            "America/New_York",
            dt.datetime(2026, 3, 7, 12, tzinfo=UTC),
            "30 2 * * *",
            [dt.datetime(2026, 3, 8, 7, 0), dt.datetime(2026, 3, 9, 6, 30)],
        ),
        (
            "America/New_York",
            dt.datetime(2026, 10, 31, 12, tzinfo=UTC),
            "30 1 * * *",
            [dt.datetime(2026, 11, 1, 5, 30), dt.datetime(2026, 11, 2, 6, 30)],
        ),
        (
            "Australia/Sydney",
            dt.datetime(2026, 4, 4, 0, tzinfo=UTC),
            "30 2 * * *",
            [dt.datetime(2026, 4, 4, 15, 30), dt.datetime(2026, 4, 5, 16, 30)],
        ),
        (
            "Asia/Kolkata",
            dt.datetime(2026, 6, 1, 0, tzinfo=UTC),
            "0 9 * * *",
            [dt.datetime(2026, 6, 1, 3, 30), dt.datetime(2026, 6, 2, 3, 30)],
        ),
    ],
)
async def test_dst_transitions_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
    zone: str,
    start: dt.datetime,
    spec: str,
    fires_utc: list[dt.datetime],
) -> None:
    wall = FakeWall(start)
    expected = [f.replace(tzinfo=UTC) for f in fires_utc]
    events = await serve_for(cron_job(spec, wall, tz=zone), wall.at(expected[-1]) + 3600)
    started = events.of(Started)
    assert [s.started_at for s in started] == [wall.at(f) for f in expected]
    # Compared in UTC: Python never finds an ambiguous local time equal to another zone's.
    assert [s.fire_time.astimezone(UTC) for s in started] == expected
    assert all(s.fire_time.tzinfo == zoneinfo.ZoneInfo(zone) for s in started)


async def test_a_forward_jump_while_waiting_reports_missed_fire_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 10, tzinfo=UTC))
    p = cron_job("0 * * * *", wall)
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(100)
            wall.offset += 2 * 3600  # the wall clock jumps to 02:11:40
            await trio.sleep(3000)
            nursery.cancel_scope.cancel()
    # Noticed at the next re-read of the wall clock (every 30 s while waiting: at 120,
    # when it shows 02:12): 01:00 was missed, 02:00 fires (12 minutes late), then 03:00.
    assert [(s.started_at, s.fire_time.hour) for s in events.of(Started)] == [
        (120.0, 2),
        (3000.0, 3),
    ]
    assert events.of(Skipped) == [
        Skipped(job="cron", reason=SkipReason.MISSED, scheduled_at=120.0 - 4320.0, count=1)
    ]


async def test_a_backward_jump_never_repeats_a_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 10, tzinfo=UTC))
    p = cron_job("0 * * * *", wall)
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(3100)  # 01:00 fired at 3000; now 01:01:40
            wall.offset -= 3600  # back to 00:01:40: 01:00 comes again, and is not rerun
            await trio.sleep(8000)
            nursery.cancel_scope.cancel()
    assert [(s.started_at, s.fire_time.hour) for s in events.of(Started)] == [
        (3000.0, 1),
        (10200.0, 2),
    ]


async def test_a_backward_jump_never_fires_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 10, tzinfo=UTC))
    p = cron_job("0 1 * * *", wall)
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(100)
            wall.offset -= 3600  # 00:11:40 becomes 23:11:40 of the day before
            await trio.sleep(7000)
            nursery.cancel_scope.cancel()
    [started] = events.of(Started)
    assert started.started_at == 6600.0
    assert wall().replace(microsecond=0) >= started.fire_time


async def test_manual_ticks_of_a_cron_job_carry_the_wall_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 10, tzinfo=UTC))
    p = cron_job("0 2 * * *", wall, mode="manual")
    await nursery.start(p.serve)
    await trio.sleep(5)
    with capture_events(p) as events:
        await sync_tick(p)
    assert events.of(Started)[0].fire_time == dt.datetime(2026, 1, 1, 0, 10, 5, tzinfo=UTC)
    assert events.of(Started)[0].scheduled_at == 5.0


async def test_next_tick_at_estimates_the_next_fire_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 10, tzinfo=UTC))
    p = cron_job("0 1 * * *", wall)
    await nursery.start(p.serve)
    assert p.statistics().next_tick_at == 3000.0


async def test_a_wall_clock_returning_naive_times_is_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(run=noop, cron="0 1 * * *", wall_clock=dt.datetime.now)
    with pytest.raises(TypeError, match="wall_clock must return an aware datetime"):
        await p.serve()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({}, TypeError, "needs a schedule"),
        ({"every": 1, "cron": "* * * * *"}, ValueError, "mutually exclusive"),
        ({"cron": "* * * * *", "delay_mode": "shifted"}, ValueError, "delay_mode does not apply"),
        ({"cron": "* * * * *", "initial_delay": 5}, ValueError, "initial_delay does not apply"),
        ({"every": 1, "tz": "UTC"}, ValueError, "tz applies only to cron"),
        ({"cron": "0 25 * * *"}, ValueError, "'0 25 \\* \\* \\*'"),
        ({"cron": "@often"}, ValueError, "'@often'"),
        (
            {"cron": "0 2 * * *", "tz": "Mars/Olympus"},
            ValueError,
            "unknown time zone 'Mars/Olympus'",
        ),
        ({"cron": 5}, TypeError, "cron must be a crontab spec"),
        ({"cron": "0 2 * * *", "tz": 5}, TypeError, "tz must be an IANA zone name"),
        ({"cron": "0 2 * * *", "wall_clock": "now"}, TypeError, "wall_clock must be None"),
    ],
)
def test_bad_cron_options(options: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Periodic(run=noop, **options)  # type: ignore[arg-type]


def test_cron_jobs_copy_with_their_options() -> None:
    p = Periodic(run=noop, cron="0 2 * * *", tz="Europe/Berlin", name="nightly")
    copy = periodic.testing.manual(p, when=None)
    assert (copy.cron, copy.tz, copy.delay_mode, copy.every) == (
        "0 2 * * *",
        "Europe/Berlin",
        None,
        None,
    )
    assert repr(p) == "Periodic(name='nightly', cron='0 2 * * *', tz='Europe/Berlin', mode='auto')"
    every = periodic.testing.manual(Periodic(run=noop, cron="@every 5s"))
    assert (every.cron, every.initial_delay) == ("@every 5s", None)


_ = functools
