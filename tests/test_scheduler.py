"""The scheduler's timing, overlap, timeout and shutdown rules, in virtual time."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import periodic
from periodic import Periodic
from periodic.events import (
    CancelReason,
    Event,
    Finished,
    Outcome,
    Skipped,
    SkipReason,
    Started,
    StoppedPrevious,
)
from periodic.testing import serve_for


@attrs.define
class Recorder:
    """An instrumented job: records when each run started and ended."""

    duration: float = 0.0
    spans: list[tuple[float, float | None]] = attrs.field(factory=list)

    async def __call__(self) -> str:
        start = trio.current_time()
        self.spans.append((start, None))
        index = len(self.spans) - 1
        try:
            await trio.sleep(self.duration)
        finally:
            self.spans[index] = (start, trio.current_time())
        return "done"

    @property
    def starts(self) -> list[float]:
        return [s for s, _ in self.spans]


def of(kind: type[Any], events: list[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def assert_paired(events: list[Event]) -> None:
    """Every run has exactly one Started, then exactly one Finished."""
    started = [e.run_id for e in of(Started, events)]
    finished = [e.run_id for e in of(Finished, events)]
    assert sorted(started) == sorted(set(started))
    assert sorted(finished) == sorted(started)
    for run_id in started:
        order = [
            type(e) for e in events if isinstance(e, (Started, Finished)) and e.run_id == run_id
        ]
        assert order == [Started, Finished]


# -- regular mode ------------------------------------------------------------------------


async def test_regular_ticks_sit_on_the_grid_even_with_a_slow_job(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    job = Recorder(duration=2.5)
    await serve_for(Periodic(run=job, every=1, job_shutdown=math.inf), 4.5)
    assert job.starts == [1.0, 2.0, 3.0, 4.0]
    assert job.spans == [(1.0, 3.5), (2.0, 4.5), (3.0, 5.5), (4.0, 6.5)]
    assert [e.scheduled_at for e in of(Started, events)] == [1.0, 2.0, 3.0, 4.0]
    assert_paired(events)


async def test_initial_delay_places_the_first_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Recorder()
    await serve_for(Periodic(run=job, every=2, initial_delay=0.5), 5)
    assert job.starts == [0.5, 2.5, 4.5]
    job = Recorder()
    await serve_for(Periodic(run=job, every=2, initial_delay=0), 3)
    assert job.starts == [5.0, 7.0]  # the clock went on from the first serve


async def test_no_drift_accumulates_over_ten_thousand_ticks(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    async def guard() -> bool:
        await trio.sleep(0.01)  # each tick takes time: a sleep-after-tick loop would drift
        return True

    await serve_for(Periodic(run=Recorder(), every=0.1, when=guard), 1000.05)
    started = of(Started, events)
    assert len(started) == 10_000
    assert [s.scheduled_at for s in started] == [0.1 + k * 0.1 for k in range(10_000)]
    assert started[-1].scheduled_at == pytest.approx(1000.0, abs=1e-9)
    assert all(s.started_at - s.scheduled_at == pytest.approx(0.01) for s in started)
    assert not of(Skipped, events)


async def test_missed_ticks_are_coalesced_into_one_skipped_event(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    job = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(Periodic(run=job, every=1, name="late").serve)
        await trio.sleep(2.2)
        autojump_clock.jump(3.5)  # the scheduler oversleeps: now 5.7, ticks 3 and 4 missed
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert job.starts == [1.0, 2.0, 5.7, 6.0]
    assert of(Skipped, events) == [
        Skipped(job="late", reason=SkipReason.MISSED, scheduled_at=3.0, count=2)
    ]
    # The late run stands in for the tick due at 5.0.
    assert [e.scheduled_at for e in of(Started, events)] == [1.0, 2.0, 5.0, 6.0]


async def test_a_slow_guard_makes_ticks_late_and_the_next_one_missed(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    calls: list[float] = []

    async def slow_guard() -> bool:
        calls.append(trio.current_time())
        if len(calls) == 1:
            await trio.sleep(2.5)
        return True

    job = Recorder()
    await serve_for(Periodic(run=job, every=1, when=slow_guard), 4.5)
    assert calls == [1.0, 3.5, 4.0]
    assert job.starts == [3.5, 3.5, 4.0]
    assert [(e.reason, e.scheduled_at, e.count) for e in of(Skipped, events)] == [
        (SkipReason.MISSED, 2.0, 1)
    ]
    assert [e.scheduled_at for e in of(Started, events)] == [1.0, 3.0, 4.0]


# -- shifted mode ------------------------------------------------------------------------


async def test_shifted_ticks_come_every_seconds_after_the_run_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Recorder(duration=0.5)
    await serve_for(Periodic(run=job, every=1, delay_mode="shifted"), 6)
    assert job.spans == [(1.0, 1.5), (2.5, 3.0), (4.0, 4.5), (5.5, 6.0)]


async def test_shifted_mode_goes_on_after_a_guard_says_no(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    verdicts = iter([False, True, False, True])

    async def guard() -> bool:
        await trio.sleep(0.25)
        return next(verdicts)

    job = Recorder(duration=0.5)
    await serve_for(Periodic(run=job, every=1, delay_mode="shifted", when=guard), 6)
    # Tick 1 at 1.0: guard says no at 1.25, next tick due 2.25.
    # Tick 2 at 2.25: guard says yes at 2.5, run 2.5-3.0, next due 4.0.
    # Tick 3 at 4.0: no at 4.25, next 5.25. Tick 4 at 5.25: run 5.5-6.0.
    assert job.spans == [(2.5, 3.0), (5.5, 6.0)]
    assert [e.scheduled_at for e in of(Skipped, events)] == [1.0, 4.0]


async def test_next_tick_at_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[float | None] = []
    job = Periodic(run=Recorder(duration=0.5), every=1, delay_mode="shifted")

    async def during_run() -> None:
        seen.append(job.statistics().next_tick_at)

    assert job.statistics().next_tick_at is None
    async with trio.open_nursery() as nursery:
        await nursery.start(job.serve)
        seen.append(job.statistics().next_tick_at)
        await trio.sleep(1.25)
        await during_run()
        await trio.sleep(0.5)
        await during_run()
        nursery.cancel_scope.cancel()
    assert seen == [1.0, None, 2.5]
    assert job.statistics().next_tick_at is None


# -- guards ------------------------------------------------------------------------------


async def test_guard_false_skips_and_sync_guards_work(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    allowed = iter([True, False, True])
    job = Recorder()
    await serve_for(Periodic(run=job, every=1, when=lambda: next(allowed), name="g"), 3.5)
    assert job.starts == [1.0, 3.0]
    assert of(Skipped, events) == [Skipped(job="g", reason=SkipReason.GUARD, scheduled_at=2.0)]


async def test_guard_error_is_reported_and_the_scheduler_goes_on(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    boom = ValueError("guard broke")
    calls = 0

    def guard() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise boom
        return True

    job = Recorder()
    await serve_for(Periodic(run=job, every=1, when=guard), 3.5)
    assert job.starts == [1.0, 3.0]
    [skip] = of(Skipped, events)
    assert (skip.reason, skip.error, skip.scheduled_at) == (SkipReason.GUARD_ERROR, boom, 2.0)


async def test_a_false_guard_stops_nothing_and_decides_the_skip_reason(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    allowed = iter([True, False])
    job = Recorder(duration=1.5)
    await serve_for(
        Periodic(run=job, every=1, on_overlap="stop_previous", when=lambda: next(allowed)), 2.2
    )
    assert job.spans == [(1.0, 2.5)]  # the run went on to its end during shutdown
    assert not of(StoppedPrevious, events)
    assert [e.reason for e in of(Skipped, events)] == [SkipReason.GUARD]


async def test_an_async_guard_passed_as_a_lambda_is_awaited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def no() -> bool:
        return False

    job = Recorder()
    await serve_for(Periodic(run=job, every=1, when=lambda: no()), 3.5)
    assert job.starts == []


# -- overlap -----------------------------------------------------------------------------


async def test_overlap_run_starts_another_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Recorder(duration=2.5)
    p = Periodic(run=job, every=1, on_overlap="run")
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(3.25)
        assert p.statistics().running == 3
        nursery.cancel_scope.cancel()


async def test_overlap_ignore_skips_while_a_run_is_going(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    job = Recorder(duration=2.5)
    await serve_for(Periodic(run=job, every=1, on_overlap="ignore", name="i"), 5.5)
    assert job.spans == [(1.0, 3.5), (4.0, 6.5)]
    assert of(Skipped, events) == [
        Skipped(job="i", reason=SkipReason.OVERLAP, scheduled_at=2.0),
        Skipped(job="i", reason=SkipReason.OVERLAP, scheduled_at=3.0),
        Skipped(job="i", reason=SkipReason.OVERLAP, scheduled_at=5.0),
    ]


async def test_stop_previous_cancels_and_waits_before_starting(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    spans: list[tuple[float, float]] = []

    async def job() -> None:
        start = trio.current_time()
        try:
            await trio.sleep(10)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.3)  # a slow cleanup while being stopped
            spans.append((start, trio.current_time()))

    await serve_for(Periodic(run=job, every=1, on_overlap="stop_previous", name="s"), 3.1)
    # Run 1 starts at 1.0, is stopped at 2.0 and unwinds until 2.3; run 2 starts at 2.3,
    # is stopped at 3.0 and unwinds until 3.3, while serve is being shut down.
    assert spans[:2] == [(1.0, 2.3), (2.3, 3.3)]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start  # instances never overlap
    kinds = [
        (type(e).__name__, getattr(e, "run_id", None))
        for e in events
        if not isinstance(e, Skipped)
    ]
    assert kinds[:5] == [
        ("Started", 1),
        ("StoppedPrevious", 1),
        ("Finished", 1),
        ("Started", 2),
        ("StoppedPrevious", 2),
    ]
    finished = of(Finished, events)
    assert [(f.outcome, f.cancel_reason) for f in finished[:2]] == [
        (Outcome.CANCELLED, CancelReason.STOP_PREVIOUS),
        (Outcome.CANCELLED, CancelReason.STOP_PREVIOUS),
    ]
    assert finished[0].duration == pytest.approx(1.3)
    assert_paired(events)


async def test_stop_previous_with_a_long_unwind_misses_ticks(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    async def job() -> None:
        try:
            await trio.sleep(10)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1.5)

    await serve_for(Periodic(run=job, every=1, on_overlap="stop_previous"), 6.5)
    # The tick at 2.0 stops run 1, which unwinds until 3.5. By then the tick due 3.0 has
    # come too: 2.0 is reported missed and run 2 starts at 3.5 in place of 3.0 (no run
    # is started only to be stopped at once). The same at 4.0: run 3 starts at 5.5 for
    # 5.0. The tick at 6.0 stops run 3; serve is cancelled during that wait.
    started = of(Started, events)
    assert [(s.scheduled_at, s.started_at) for s in started] == [
        (1.0, 1.0),
        (3.0, 3.5),
        (5.0, 5.5),
    ]
    assert [(s.reason, s.scheduled_at, s.count) for s in of(Skipped, events)] == [
        (SkipReason.MISSED, 2.0, 1),
        (SkipReason.MISSED, 4.0, 1),
    ]
    assert [e.run_id for e in of(StoppedPrevious, events)] == [1, 2, 3]


# -- timeout -----------------------------------------------------------------------------


async def test_timeout_cancels_the_run(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    job = Recorder(duration=10)
    await serve_for(Periodic(run=job, every=5, timeout=1.5, name="t"), 6)
    assert job.spans == [(5.0, 6.5)]
    [finished] = of(Finished, events)
    assert finished == Finished(
        job="t", run_id=1, outcome=Outcome.TIMEOUT, duration=1.5, result=None
    )


async def test_a_run_that_swallows_its_timeout_still_reports_timeout(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    async def job() -> str:
        with trio.move_on_after(100):  # ends at its own deadline or by ours: we cancel it
            with contextlib.suppress(trio.Cancelled):
                await trio.sleep(10)
        return "pretends it finished"

    # The swallowed Cancelled is re-raised at the next checkpoint, which is "return"'s
    # caller: make sure the result is dropped either way.
    await serve_for(Periodic(run=job, every=1, timeout=0.5), 1.75)
    [finished] = of(Finished, events)
    assert (finished.outcome, finished.result, finished.duration) == (Outcome.TIMEOUT, None, 0.5)


async def test_timeout_cancels_the_jobs_own_nursery(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    async def job() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 10)
            nursery.start_soon(trio.sleep, 20)

    await serve_for(Periodic(run=job, every=10, initial_delay=1, timeout=2), 3.5)
    [finished] = of(Finished, events)
    assert (finished.outcome, finished.duration) == (Outcome.TIMEOUT, 2.0)


# -- errors ------------------------------------------------------------------------------


async def test_a_thousand_crashing_runs_do_not_stop_the_scheduler(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    async def job() -> None:
        raise RuntimeError(f"crash {periodic.current_run().run_id}")

    p = Periodic(run=job, every=1)
    await serve_for(p, 1000.5)
    finished = of(Finished, events)
    assert len(finished) == 1000
    assert all(f.outcome is Outcome.ERROR for f in finished)
    assert str(finished[-1].error) == "crash 1000"
    assert p.statistics().finished["error"] == 1000


async def test_an_exception_group_from_the_job_is_an_error(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    async def fail(msg: str) -> None:
        raise ValueError(msg)

    async def job() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, "a")
            nursery.start_soon(fail, "b")

    await serve_for(Periodic(run=job, every=1), 1.5)
    [finished] = of(Finished, events)
    assert finished.outcome is Outcome.ERROR
    assert isinstance(finished.error, Exception)
    assert type(finished.error).__name__ == "ExceptionGroup"
    assert sorted(str(e) for e in finished.error.exceptions) == ["a", "b"]


def test_keyboard_interrupt_is_never_swallowed() -> None:
    seen: list[Event] = []

    async def job() -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(Periodic(run=job, every=1).serve)

    with periodic.subscribe(seen.append), pytest.raises(BaseException) as info:  # noqa: PT011
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert info.group_contains(KeyboardInterrupt, depth=None) or isinstance(
        info.value, KeyboardInterrupt
    )
    [finished] = of(Finished, seen)
    assert finished.outcome is Outcome.CANCELLED
    assert isinstance(finished.error, KeyboardInterrupt)


async def test_the_result_is_in_the_finished_event(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    await serve_for(Periodic(run=Recorder(duration=0.25), every=1, name="r"), 1.5)
    assert of(Finished, events) == [
        Finished(job="r", run_id=1, outcome=Outcome.OK, duration=0.25, result="done")
    ]


# -- shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_shutdown", "serve_ends", "outcome"),
    [(0, 1.5, Outcome.CANCELLED), (2.5, 4.0, Outcome.CANCELLED), (math.inf, 11.0, Outcome.OK)],
)
async def test_job_shutdown_grace(
    autojump_clock: trio.testing.MockClock,
    events: list[Event],
    job_shutdown: float,
    serve_ends: float,
    outcome: Outcome,
) -> None:
    job = Recorder(duration=10)
    await serve_for(Periodic(run=job, every=1, job_shutdown=job_shutdown), 1.5)
    assert trio.current_time() == serve_ends
    assert job.spans == [(1.0, serve_ends)]
    [finished] = of(Finished, events)
    assert finished.outcome is outcome
    expected_reason = CancelReason.SHUTDOWN if outcome is Outcome.CANCELLED else None
    assert finished.cancel_reason == expected_reason


async def test_runs_that_end_within_the_grace_finish_ok(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    job = Recorder(duration=1.25)
    await serve_for(Periodic(run=job, every=1, job_shutdown=5), 1.5)
    assert trio.current_time() == 2.25
    assert [f.outcome for f in of(Finished, events)] == [Outcome.OK]


async def test_no_ticks_after_shutdown_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Recorder(duration=3)
    await serve_for(Periodic(run=job, every=1, job_shutdown=10), 1.5)
    assert job.starts == [1.0]
    assert trio.current_time() == 4.0


# -- serving -----------------------------------------------------------------------------


async def test_serving_twice_at_once_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    p = Periodic(run=Recorder(), every=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        with pytest.raises(RuntimeError, match="already being served"):
            await p.serve()
        nursery.cancel_scope.cancel()


async def test_served_again_after_serve_returned(
    autojump_clock: trio.testing.MockClock, events: list[Event]
) -> None:
    job = Recorder()
    p = Periodic(run=job, every=1)
    await serve_for(p, 2.5)
    await serve_for(p, 1.5)
    assert job.starts == [1.0, 2.0, 3.5]
    assert [e.run_id for e in of(Started, events)] == [1, 2, 3]
    assert p.statistics().runs_started == 3


async def test_serve_returns_when_the_nursery_is_cancelled_during_a_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def guard() -> bool:
        await trio.sleep(100)
        return True

    await serve_for(Periodic(run=Recorder(), every=1, when=guard), 2)
    assert trio.current_time() == 2.0


async def test_statistics_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes = iter(["ok", "error", "ok"])

    async def job() -> None:
        if next(outcomes) == "error":
            raise ValueError

    p = Periodic(run=job, every=1, when=lambda: trio.current_time() != 4.0)
    await serve_for(p, 4.5)
    stats = p.statistics()
    assert stats.runs_started == 3
    assert stats.running == 0
    assert dict(stats.finished) == {"ok": 2, "error": 1, "timeout": 0, "cancelled": 0}
    assert dict(stats.skipped) == {
        "overlap": 0,
        "guard": 1,
        "guard_error": 0,
        "missed": 0,
        "not_leader": 0,
    }
    with pytest.raises(TypeError):
        stats.finished["ok"] = 5  # type: ignore[index]


# -- current_run -------------------------------------------------------------------------


async def test_current_run_inside_a_run_and_its_child_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[periodic.RunInfo] = []

    async def child() -> None:
        seen.append(periodic.current_run())

    async def job() -> None:
        await trio.sleep(0.5)
        seen.append(periodic.current_run())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    await serve_for(Periodic(run=job, every=2, name="cr"), 4.75)
    first = periodic.RunInfo(job="cr", run_id=1, scheduled_at=2.0, started_at=2.0)
    second = periodic.RunInfo(job="cr", run_id=2, scheduled_at=4.0, started_at=4.0)
    assert seen == [first, first, second, second]


def test_current_run_outside_a_run_raises() -> None:
    with pytest.raises(RuntimeError, match="outside a run"):
        periodic.current_run()


# -- events ------------------------------------------------------------------------------


async def test_a_handler_that_raises_disturbs_nothing(
    autojump_clock: trio.testing.MockClock,
    events: list[Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    after: list[Event] = []

    def bad(event: Event) -> None:
        raise RuntimeError("handler bug")

    job = Recorder()
    with periodic.subscribe(bad), periodic.subscribe(after.append):
        await serve_for(Periodic(run=job, every=1), 2.5)
    assert job.starts == [1.0, 2.0]
    assert len(after) == 4
    assert after == events
    assert any("handler bug" in r.exc_text for r in caplog.records if r.exc_text)


async def test_subscription_filters_by_job_name_or_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Periodic(run=Recorder(), every=1, name="a")
    b = Periodic(run=Recorder(), every=1, name="b")
    by_name: list[Event] = []
    by_instance: list[Event] = []
    with (
        periodic.subscribe(by_name.append, job="a"),
        periodic.subscribe(by_instance.append, job=b),
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()
    assert [e.job for e in by_name] == ["a", "a"]
    assert [e.job for e in by_instance] == ["b", "b"]


def test_subscriptions_close_once_and_are_removed() -> None:
    seen: list[Event] = []
    sub = periodic.subscribe(seen.append)
    assert not sub.closed
    sub.close()
    sub.close()
    assert sub.closed
    assert "closed" in repr(sub)


def test_subscribe_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="handler must be callable"):
        periodic.subscribe(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="job must be a job name"):
        periodic.subscribe(print, job=3)  # type: ignore[arg-type]


async def test_a_handler_may_unsubscribe_while_being_called(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Event] = []

    def once(event: Event) -> None:
        seen.append(event)
        sub.close()

    sub = periodic.subscribe(once)
    await serve_for(Periodic(run=Recorder(), every=1), 2.5)
    assert len(seen) == 1


Job = Callable[[], Awaitable[None]]
