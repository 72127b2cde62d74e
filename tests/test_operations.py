"""Operating a job in its process: pause/resume, trigger(), overdue_after; in virtual time."""

from __future__ import annotations

import datetime
import logging
import math
from typing import Any

import pytest
import trio
import trio.testing
from store_support import Wall

from periodic import Periodic, subscribe
from periodic.events import (
    Event,
    Finished,
    Overdue,
    Recovered,
    RecoveredBy,
    Skipped,
    SkipReason,
    Started,
)
from periodic.exceptions import JobNotStarted
from periodic.stores import MemoryStore, Store
from periodic.testing import LocalPeer, capture_events, serve_for, sync_tick


class Job:
    """Notes when each run starts; fails while ``failing``; takes ``duration``."""

    def __init__(self, *, duration: float = 0.0, failing: bool = False) -> None:
        self.starts: list[float] = []
        self.duration = duration
        self.failing = failing

    async def __call__(self) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(self.duration)
        if self.failing:
            raise ValueError("failing")


def timeline(events: list[Event]) -> list[tuple[Any, ...]]:
    """What happened, in order, with the times events carry or when they were seen."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, Started):
            out.append(("started", e.started_at))
        elif isinstance(e, Skipped):
            out.append(("skipped", str(e.reason), e.scheduled_at))
        elif isinstance(e, Overdue):
            out.append(("overdue", e.last_ok_at, e.overdue_for))
        elif isinstance(e, Recovered):
            out.append(("recovered", str(e.reason)))
    return out


class Stamps:
    """Overdue and Recovered events of a job, with the Trio time each was emitted."""

    def __init__(self, job: Periodic) -> None:
        self.seen: list[tuple[float, tuple[Any, ...]]] = []
        self.subscription = subscribe(self._note, job=job)

    def _note(self, event: Event) -> None:
        if isinstance(event, (Overdue, Recovered)):
            self.seen.append((trio.current_time(), timeline([event])[0]))


# -- pause / resume ---------------------------------------------------------------------


async def test_a_paused_job_skips_its_ticks_and_resume_catches_nothing_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Job()
    p = Periodic(run=job, every=1, name="p")
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(2.5)
            assert not p.paused
            p.pause()
            p.pause()  # (again: nothing more)
            assert p.paused
            await trio.sleep(2)  # ticks at 3 and 4 are skipped
            p.resume()
            assert not p.paused
            await trio.sleep(2)  # 4.5 -> 6.5: runs at 5 and 6, none at 4.5
            nursery.cancel_scope.cancel()
    assert job.starts == [1.0, 2.0, 5.0, 6.0]
    assert [e for e in timeline(events) if e[0] == "skipped"] == [
        ("skipped", "paused", 3.0),
        ("skipped", "paused", 4.0),
    ]
    assert p.statistics().skipped["paused"] == 2


async def test_pause_is_the_first_guard(autojump_clock: trio.testing.MockClock) -> None:
    asked: list[float] = []

    def when() -> bool:
        asked.append(trio.current_time())
        return True

    peer = LocalPeer(leader=False)
    p = Periodic(run=Job(), every=1, when=when, peer=peer, on_overlap="ignore", name="g")
    p.pause()  # before serve: it is served paused
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await serve_for(p, 2.5)
            nursery.cancel_scope.cancel()
    assert asked == []  # the guard is not even asked
    assert [str(e.reason) for e in events.of(Skipped)] == ["paused", "paused"]


async def test_the_pause_outlasts_serve_and_hides_from_statistics_until_used(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(run=Job(), every=1, name="s")
    await serve_for(p, 1.5)
    assert "paused" not in p.statistics().skipped
    p.pause()
    await serve_for(p, 1.5)
    assert p.paused
    assert p.statistics().skipped["paused"] == 1
    assert p.statistics().finished["ok"] == 1


async def test_manual_ticks_of_a_paused_job_start_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Job()
    p = Periodic(run=job, every=1, mode="manual", name="m")
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        p.pause()
        with pytest.raises(JobNotStarted) as caught:
            await sync_tick(p)
        assert caught.value.reason is SkipReason.PAUSED
        p.resume()
        finished = await sync_tick(p)
        assert isinstance(finished, Finished)
        nursery.cancel_scope.cancel()
    assert job.starts == [0.0]


async def test_pause_and_resume_are_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="periodic")
    p = Periodic(run=Job(), every=1, name="logged")
    p.pause()
    await serve_for(p, 1.5)
    p.resume()
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("INFO", "job 'logged' paused"),
        ("DEBUG", "job 'logged' skipped a tick: the job is paused"),
        ("INFO", "job 'logged' resumed"),
    ]


# -- trigger ------------------------------------------------------------------------------


async def test_trigger_starts_a_run_now_and_leaves_the_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Job(duration=4)
    p = Periodic(run=job, every=10, name="t")
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(3)
        started = await p.trigger()
        # It returns as the run starts, not when it ends.
        assert trio.current_time() == 3.0
        assert isinstance(started, Started)
        assert (started.job, started.run_id, started.scheduled_at, started.started_at) == (
            "t",
            1,
            3.0,
            3.0,
        )
        await trio.sleep(18)
        nursery.cancel_scope.cancel()
    assert job.starts == [3.0, 10.0, 20.0]


async def test_trigger_runs_a_paused_job(autojump_clock: trio.testing.MockClock) -> None:
    job = Job()
    p = Periodic(run=job, every=10, name="t")
    p.pause()
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(1)
        assert isinstance(await p.trigger(), Started)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert job.starts == [1.0]
    assert p.paused


async def test_trigger_goes_through_the_guards(autojump_clock: trio.testing.MockClock) -> None:
    allowed = False
    peer = LocalPeer(leader=False)
    p = Periodic(
        run=Job(duration=5),
        every=100,
        when=lambda: allowed,
        peer=peer,
        on_overlap="ignore",
        name="t",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await nursery.start(p.serve)
        skipped = await p.trigger()
        assert isinstance(skipped, Skipped)
        assert skipped.reason is SkipReason.GUARD
        allowed = True
        skipped = await p.trigger()
        assert isinstance(skipped, Skipped)
        assert skipped.reason is SkipReason.NOT_LEADER
        peer.set_leader(True)
        assert isinstance(await p.trigger(), Started)
        skipped = await p.trigger()  # the first run goes on for 5 s
        assert isinstance(skipped, Skipped)
        assert skipped.reason is SkipReason.OVERLAP
        nursery.cancel_scope.cancel()


async def test_trigger_with_an_async_guard_and_stop_previous(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def when() -> bool:
        await trio.sleep(1)
        return True

    job = Job(duration=math.inf)
    p = Periodic(run=job, every=100, when=when, on_overlap="stop_previous", name="t")
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            first = await p.trigger()
            second = await p.trigger()
            nursery.cancel_scope.cancel()
    assert isinstance(first, Started)
    assert isinstance(second, Started)
    assert (first.started_at, second.started_at) == (1.0, 2.0)
    assert [(e.run_id, str(e.cancel_reason)) for e in events.of(Finished)] == [
        (1, "stop_previous"),
        (2, "shutdown"),
    ]


async def test_trigger_in_manual_mode(autojump_clock: trio.testing.MockClock) -> None:
    job = Job()
    p = Periodic(run=job, every=10, mode="manual", name="t")
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(2)
        assert isinstance(await p.trigger(), Started)
        nursery.cancel_scope.cancel()
    assert job.starts == [2.0]


async def test_trigger_of_a_cron_job_carries_the_wall_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pytest.importorskip("cronsim")
    wall = datetime.datetime(2026, 11, 30, 10, 0, 5, tzinfo=datetime.timezone.utc)
    p = Periodic(run=Job(), cron="0 * * * *", name="c", wall_clock=lambda: wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        started = await p.trigger()
        nursery.cancel_scope.cancel()
    assert isinstance(started, Started)
    assert started.fire_time == wall


async def test_trigger_of_a_job_not_served_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(run=Job(), every=1, name="t")
    with pytest.raises(RuntimeError, match="not being served"):
        await p.trigger()
    await serve_for(p, 0.5)
    with pytest.raises(RuntimeError, match="not being served"):
        await p.trigger()


# -- overdue_after ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.inf, ValueError),
        ("soon", ValueError),
        (True, TypeError),
        ([1], TypeError),
    ],
)
def test_bad_overdue_after(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="overdue_after"):
        Periodic(run=Job(), every=1, overdue_after=value)  # type: ignore[arg-type]


def test_overdue_after_takes_durations() -> None:
    assert Periodic(run=Job(), every=1, overdue_after="1h30m").overdue_after == 5400.0
    td = datetime.timedelta(minutes=2)
    assert Periodic(run=Job(), every=1, overdue_after=td).overdue_after == 120.0
    assert Periodic(run=Job(), every=1).overdue_after is None


async def test_overdue_once_then_recovered_by_an_ok_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Job(failing=True)
    p = Periodic(run=job, every=10, overdue_after=25, name="o")
    stamps = Stamps(p)
    with stamps.subscription:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(29)  # runs at 10 and 20 fail; overdue at 25 (from serve)
            job.failing = False  # the run at 30 succeeds
            await trio.sleep(10)
            job.failing = True  # 40, 50, 60 fail: overdue again at 30 + 25
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    assert stamps.seen == [
        (25.0, ("overdue", None, 25.0)),
        (30.0, ("recovered", "ok")),
        (55.0, ("overdue", 30.0, 25.0)),
        (69.0, ("recovered", "stopped")),  # serve ended while overdue
    ]


async def test_overdue_event_times(autojump_clock: trio.testing.MockClock) -> None:
    when: list[tuple[str, float]] = []
    p = Periodic(run=Job(failing=True), every=100, overdue_after=7, name="o")
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await events.wait_for(Overdue)
            when.append(("overdue", trio.current_time()))
            nursery.cancel_scope.cancel()
    assert when == [("overdue", 7.0)]


async def test_an_ok_run_moves_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    p = Periodic(run=Job(), every=10, overdue_after=15, name="o")
    with capture_events(p) as events:
        await serve_for(p, 100)
    assert events.of(Overdue) == []  # an ok run every 10 s, never 15 s without one


async def test_a_paused_job_is_never_overdue_and_resume_counts_afresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = Periodic(run=Job(failing=True), every=10, overdue_after=25, name="o")
    stamps = Stamps(p)
    with stamps.subscription:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(30)  # overdue at 25
            p.pause()  # recovered at 30
            await trio.sleep(100)  # paused: never overdue
            p.resume()  # at 130: counted afresh, overdue at 155
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    assert stamps.seen == [
        (25.0, ("overdue", None, 25.0)),
        (30.0, ("recovered", "paused")),
        (155.0, ("overdue", None, 25.0)),
        (160.0, ("recovered", "stopped")),
    ]


async def test_overdue_counts_from_serve_after_a_last_ok_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job = Job()
    p = Periodic(run=job, every=10, overdue_after=25, name="o")
    stamps = Stamps(p)
    with stamps.subscription:
        await serve_for(p, 15)  # an ok run at 10
        job.failing = True
        await serve_for(p, 50)  # served again at 15: its runs at 25, 35, ... fail
    assert stamps.seen == [
        (40.0, ("overdue", None, 25.0)),  # 25 s after this serve began
        (65.0, ("recovered", "stopped")),
    ]


async def test_overdue_and_recovered_are_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    job = Job(failing=True)
    p = Periodic(run=job, every=10, overdue_after=15, name="lg")
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(19)
        job.failing = False
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    overdue = [r for r in caplog.records if getattr(r, "periodic_event", None) == "Overdue"]
    recovered = [r for r in caplog.records if getattr(r, "periodic_event", None) == "Recovered"]
    assert [(r.levelname, r.getMessage()) for r in overdue] == [
        ("ERROR", "job 'lg' is overdue: no run finished ok for 15.000s (since ever)")
    ]
    assert overdue[0].periodic_job == "lg"  # type: ignore[attr-defined]
    assert overdue[0].periodic_overdue_for == 15.0  # type: ignore[attr-defined]
    assert overdue[0].periodic_last_ok_at is None  # type: ignore[attr-defined]
    assert [(r.levelname, r.getMessage()) for r in recovered] == [
        ("INFO", "job 'lg' is not overdue any more (ok)")
    ]
    assert recovered[0].periodic_reason == "ok"  # type: ignore[attr-defined]


async def test_overdue_in_manual_mode(autojump_clock: trio.testing.MockClock) -> None:
    p = Periodic(run=Job(), every=10, mode="manual", overdue_after=5, name="m")
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(3)
            await sync_tick(p)  # ok at 3: overdue at 8
            await trio.sleep(6)
            nursery.cancel_scope.cancel()
    overdue = events.of(Overdue)
    assert [(e.last_ok_at, e.overdue_for) for e in overdue] == [(3.0, 5.0)]
    assert [e.reason for e in events.of(Recovered)] == [RecoveredBy.STOPPED]


class SlowStore(MemoryStore):
    """A MemoryStore whose claims take a second."""

    async def claim(self, name: str, **kwargs: Any) -> int | None:  # type: ignore[override]
        await trio.sleep(1)
        return await super().claim(name, **kwargs)


def slow_job(store: Store, job: Job) -> Periodic:
    return Periodic(
        run=job, every=10, on_overlap="ignore", store=store, name="slow", wall_clock=Wall()
    )


async def test_a_trigger_and_a_tick_never_pass_the_overlap_guard_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The trigger passes the overlap guard at 9.5 and claims until 10.5. The tick due at
    # 10 waits for it, and then finds the triggered run going on.
    store = SlowStore()
    job = Job(duration=5)
    p = slow_job(store, job)
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)
            await nursery.start(p.serve)
            await trio.sleep(9.5)
            started = await p.trigger()
            await trio.sleep(11)
            nursery.cancel_scope.cancel()
    assert isinstance(started, Started)
    assert started.started_at == 10.5
    assert [e.started_at for e in events.of(Started)] == [10.5, 21.0]  # (21: claimed at 20)
    assert [(str(e.reason), e.scheduled_at) for e in events.of(Skipped)] == [("overlap", 10.0)]
    assert job.starts == [10.5, 21.0]


async def test_a_trigger_waits_for_a_tick_being_claimed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The tick due at 10 claims until 11; a trigger at 10.5 waits for it, and then finds
    # its run going on.
    store = SlowStore()
    job = Job(duration=5)
    p = slow_job(store, job)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        await nursery.start(p.serve)
        await trio.sleep(10.5)
        skipped = await p.trigger()
        assert trio.current_time() == 11.0
        nursery.cancel_scope.cancel()
    assert isinstance(skipped, Skipped)
    assert (skipped.reason, skipped.scheduled_at) == (SkipReason.OVERLAP, 11.0)
    assert job.starts == [11.0]


async def test_a_follower_is_never_overdue_and_a_new_leader_counts_from_its_last_follower_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = LocalPeer(leader=False)
    p = Periodic(run=Job(failing=True), every=10, overdue_after=25, peer=peer, name="f")
    stamps = Stamps(p)
    with stamps.subscription:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await nursery.start(p.serve)
            await trio.sleep(100.5)  # a follower: its ticks skip, it is not overdue
            assert stamps.seen == []
            peer.set_leader(True)  # its last follower tick was at 100: overdue at 125
            await trio.sleep(30)
            peer.set_leader(False)  # at 130.5: the tick at 140 finds it a follower
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert stamps.seen == [
        (125.0, ("overdue", None, 25.0)),
        (140.0, ("recovered", "not_leader")),
    ]


async def test_a_job_paused_in_its_store_is_not_overdue_until_a_claim_is_granted_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore(wall_clock=Wall())
    p = Periodic(
        run=Job(failing=True),
        every=10,
        overdue_after=25,
        store=store,
        name="sp",
        wall_clock=Wall(),
    )
    stamps = Stamps(p)
    with stamps.subscription:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)
            await nursery.start(p.serve)
            await trio.sleep(32)  # overdue at 25
            await store.pause("sp")  # at 32: the tick at 40 finds it paused
            await trio.sleep(63)
            await store.resume("sp")  # at 95: the claim at 100 counts again
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    assert stamps.seen == [
        (25.0, ("overdue", None, 25.0)),
        (40.0, ("recovered", "paused")),
        (125.0, ("overdue", None, 25.0)),
        (125.0, ("recovered", "stopped")),
    ]


class Halt(BaseException):
    pass


@pytest.mark.parametrize("mode", ["auto", "manual"])
async def test_what_an_overdue_handler_raises_comes_out_of_serve_at_once(
    autojump_clock: trio.testing.MockClock, mode: str
) -> None:
    def handler(event: Event) -> None:
        if isinstance(event, Overdue):
            raise Halt

    p = Periodic(run=Job(), every=100, mode=mode, overdue_after=5, name="h")
    with (
        subscribe(handler, job=p),
        trio.fail_after(100),  # (a serve that hid it would run on)
        pytest.RaisesGroup(Halt, flatten_subgroups=True),
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(50)
    assert trio.current_time() == 5.0


class BrokenStore(MemoryStore):
    """A MemoryStore whose claims fail while ``broken``."""

    broken = False

    async def claim(self, name: str, **kwargs: Any) -> int | None:  # type: ignore[override]
        if self.broken:
            raise OSError("the store is down")
        return await super().claim(name, **kwargs)


async def test_a_store_that_fails_after_a_pause_in_it_counts_towards_overdue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = BrokenStore(wall_clock=Wall())
    p = Periodic(
        run=Job(), every=10, overdue_after=25, store=store, name="down", wall_clock=Wall()
    )
    stamps = Stamps(p)
    with stamps.subscription:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)
            await nursery.start(p.serve)
            await trio.sleep(12)
            await store.pause("down")  # the tick at 20 finds it paused: not counted
            await trio.sleep(15)
            store.broken = True  # from 30 on, no claim: it runs nothing, counted again
            await trio.sleep(40)
            nursery.cancel_scope.cancel()
    assert stamps.seen == [
        (55.0, ("overdue", 10.0, 25.0)),
        (67.0, ("recovered", "stopped")),
    ]
