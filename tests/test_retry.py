"""Periodic(retry=Retry(...)): failed tries tried again within their tick, in virtual time."""

from __future__ import annotations

import datetime
import logging
import math
from typing import Any

import pytest
import trio
import trio.testing

import periodic
from periodic import Periodic, Retry
from periodic.events import (
    CancelReason,
    Event,
    Finished,
    Outcome,
    Retrying,
    Skipped,
    Started,
    StoppedPrevious,
)
from periodic.testing import LocalPeer, capture_events, manual, serve_for, sync_tick

UTC = datetime.timezone.utc


class Flaky:
    """Fails its first ``failures`` tries of each run, noting each try's start and attempt."""

    def __init__(self, failures: int, *, duration: float = 0.0) -> None:
        self.failures = failures
        self.duration = duration
        self.tries: list[tuple[float, int, int]] = []  # (time, run_id, attempt)

    async def __call__(self) -> str:
        info = periodic.current_run()
        self.tries.append((trio.current_time(), info.run_id, info.attempt))
        await trio.sleep(self.duration)
        if sum(1 for _, run_id, _ in self.tries if run_id == info.run_id) <= self.failures:
            raise ValueError(f"try {info.attempt}")
        return "done"


def summary(events: list[Event]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, Started):
            out.append(("started", e.run_id, e.started_at))
        elif isinstance(e, Retrying):
            out.append(("retrying", e.run_id, e.attempt, e.started_at))
        elif isinstance(e, Finished):
            out.append(("finished", e.run_id, str(e.outcome), e.attempt, e.will_retry))
    return out


async def test_a_failed_try_is_retried_with_growing_waits_in_the_same_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Flaky(failures=3)
    p = Periodic(
        run=job, every=100, retry=Retry(attempts=5, delay=1, backoff=3, max_delay=5), name="f"
    )
    events = await serve_for(p, 150)
    # Tries at 100, then after 1, 3 and min(9, 5) seconds.
    assert job.tries == [(100.0, 1, 1), (101.0, 1, 2), (104.0, 1, 3), (109.0, 1, 4)]
    assert summary(list(events)) == [
        ("started", 1, 100.0),
        ("finished", 1, "error", 1, True),
        ("retrying", 1, 2, 101.0),
        ("finished", 1, "error", 2, True),
        ("retrying", 1, 3, 104.0),
        ("finished", 1, "error", 3, True),
        ("retrying", 1, 4, 109.0),
        ("finished", 1, "ok", 4, False),
    ]
    last = events.of(Finished)[-1]
    assert last.result == "done"
    assert last.duration == 0.0
    stats = p.statistics()
    assert stats.runs_started == 1
    assert dict(stats.finished) == {"ok": 1, "error": 0, "timeout": 0, "cancelled": 0}


async def test_the_last_try_that_fails_ends_the_run_as_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Flaky(failures=10)
    p = Periodic(run=job, every=100, retry=Retry(attempts=3), name="f")
    events = await serve_for(p, 150)
    assert [t for t, _, _ in job.tries] == [100.0, 101.0, 103.0]
    finished = events.of(Finished)
    assert [(f.attempt, f.will_retry, str(f.error)) for f in finished] == [
        (1, True, "try 1"),
        (2, True, "try 2"),
        (3, False, "try 3"),
    ]
    assert p.statistics().finished["error"] == 1


async def test_without_retry_finished_says_attempt_1_and_no_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = await serve_for(Periodic(run=Flaky(failures=1), every=1, name="f"), 1.5)
    [finished] = events.of(Finished)
    assert (finished.outcome, finished.attempt, finished.will_retry) == ("error", 1, False)
    assert not events.of(Retrying)


async def test_a_retry_never_crosses_into_the_next_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Flaky(failures=10, duration=1)
    # every=10: tries at 10 (fails at 11), 12 (fails at 13), 15 (fails at 16); the next
    # retry would start at 16 + 4 = 20, when the next tick is due: not made.
    p = Periodic(run=job, every=10, retry=Retry(attempts=10, delay=1, backoff=2), name="f")
    events = await serve_for(p, 24)
    assert [(t, r, a) for t, r, a in job.tries] == [
        (10.0, 1, 1),
        (12.0, 1, 2),
        (15.0, 1, 3),
        (20.0, 2, 1),
        (22.0, 2, 2),
    ]
    run_1 = [(f.attempt, f.will_retry) for f in events.of(Finished) if f.run_id == 1]
    assert run_1 == [(1, True), (2, True), (3, False)]
    # The tick at 20 started its run on time, with nothing of run 1 left.
    assert [(s.run_id, s.started_at) for s in events.of(Started)] == [(1, 10.0), (2, 20.0)]


