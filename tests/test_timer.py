"""The one timer of a trio.run that every scheduler shares, in virtual time."""

from __future__ import annotations

import contextvars
import gc
import logging
import math
import threading
import tracemalloc

import attrs
import pytest
import trio
import trio.testing

import periodic
from periodic import Periodic
from periodic._timer import Alarm, current_timer
from periodic.events import Event, Finished, Skipped, SkipReason, Started
from periodic.testing import LocalPeer, capture_events


async def nothing() -> None:
    pass


def ticking(ticks: list[tuple[float, str]], name: str) -> Periodic:
    """A job that notes each of its ticks, in the order the timer makes them."""

    def guard() -> bool:
        ticks.append((trio.current_time(), name))
        return True

    return Periodic(run=nothing, every=1, when=guard, name=name)


async def test_jobs_due_together_tick_in_the_order_they_were_served(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, events: list[Event]
) -> None:
    # (Their runs' tasks then start in whatever order Trio schedules them.)
    names = [f"job-{i}" for i in (3, 1, 4, 0, 2)]
    ticks: list[tuple[float, str]] = []
    for name in names:
        await nursery.start(ticking(ticks, name).serve)
    await trio.sleep(3.5)
    assert ticks == [(float(t), name) for t in (1, 2, 3) for name in names]
    started = sorted((e.started_at, e.job) for e in events if isinstance(e, Started))
    assert started == sorted(ticks)


async def test_jobs_of_different_periods_interleave_exactly(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, events: list[Event]
) -> None:
    ticks: list[tuple[float, str]] = []
    for name, every, first in (("two", 2, 2), ("three", 3, 3), ("fast", 0.75, 5)):
        job = attrs.evolve(ticking(ticks, name), every=every, initial_delay=first)
        await nursery.start(job.serve)
    await trio.sleep(7)
    assert sorted((e.started_at, e.job) for e in events if isinstance(e, Started)) == sorted(ticks)
    # Due together, alarms fire in the order they were armed: "three" armed its 6.0 at
    # 3.0, "two" at 4.0.
    assert ticks == [
        (2.0, "two"),
        (3.0, "three"),
        (4.0, "two"),
        (5.0, "fast"),
        (5.75, "fast"),
        (6.0, "three"),
        (6.0, "two"),
        (6.5, "fast"),
    ]


async def test_a_job_that_stops_serving_leaves_the_timer_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    timer = current_timer()
    await nursery.start(Periodic(run=nothing, every=1000, name="stays").serve)
    assert len(timer) == 1
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(Periodic(run=nothing, every=1000, name="goes").serve)
            assert len(timer) == 2
            scope.cancel()
    assert len(timer) == 1


