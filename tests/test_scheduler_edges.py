"""Edge cases found in review: no hang, no stale runs, no starved threads, no lost filters."""

from __future__ import annotations

import datetime as dt
import functools
import threading

import pytest
import trio
import trio.testing

import periodic
from periodic import Periodic
from periodic.events import Event, Finished, Outcome, Skipped, SkipReason, Started
from periodic.testing import capture_events, manual, serve_for, tick

UTC = dt.timezone.utc


async def sleeper(seconds: float) -> None:
    await trio.sleep(seconds)


class Boom(BaseException):
    """Like pytest's Failed: not an Exception."""


async def test_a_handler_raising_a_base_exception_on_started_does_not_hang_serve(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def handler(event: Event) -> None:
        if isinstance(event, Started) and event.run_id == 2:
            raise Boom

    job = Periodic(run=functools.partial(sleeper, 1), every=10, name="b")
    seen: list[Event] = []
    with (
        periodic.subscribe(handler, job=job),
        periodic.subscribe(seen.append, job=job),
        pytest.raises(BaseException) as info,  # noqa: PT011 - a group, checked below
    ):
        with trio.fail_after(100):
            await serve_for(job, 25)
    assert info.group_contains(Boom, depth=None)
    finished = [e for e in seen if isinstance(e, Finished)]
    assert [(f.run_id, f.outcome) for f in finished] == [(1, Outcome.OK), (2, Outcome.CANCELLED)]
    assert job.statistics().running == 0


async def test_statistics_agree_right_after_a_tick(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual(Periodic(run=functools.partial(sleeper, 1), every=10))
    await nursery.start(job.serve)
    await tick(job)
    stats = job.statistics()
    assert (stats.runs_started, stats.running) == (1, 1)


async def test_stop_previous_does_not_announce_stopping_a_run_that_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_to_unwind() -> None:
        try:
            await trio.sleep(10)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)

    job = Periodic(run=slow_to_unwind, every=1, timeout=0.5, on_overlap="stop_previous")
    events = await serve_for(job, 1.75)
    # Run 1 timed out at 1.5 and unwinds until 2.5; the tick at 2.0 waits for it but
    # has nothing to stop.
    assert events.of("stopped_previous") == []
    assert events.of(Finished)[0].outcome is Outcome.TIMEOUT


async def test_a_sync_job_has_threads_of_its_own(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    release = threading.Event()

    def stuck() -> None:
        release.wait(10)

    job = Periodic(run=stuck, every=1, job_shutdown=0)
    try:
        await nursery.start(job.serve)
        while job.statistics().running < 45:  # more than Trio's default 40 threads
            await trio.sleep(1)
        # The rest of the program still gets a worker thread at once.
        assert await trio.to_thread.run_sync(lambda: "free") == "free"
    finally:
        release.set()


async def test_a_filter_on_a_job_sees_its_manual_copies(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    prod = Periodic(run=functools.partial(sleeper, 0), every=60, name="prod")
    copy = manual(manual(prod))
    await nursery.start(copy.serve)
    with capture_events(prod) as events:
        await periodic.testing.sync_tick(copy)
    assert [type(e) for e in events] == [Started, Finished]


class FakeWall:
    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.offset = 0.0

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=trio.current_time() + self.offset)


async def test_a_cron_stop_previous_wait_applies_the_missed_rule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pytest.importorskip("cronsim")

    async def slow_to_unwind() -> None:
        try:
            await trio.sleep(1000)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(90)

    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    job = Periodic(
        run=slow_to_unwind, cron="* * * * *", on_overlap="stop_previous", wall_clock=wall
    )
    events = await serve_for(job, 200)
    # Run 1 fires at 00:01 (t=30). The tick at 00:02 (t=90) stops it; it unwinds until
    # t=180 (00:03:30): 00:02 and 00:03 are missed, run 2 starts for 00:03.
    started = events.of(Started)
    assert [(s.started_at, s.fire_time.minute) for s in started][:2] == [(30.0, 1), (180.0, 3)]
    [missed] = events.find(Skipped, reason=SkipReason.MISSED)
    assert missed.count == 1
    assert missed.scheduled_at == 90.0


async def test_a_huge_wall_clock_jump_ticks_once_for_the_latest_fire_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pytest.importorskip("cronsim")
    wall = FakeWall(dt.datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC))
    job = Periodic(run=functools.partial(sleeper, 0), cron="* * * * * *", wall_clock=wall)
    with capture_events(job) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)
            await trio.sleep(0.25)
            wall.offset += 2 * 86400  # two days later, all at once
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()
    # Woken at t=0.5 for 00:00:01 of day 1: the wall clock says day 3. One Skipped (its
    # count capped) and one run, for the latest fire time; then the next second's.
    started = events.of(Started)
    assert [(s.started_at, s.fire_time) for s in started] == [
        (0.5, dt.datetime(2026, 1, 3, 0, 0, 1, tzinfo=UTC)),
        (1.5, dt.datetime(2026, 1, 3, 0, 0, 2, tzinfo=UTC)),
    ]
    missed = events.find(Skipped, reason=SkipReason.MISSED)
    assert [m.count for m in missed] == [10_000]
