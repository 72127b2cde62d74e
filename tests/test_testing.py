"""periodic.testing: manual ticks, sync_tick, event capture, serve_for."""

from __future__ import annotations

import functools
import math

import pytest
import trio
import trio.testing

import periodic
from periodic import Mode, Periodic
from periodic.events import Finished, Outcome, Skipped, SkipReason, Started, StoppedPrevious
from periodic.exceptions import JobNotStarted, NotInManualMode, PeriodicError
from periodic.testing import capture_events, manual, serve_for, sync_tick, tick


async def sleeper(seconds: float) -> str:
    await trio.sleep(seconds)
    return f"slept {seconds}"


def manual_job(**options: object) -> Periodic:
    options.setdefault("run", functools.partial(sleeper, 1))
    options.setdefault("every", 60)
    options.setdefault("name", "m")
    return Periodic(mode="manual", **options)  # type: ignore[arg-type]


async def test_manual_mode_never_ticks_by_itself(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job()
    with capture_events(job) as events:
        await nursery.start(job.serve)
        await trio.sleep(10_000)
    assert list(events) == []
    assert job.statistics().next_tick_at is None


async def test_tick_starts_a_run_due_now_and_returns_its_id(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job()
    await nursery.start(job.serve)
    await trio.sleep(7.5)
    with capture_events(job) as events:
        assert await tick(job) == 1
        assert await tick(job) == 2  # on_overlap="run": a second instance
        started = await events.wait_for(Started, run_id=2)
    assert trio.current_time() == 7.5
    assert (started.scheduled_at, started.started_at) == (7.5, 7.5)


async def test_tick_returns_none_when_no_run_started(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job(when=lambda: False)
    await nursery.start(job.serve)
    with capture_events(job) as events:
        assert await tick(job) is None
    events.assert_emitted(Skipped, reason="guard")


async def test_sync_tick_returns_the_finished_event(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job()
    await nursery.start(job.serve)
    finished = await sync_tick(job)
    assert finished == Finished(
        job="m", run_id=1, outcome=Outcome.OK, duration=1.0, result="slept 1"
    )
    assert trio.current_time() == 1.0


async def test_sync_tick_returns_an_error_outcome(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    boom = ValueError("boom")

    async def fail() -> None:
        raise boom

    job = manual_job(run=fail)
    await nursery.start(job.serve)
    finished = await sync_tick(job)
    assert (finished.outcome, finished.error) == (Outcome.ERROR, boom)


async def test_sync_tick_returns_a_timeout_outcome(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job(run=functools.partial(sleeper, 100), timeout=2.5)
    await nursery.start(job.serve)
    finished = await sync_tick(job)
    assert (finished.outcome, finished.duration) == (Outcome.TIMEOUT, 2.5)


async def test_sync_tick_returns_a_cancelled_outcome(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job(run=functools.partial(sleeper, 100), on_overlap="stop_previous")
    await nursery.start(job.serve)
    results: list[Finished] = []

    async def first() -> None:
        results.append(await sync_tick(job, timeout=50))

    nursery.start_soon(first)
    await trio.sleep(3)
    assert await tick(job) == 2  # stops run 1, which sync_tick is waiting for
    await trio.sleep(0)
    assert results[0].outcome is Outcome.CANCELLED
    assert results[0].cancel_reason == "stop_previous"
    assert trio.current_time() == 3.0


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"when": lambda: False}, SkipReason.GUARD),
        ({"when": lambda: 1 / 0}, SkipReason.GUARD_ERROR),
    ],
)
async def test_sync_tick_raises_job_not_started_with_the_reason(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    options: dict[str, object],
    reason: SkipReason,
) -> None:
    job = manual_job(**options)
    await nursery.start(job.serve)
    with pytest.raises(JobNotStarted) as info:
        await sync_tick(job)
    assert info.value.reason is reason
    assert info.value.event.reason is reason
    assert isinstance(info.value, PeriodicError)
    assert str(reason) in str(info.value)


async def test_sync_tick_raises_job_not_started_on_overlap(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job(run=functools.partial(sleeper, 10), on_overlap="ignore")
    await nursery.start(job.serve)
    await tick(job)
    with pytest.raises(JobNotStarted) as info:
        await sync_tick(job)
    assert info.value.reason == "overlap"


async def test_sync_tick_too_slow_leaves_the_run_alone(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job(run=functools.partial(sleeper, 10))
    await nursery.start(job.serve)
    with capture_events(job) as events:
        with pytest.raises(trio.TooSlowError):
            await sync_tick(job, timeout=2)
        assert trio.current_time() == 2.0
        assert job.statistics().running == 1
        finished = await events.wait_for(Finished, run_id=1)
    assert (finished.outcome, trio.current_time()) == (Outcome.OK, 10.0)


async def test_sync_tick_counts_a_slow_guard_in_its_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def slow_guard() -> bool:
        await trio.sleep(3)
        return True

    job = manual_job(when=slow_guard)
    await nursery.start(job.serve)
    with pytest.raises(trio.TooSlowError):
        await sync_tick(job, timeout=2)


@pytest.mark.parametrize("timeout", [0, -1, math.nan, "5", True])
async def test_sync_tick_checks_its_timeout(timeout: object) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        await sync_tick(manual_job(), timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", [tick, sync_tick])
async def test_auto_mode_is_refused(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, fn: object
) -> None:
    job = Periodic(run=functools.partial(sleeper, 1), every=60)
    await nursery.start(job.serve)
    with pytest.raises(NotInManualMode, match="auto mode"):
        await fn(job)  # type: ignore[operator]


@pytest.mark.parametrize("fn", [tick, sync_tick])
async def test_a_scheduler_not_served_is_refused_at_once(fn: object) -> None:
    with pytest.raises(RuntimeError, match="not being served"):
        await fn(manual_job())  # type: ignore[operator]


async def test_a_scheduler_served_then_stopped_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = manual_job()
    async with trio.open_nursery() as nursery:
        await nursery.start(job.serve)
        assert await tick(job) == 1
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="not being served"):
        await tick(job)


async def test_manual_ticks_apply_stop_previous(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job(run=functools.partial(sleeper, 10), on_overlap="stop_previous")
    await nursery.start(job.serve)
    with capture_events(job) as events:
        await tick(job)
        await trio.sleep(1)
        await tick(job)
        await events.wait_for(Started, run_id=2)
    assert [type(e) for e in events] == [Started, StoppedPrevious, Finished, Started]


# -- manual() ----------------------------------------------------------------------------


def test_manual_makes_a_manual_copy_with_changes() -> None:
    prod = Periodic(run=functools.partial(sleeper, 1), every=60, when=lambda: False, name="prod")
    copy = manual(prod, when=None, timeout=5)
    assert (copy.mode, copy.when, copy.timeout, copy.name, copy.every) == (
        Mode.MANUAL,
        None,
        5.0,
        "prod",
        60.0,
    )
    assert prod.mode is Mode.AUTO
    assert copy is not prod
    with pytest.raises(ValueError, match="timeout must be"):
        manual(prod, timeout=-1)


# -- capture_events ----------------------------------------------------------------------


async def test_capture_events_is_a_live_list_with_helpers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Periodic(run=functools.partial(sleeper, 0.5), every=1, name="c")
    other = Periodic(run=functools.partial(sleeper, 0.5), every=1, name="other")
    with capture_events(job) as mine, capture_events() as everything:
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)
            await nursery.start(other.serve)
            await trio.sleep(1.75)
            assert len(mine) == 2  # live: Started and Finished of run 1
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert len(mine) == 4
    assert len(everything) == 8
    assert {e.job for e in mine} == {"c"}
    assert mine[0] == Started(job="c", run_id=1, scheduled_at=1.0, started_at=1.0)
    assert mine[-2:] == list(mine)[-2:]
    assert [e.run_id for e in mine.of("finished")] == [1, 2]
    assert mine.of(Finished) == mine.of("finished")
    assert mine.find(Finished, outcome="ok", run_id=2) == [mine[3]]
    assert mine.assert_emitted("finished", outcome=Outcome.OK) is mine[1]
    mine.assert_not_emitted("skipped")
    mine.assert_not_emitted(Finished, outcome="error")
    assert mine == list(mine)
    assert mine != everything
    assert "Started(job='c'" in repr(mine)


def test_assertion_messages_list_what_was_captured() -> None:
    with capture_events() as events:
        pass
    with pytest.raises(AssertionError, match=r"(?s)no Finished event with outcome='ok'.*nothing"):
        events.assert_emitted(Finished, outcome="ok")
    events._append(Skipped(job="x", reason=SkipReason.GUARD, scheduled_at=1.0))
    with pytest.raises(AssertionError, match=r"(?s)1 Skipped event\(s\).*0: Skipped\(job='x'"):
        events.assert_not_emitted("skipped", reason="guard")


def test_unknown_kinds_and_fields_are_errors() -> None:
    with capture_events() as events:
        pass
    with pytest.raises(ValueError, match="unknown event kind 'begun'"):
        events.of("begun")
    with pytest.raises(ValueError, match="not a periodic event class"):
        events.of(int)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="Finished has no field outcom"):
        events.find(Finished, outcom="ok")


async def test_wait_for_returns_an_event_already_captured(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job()
    await nursery.start(job.serve)
    with capture_events(job) as events:
        await sync_tick(job)
        before = trio.current_time()
        finished = await events.wait_for("finished")
        assert trio.current_time() == before  # returned at once (after a checkpoint)
    assert finished.run_id == 1


def test_capture_stops_when_the_block_ends() -> None:
    with capture_events() as events:
        pass
    periodic_subscriptions = len(periodic._events._bus.subscriptions)
    with capture_events():
        assert len(periodic._events._bus.subscriptions) == periodic_subscriptions + 1
    assert len(periodic._events._bus.subscriptions) == periodic_subscriptions
    assert len(events) == 0


# -- serve_for ---------------------------------------------------------------------------


async def test_serve_for_runs_an_hour_of_a_one_minute_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Periodic(run=functools.partial(sleeper, 5), every=60, name="hourly")
    events = await serve_for(job, 3600 + 30)
    assert [e.started_at for e in events.of(Started)] == [60.0 * k for k in range(1, 61)]
    assert [e.outcome for e in events.of(Finished)] == [Outcome.OK] * 60
    assert trio.current_time() == 3630.0


async def test_serve_for_includes_the_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Periodic(run=functools.partial(sleeper, 10), every=2, job_shutdown=1)
    events = await serve_for(job, 3)
    [finished] = events.of(Finished)
    assert (finished.outcome, finished.cancel_reason) == (Outcome.CANCELLED, "shutdown")
    assert trio.current_time() == 4.0


@pytest.mark.parametrize(
    ("seconds", "error"), [(-1, ValueError), (math.inf, ValueError), ("1", TypeError)]
)
async def test_serve_for_checks_seconds(seconds: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="seconds must be"):
        await serve_for(manual_job(), seconds)  # type: ignore[arg-type]


async def test_serve_for_refuses_a_job_already_served(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    job = manual_job()
    await nursery.start(job.serve)
    with pytest.raises(RuntimeError, match="already being served"):
        await serve_for(job, 1)