async def test_a_retry_due_exactly_at_the_next_tick_is_not_made(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Flaky(failures=1)
    p = Periodic(run=job, every=2, retry=Retry(delay=2), name="f")
    events = await serve_for(p, 2.5)
    assert [(f.attempt, f.will_retry) for f in events.of(Finished)] == [(1, False)]


async def test_cron_retries_stop_before_the_next_fire_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = datetime.datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)

    def wall() -> datetime.datetime:
        return start + datetime.timedelta(seconds=trio.current_time())

    job = Flaky(failures=10)
    p = Periodic(
        run=job,
        cron="* * * * *",
        wall_clock=wall,
        retry=Retry(attempts=10, delay=20, backoff=2),
        name="c",
    )
    await serve_for(p, 119)
    # Fires at 60: retries at 80 (wait 20), then 80 + 40 = 120 is the next fire time.
    assert [(t, r, a) for t, r, a in job.tries] == [(60.0, 1, 1), (80.0, 1, 2)]


async def test_shifted_mode_pauses_from_the_end_of_the_last_try(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Flaky(failures=2, duration=0.5)
    p = Periodic(run=job, every=5, delay_mode="shifted", retry=Retry(delay=1), name="s")
    await serve_for(p, 15.5)
    # Run 1: 5 (fails 5.5), 6.5 (fails 7), 9 (ok at 9.5); next tick 9.5 + 5.
    assert [(t, r) for t, r, _ in job.tries] == [(5.0, 1), (6.5, 1), (9.0, 1), (14.5, 2)]


async def test_the_timeout_applies_to_each_try_and_is_never_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries: list[float] = []

    async def job() -> None:
        tries.append(trio.current_time())
        if len(tries) == 1:
            await trio.sleep(1.5)  # within the timeout of 2
            raise ValueError("first")
        await trio.sleep(math.inf)

    p = Periodic(run=job, every=100, timeout=2, retry=Retry(attempts=5, delay=1), name="t")
    events = await serve_for(p, 150)
    assert tries == [100.0, 102.5]  # the second try got its own 2 s
    finished = events.of(Finished)
    assert [(str(f.outcome), f.attempt, f.will_retry, f.duration) for f in finished] == [
        ("error", 1, True, 1.5),
        ("timeout", 2, False, 2.0),
    ]
    assert p.statistics().finished["timeout"] == 1


@pytest.mark.parametrize("grace", [0.0, 30.0])
async def test_shutdown_cancels_a_waiting_retry_at_once(
    autojump_clock: trio.testing.MockClock, grace: float
) -> None:
    p = Periodic(
        run=Flaky(failures=10),
        every=10,
        retry=Retry(delay=5),
        job_shutdown=grace,
        name="s",
    )
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(12)  # the run failed at 10 and waits until 15
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 12.0
    last = events.of(Finished)[-1]
    assert (last.outcome, last.cancel_reason, last.attempt, last.will_retry) == (
        Outcome.CANCELLED,
        CancelReason.SHUTDOWN,
        1,
        False,
    )
    assert p.statistics().finished["cancelled"] == 1


async def test_a_try_that_fails_during_the_shutdown_grace_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(run=Flaky(failures=10, duration=3), every=10, retry=Retry(), name="g")
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(11)
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 13.0
    [finished] = events.of(Finished)
    assert (finished.outcome, finished.attempt, finished.will_retry) == ("error", 1, False)


async def test_retries_of_a_stop_previous_job_end_before_its_next_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(
        run=Flaky(failures=10),
        every=10,
        on_overlap="stop_previous",
        retry=Retry(delay=2, backoff=1, attempts=100),
        name="sp",
    )
    events = await serve_for(p, 20.5)
    # Run 1: tries at 10, 12, 14, 16, 18 (the one at 20 would be at the next tick).
    assert [(e.run_id, e.attempt) for e in events.of(Retrying)] == [(1, a) for a in (2, 3, 4, 5)]
    assert [f.will_retry for f in events.of(Finished) if f.run_id == 1][-1] is False
    assert not events.of(StoppedPrevious)  # run 1 had ended: nothing to stop


async def test_stop_previous_stops_a_run_waiting_for_its_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A manual job, ticked again while its first run waits for a retry.
    p = manual(
        Periodic(
            run=Flaky(failures=10),
            every=1,
            on_overlap="stop_previous",
            retry=Retry(delay=60),
            name="sp",
        )
    )
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await periodic.testing.tick(p)
            await trio.sleep(5)  # run 1 failed at 0 and waits until 60
            run_2 = await periodic.testing.tick(p)
            await events.wait_for(Finished, run_id=1, will_retry=False)
            assert trio.current_time() == 5.0
            nursery.cancel_scope.cancel()
    run_1 = [f for f in events.of(Finished) if f.run_id == 1]
    assert [(f.outcome, f.will_retry, f.cancel_reason) for f in run_1] == [
        ("error", True, None),
        ("cancelled", False, CancelReason.STOP_PREVIOUS),
    ]
    assert events.of(StoppedPrevious) == [StoppedPrevious(job="sp", run_id=1)]
    assert run_2 == 2


async def test_leadership_loss_cancels_a_waiting_retry(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = Periodic(run=Flaky(failures=10), every=10, peer=peer, retry=Retry(delay=5), name="l")
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(12)
            peer.set_leader(False)
            await trio.sleep(1)
            assert [(f.outcome, f.cancel_reason) for f in events.of(Finished)][-1] == (
                "cancelled",
                CancelReason.LEADERSHIP_LOST,
            )
            assert trio.current_time() == 13.0
            inner.cancel_scope.cancel()
    starts = events.of(Started)
    assert [(s.run_id, s.fence) for s in starts] == [(1, 1)]


async def test_retries_keep_the_run_id_fence_and_fire_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    seen: list[periodic.RunInfo] = []

    async def job() -> None:
        seen.append(periodic.current_run())
        if len(seen) < 3:
            raise ValueError

    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = Periodic(run=job, every=100, peer=peer, retry=Retry(delay=1), name="k")
    await serve_for(p, 150)
    assert [(i.run_id, i.fence, i.attempt, i.started_at, i.scheduled_at) for i in seen] == [
        (1, 1, 1, 100.0, 100.0),
        (1, 1, 2, 101.0, 100.0),
        (1, 1, 3, 103.0, 100.0),
    ]


async def test_sync_tick_returns_the_runs_last_finished(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    p = manual(Periodic(run=Flaky(failures=2), every=1, retry=Retry(delay=0.25), name="m"))
    await nursery.start(p.serve)
    finished = await sync_tick(p)
    assert (finished.outcome, finished.attempt, finished.result) == ("ok", 3, "done")
    assert trio.current_time() == 0.75


async def test_failed_tries_log_warnings_and_the_retry_is_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    await serve_for(Periodic(run=Flaky(failures=1), every=10, retry=Retry(), name="w"), 15)
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("INFO", "job 'w' run 1 started, 0.000s after it was due"),
        (
            "WARNING",
            "job 'w' run 1 finished error at try 1 in 0.000s; will retry: ValueError('try 1')",
        ),
        ("INFO", "job 'w' run 1: try 2 begins"),
        ("INFO", "job 'w' run 1 finished ok at try 2 in 0.000s"),
    ]
    retry_record = caplog.records[1]
    assert retry_record.periodic_attempt == 1  # type: ignore[attr-defined]
    assert retry_record.periodic_will_retry is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"attempts": 0}, ValueError, "attempts must be an int >= 1"),
        ({"attempts": 2.0}, TypeError, "attempts must be an int"),
        ({"attempts": True}, TypeError, "attempts must be an int"),
        ({"delay": -1}, ValueError, "delay must be a finite number of seconds >= 0"),
        ({"delay": math.inf}, ValueError, "delay must be"),
        ({"delay": "1s"}, TypeError, "delay must be"),
        ({"backoff": 0.5}, ValueError, "backoff must be a finite number >= 1"),
        ({"backoff": math.nan}, ValueError, "backoff must be"),
        ({"max_delay": -0.1}, ValueError, "max_delay must be"),
        ({"max_delay": None}, TypeError, "max_delay must be"),
    ],
)
def test_bad_retry_values_are_refused(
    kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        Retry(**kwargs)


def test_retry_must_be_a_retry() -> None:
    with pytest.raises(TypeError, match=r"retry must be None or a periodic\.Retry"):
        Periodic(run=Flaky(0), every=1, retry=3)  # type: ignore[arg-type]


def test_retry_defaults_and_waits() -> None:
    retry = Retry()
    assert (retry.attempts, retry.delay, retry.backoff, retry.max_delay) == (3, 1.0, 2.0, 60.0)
    assert [retry.wait_after(k) for k in (1, 2, 3, 7, 8, 5000)] == [1, 2, 4, 60, 60, 60]
    with pytest.raises(TypeError):
        Retry(3)  # type: ignore[misc]


async def test_skipped_ticks_are_unaffected_by_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(run=Flaky(0), every=1, when=lambda: False, retry=Retry(), name="g")
    events = await serve_for(p, 2.5)
    assert [type(e) for e in events] == [Skipped, Skipped]
