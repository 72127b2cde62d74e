"""Periodic(jitter=...): each tick delayed by its own random offset, the grid kept."""

from __future__ import annotations

import datetime
import random
from typing import Any

import pytest
import trio
import trio.testing

from periodic import Periodic
from periodic.events import Skipped, SkipReason, Started
from periodic.testing import capture_events, serve_for

UTC = datetime.timezone.utc


async def nothing() -> None:
    pass


def offsets(seed: int, jitter: float, n: int) -> list[float]:
    """The offsets a job with ``jitter_rng=random.Random(seed)`` draws, in order."""
    rng = random.Random(seed)
    return [rng.random() * jitter for _ in range(n)]


async def test_regular_ticks_are_delayed_by_their_own_offset_and_the_grid_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(run=nothing, every=10, jitter=4, jitter_rng=random.Random(7), name="j")
    events = await serve_for(p, 55)
    expected = offsets(7, 4, 5)
    started = events.of(Started)
    assert [s.scheduled_at for s in started] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert [s.started_at for s in started] == [
        10 * k + o for k, o in zip(range(1, 6), expected, strict=True)
    ]


async def test_the_next_tick_at_is_the_jittered_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    p = Periodic(run=nothing, every=10, jitter=4, jitter_rng=random.Random(3), name="j")
    await nursery.start(p.serve)
    first, second = offsets(3, 4, 2)
    assert p.statistics().next_tick_at == 10 + first
    await trio.sleep_until(10 + first + 0.001)  # just after the first tick
    assert p.statistics().next_tick_at == 20 + second


async def test_shifted_pauses_get_an_offset_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def half() -> None:
        await trio.sleep(0.5)

    p = Periodic(
        run=half,
        every=10,
        delay_mode="shifted",
        jitter=2,
        jitter_rng=random.Random(11),
        name="s",
    )
    events = await serve_for(p, 36)
    a, b, c = offsets(11, 2, 3)
    started = events.of(Started)
    assert [s.started_at for s in started] == [
        10 + a,
        10 + a + 0.5 + 10 + b,
        pytest.approx(10 + a + 0.5 + 10 + b + 0.5 + 10 + c),
    ]
    # scheduled_at is the un-jittered due time: the end of the last run + every.
    assert [s.scheduled_at for s in started][:2] == [10.0, 10 + a + 0.5 + 10]


async def test_cron_fire_times_are_delayed_and_fire_time_stays_the_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

    def wall() -> datetime.datetime:
        return start + datetime.timedelta(seconds=trio.current_time())

    p = Periodic(
        run=nothing,
        cron="* * * * *",
        wall_clock=wall,
        jitter=30,
        jitter_rng=random.Random(5),
        name="c",
    )
    events = await serve_for(p, 235)
    first, second, third = offsets(5, 30, 3)
    started = events.of(Started)
    # (to the microsecond: wall-clock times are datetimes)
    assert [s.started_at for s in started] == [
        pytest.approx(t, abs=1e-6) for t in (60 + first, 120 + second, 180 + third)
    ]
    assert [s.scheduled_at for s in started] == [
        pytest.approx(t, abs=1e-6) for t in (60, 120, 180)
    ]
    assert [s.fire_time for s in started] == [
        start + datetime.timedelta(minutes=m) for m in (1, 2, 3)
    ]


async def test_the_missed_tick_rule_judges_the_unjittered_due_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The tick due at 10 is jittered to 11.21; a blocked loop serves it only at 21:
    # 11 s after its due time (missed, the tick stands for the one due at 20), although
    # only 9.8 s after its jittered time.
    [offset] = offsets(1, 9, 1)
    assert round(offset, 2) == 1.21
    p = Periodic(run=nothing, every=10, jitter=9, jitter_rng=random.Random(1), name="m")
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(9)
            autojump_clock.jump(12)  # time passes without anyone running: now 21
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    skipped = events.of(Skipped)
    assert skipped == [Skipped(job="m", reason=SkipReason.MISSED, scheduled_at=10.0, count=1)]
    [started] = events.of(Started)
    assert (started.scheduled_at, started.started_at) == (20.0, 21.0)


async def test_each_job_draws_from_its_own_generator_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Periodic(run=nothing, every=10, jitter=9, name="a")
    b = Periodic(run=nothing, every=10, jitter=9, name="b")
    assert a._rng is not b._rng
    assert Periodic(run=nothing, every=10, name="c")._rng is None  # none without jitter


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"every": 10, "jitter": 10}, ValueError, "jitter must be less than the interval"),
        ({"every": 10, "jitter": -1}, ValueError, "jitter must be a finite number"),
        ({"every": 10, "jitter": float("inf")}, ValueError, "jitter must be a finite"),
        ({"every": 10, "jitter": "x"}, ValueError, "jitter: "),
        ({"every": 10, "jitter": [1]}, TypeError, "jitter must be"),
        ({"cron": "@every 1m", "jitter": 60}, ValueError, "less than the interval"),
        ({"cron": "0 * * * *", "jitter": 3600.5}, ValueError, "at most 3600 s"),
        ({"every": 10, "jitter": 1, "jitter_rng": 42}, TypeError, "jitter_rng must be"),
    ],
)
def test_bad_jitter_is_refused(options: dict[str, Any], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        Periodic(run=nothing, **options)


def test_jitter_accepts_durations() -> None:
    assert Periodic(run=nothing, every=60, jitter="5s").jitter == 5.0
    assert Periodic(run=nothing, every=60, jitter=datetime.timedelta(seconds=2)).jitter == 2.0
    assert Periodic(run=nothing, cron="0 * * * *", jitter=3600).jitter == 3600.0