async def test_serving_and_stopping_often_keeps_the_heap_and_memory_flat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = current_timer()
    job = Periodic(run=nothing, every=3600, name="churn")

    async def cycles(n: int) -> None:
        for _ in range(n):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(job.serve)
                    scope.cancel()

    await cycles(2_000)  # warm up: caches, free lists, a first sweep of the heap
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await cycles(10_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(timer) == 0
    assert timer.heap_size < 200  # stale entries are swept as they pile up
    # What varies is the stale entries awaiting a sweep (under 200 of them); anything
    # kept per cycle, even a small int, would be 280 000 bytes.
    assert grown < 64_000


async def test_alarms_armed_and_disarmed_100_000_times_leave_no_trace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = current_timer()
    fired: list[int] = []
    alarms = [
        Alarm(contextvars.copy_context(), lambda i=i: fired.append(i), print) for i in range(10)
    ]
    for k in range(100_000):
        alarm = alarms[k % 10]
        alarm.arm(3600.0 + k)
        if k % 3:
            alarm.disarm()
    assert timer.heap_size < 200
    await trio.sleep(3600 + 100_000)
    # Each alarm fires for its last arming only, unless that was disarmed.
    assert sorted(fired) == sorted(i for i in range(10) if (99_990 + i) % 3 == 0)


async def test_a_callback_that_raises_is_handed_to_its_owner_and_others_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[BaseException] = []
    fired: list[float] = []

    def boom() -> None:
        raise KeyError("boom")

    context = contextvars.copy_context()
    Alarm(context, boom, errors.append).arm(1)
    Alarm(context, lambda: fired.append(trio.current_time()), errors.append).arm(1)
    Alarm(context, lambda: fired.append(trio.current_time()), errors.append).arm(2)
    await trio.sleep(3)
    assert [type(e) for e in errors] == [KeyError]
    assert fired == [1.0, 2.0]


async def test_an_earlier_alarm_wakes_the_sleeping_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    context = contextvars.copy_context()

    def note(what: str) -> None:
        fired.append((what, trio.current_time()))

    Alarm(context, lambda: note("late"), print).arm(100)
    await trio.sleep(1)  # the timer sleeps until 100 now
    Alarm(context, lambda: note("early"), print).arm(5)
    await trio.sleep(200)
    assert fired == [("early", 5.0), ("late", 100.0)]


async def test_a_blocked_guard_of_one_job_never_delays_another_jobs_ticks(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, events: list[Event]
) -> None:
    async def slow_guard() -> bool:
        await trio.sleep(10)
        return True

    await nursery.start(Periodic(run=nothing, every=1, when=slow_guard, name="slow").serve)
    await nursery.start(Periodic(run=nothing, every=1, name="quick").serve)
    await trio.sleep(12.5)
    quick = [e.started_at for e in events if isinstance(e, Started) and e.job == "quick"]
    slow = [e.started_at for e in events if isinstance(e, Started) and e.job == "slow"]
    assert quick == [float(t) for t in range(1, 13)]
    assert slow == [11.0]  # its first guard took 10 s: the tick due at 1 ran at 11


async def test_a_stop_previous_wait_never_delays_another_jobs_ticks(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, events: list[Event]
) -> None:
    async def unwinds_slowly() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(2.5)

    await nursery.start(
        Periodic(run=unwinds_slowly, every=1, on_overlap="stop_previous", name="stopper").serve
    )
    await nursery.start(Periodic(run=nothing, every=1, name="quick").serve)
    await trio.sleep(6.5)
    quick = [e.started_at for e in events if isinstance(e, Started) and e.job == "quick"]
    assert quick == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    stopper = [
        (e.scheduled_at, e.started_at)
        for e in events
        if isinstance(e, Started) and e.job == "stopper"
    ]
    # Tick 2 waits 2.5 s for run 1; ticks 3 and 4 were missed meanwhile.
    assert stopper == [(1.0, 1.0), (4.0, 4.5)]


def test_two_runs_in_a_row_never_share_a_timer() -> None:
    timers = []

    async def main() -> None:
        timers.append(current_timer())
        events = await periodic.testing.serve_for(Periodic(run=nothing, every=1), 2.5)
        assert len(events.of(Finished)) == 2

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert timers[0] is not timers[1]


def test_runs_in_two_threads_never_share_a_timer() -> None:
    results: dict[str, list[float]] = {}
    timers: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def thread(name: str, every: float) -> None:
        async def main() -> None:
            timers[name] = current_timer()
            await trio.to_thread.run_sync(barrier.wait)  # both runs are up together
            events = await periodic.testing.serve_for(
                Periodic(run=nothing, every=every, name=name), 10.5
            )
            results[name] = [e.started_at for e in events.of(Started)]

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    threads = [
        threading.Thread(target=thread, args=("a", 2.0)),
        threading.Thread(target=thread, args=("b", 5.0)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert timers["a"] is not timers["b"]
    assert results == {"a": [2.0, 4.0, 6.0, 8.0, 10.0], "b": [5.0, 10.0]}


async def test_runs_see_the_context_of_the_task_that_served_the_job(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    request = contextvars.ContextVar("request", default="none")
    seen: list[str] = []

    async def job() -> None:
        seen.append(request.get())

    async def serve_with(value: str, task_status: trio.TaskStatus[None]) -> None:
        request.set(value)
        await Periodic(run=job, every=1, name=value).serve(task_status=task_status)

    await nursery.start(serve_with, "a")
    await nursery.start(serve_with, "b")
    await trio.sleep(2.5)
    assert sorted(seen) == ["a", "a", "b", "b"]
    assert request.get() == "none"


class Stop(BaseException):
    pass


async def test_a_guard_that_raises_a_base_exception_ends_serve_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def guard() -> bool:
        if trio.current_time() >= 2:
            raise Stop
        return True

    job = Periodic(run=nothing, every=1, when=guard, name="stops")
    with capture_events(job) as events, pytest.RaisesGroup(Stop, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)
            await trio.sleep(10)
    assert trio.current_time() == 2.0
    assert [type(e) for e in events] == [Started, Finished]
    assert not job.serving


async def test_statistics_name_every_outcome_and_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Periodic(run=nothing, every=1, when=lambda: trio.current_time() < 2, name="s")
    await periodic.testing.serve_for(job, 3.5)
    stats = job.statistics()
    assert dict(stats.finished) == {"ok": 1, "error": 0, "timeout": 0, "cancelled": 0}
    assert dict(stats.skipped) == {
        r.value: (2 if r is SkipReason.GUARD else 0)
        for r in SkipReason
        # (a job with a store's; paused: once the job was paused)
        if r not in (SkipReason.CLAIMED, SkipReason.STORE_ERROR, SkipReason.PAUSED)
    }


async def test_a_stopping_peer_is_not_warned_about_by_its_jobs_run(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The peer stops at once while the job's run gets its shutdown grace: the job's
    # leadership watch sees the change, and must not ask the stopped peer as if it had
    # never been served.
    caplog.set_level(logging.DEBUG, logger="periodic")
    peer = LocalPeer()
    job = Periodic(
        run=lambda: trio.sleep(math.inf), every=1, peer=peer, job_shutdown=2, name="graceful"
    )
    with capture_events(job) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await nursery.start(job.serve)
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()
    assert "not being served" not in caplog.text
    finished = events.of(Finished)
    assert [(f.outcome, f.cancel_reason) for f in finished] == [("cancelled", "leadership_lost")]
    assert isinstance(events[-1], Finished)
    assert not [e for e in events if isinstance(e, Skipped)]


async def test_a_tick_that_raises_as_serve_is_cancelled_comes_out_of_serve_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A late tick reports its missed ticks, a handler of that event cancels serve, and
    # then the guard raises: serve, already on its way out, raises the guard's error (it
    # is not lost), and a later serve of the same job does not raise it again.
    boom = True

    def guard() -> bool:
        if boom:
            raise Stop
        return True

    job = Periodic(run=nothing, every=1, when=guard, name="late")
    with pytest.RaisesGroup(Stop, flatten_subgroups=True), trio.CancelScope() as scope:

        def on_missed(event: Event) -> None:
            if isinstance(event, Skipped) and event.reason is SkipReason.MISSED:
                scope.cancel()

        with periodic.subscribe(on_missed, job=job):
            async with trio.open_nursery() as nursery:
                await nursery.start(job.serve)
                autojump_clock.jump(2.5)  # the tick due at 1 is found 1.5 s late
                await trio.sleep(10)
    boom = False
    events = await periodic.testing.serve_for(job, 2.5)
    assert [type(e) for e in events] == [Started, Finished, Started, Finished]


async def test_an_async_guard_of_a_tick_cut_short_by_cancellation_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The same cancellation, with an async guard: its coroutine, made but never awaited,
    # is closed rather than left to warn "never awaited" (an error in this test suite).
    awaited = []

    async def guard() -> bool:
        awaited.append(trio.current_time())
        return True

    job = Periodic(run=nothing, every=1, when=guard, name="late")
    with trio.CancelScope() as scope:

        def on_missed(event: Event) -> None:
            if isinstance(event, Skipped) and event.reason is SkipReason.MISSED:
                scope.cancel()

        with periodic.subscribe(on_missed, job=job):
            async with trio.open_nursery() as nursery:
                await nursery.start(job.serve)
                autojump_clock.jump(2.5)
                await trio.sleep(10)
    assert scope.cancelled_caught
    assert awaited == []
    gc.collect()  # a coroutine never awaited would warn now
