"""Jobs with a store: slots, claims, records and catch-up, in virtual time (MemoryStore)."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
import trio
import trio.testing
from store_support import T0, UTC, Wall

import periodic
from periodic import Periodic, Retry
from periodic.events import Event, Finished, Skipped, SkipReason, Started
from periodic.stores import JobState, MemoryStore, RunRecord, Store
from periodic.testing import LocalPeer, capture_events, manual, serve_for, sync_tick


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


async def nothing() -> None:
    pass


def summary(events: list[Event]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, Started):
            out.append(("started", e.started_at, e.scheduled_at, e.fire_time))
        elif isinstance(e, Skipped):
            out.append(("skipped", str(e.reason), e.scheduled_at, e.count))
    return out


@pytest.fixture
async def store(nursery: trio.Nursery) -> MemoryStore:
    store = MemoryStore()
    await nursery.start(store.serve)
    return store


def job(store: Store, wall: Wall, **options: Any) -> Periodic:
    options.setdefault("run", nothing)
    options.setdefault("every", 10)
    return Periodic(store=store, wall_clock=wall, name="rollup", **options)


async def down_for(seconds: float, wall: Wall) -> None:
    """No process serves the job: the wall clock moves on, Trio's does not matter."""
    wall.shift += seconds


async def test_an_interval_job_keeps_its_grid_across_a_restart(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    wall = Wall()
    first = await serve_for(job(store, wall), 22)
    assert [s.fire_time for s in first.of(Started)] == [at(10), at(20)]
    await down_for(4, wall)  # restarted 4 s later: wall time 26
    # A new Periodic (a new process) finds the grid in the store: next slot at 30.
    again = await serve_for(job(store, wall), 15)
    assert summary(list(again)) == [
        ("started", 26.0, 26.0, at(30)),
        ("started", 36.0, 36.0, at(40)),
    ]
    state = await store.job("rollup")
    assert state is not None
    assert (state.anchor, state.last_slot, state.schedule) == (at(10), at(40), "every 10s")


@pytest.mark.parametrize(
    ("catch_up", "window", "expected"),
    [
        (
            "latest",
            None,
            [
                ("skipped", "missed", -5.0, 2),
                ("started", 22.0, 15.0, at(50)),
                ("started", 25.0, 25.0, at(60)),
            ],
        ),
        (
            "none",
            None,
            [("skipped", "missed", -5.0, 3), ("started", 25.0, 25.0, at(60))],
        ),
        (
            "all",
            100,
            [
                ("started", 22.0, -5.0, at(30)),
                ("started", 22.0, 5.0, at(40)),
                ("started", 22.0, 15.0, at(50)),
                ("started", 25.0, 25.0, at(60)),
            ],
        ),
        (
            "all",
            15,
            [
                ("skipped", "missed", -5.0, 2),
                ("started", 22.0, 15.0, at(50)),
                ("started", 25.0, 25.0, at(60)),
            ],
        ),
        (
            "latest",
            5,
            [("skipped", "missed", -5.0, 3), ("started", 25.0, 25.0, at(60))],
        ),
    ],
)
async def test_slots_missed_while_down_are_caught_up_by_policy(
    autojump_clock: trio.testing.MockClock,
    store: MemoryStore,
    catch_up: str,
    window: float | None,
    expected: list[tuple[Any, ...]],
) -> None:
    wall = Wall()
    options = {"catch_up": catch_up, "catch_up_window": window}
    first = await serve_for(job(store, wall, **options), 22)
    assert [s.fire_time for s in first.of(Started)] == [at(10), at(20)]
    await down_for(35, wall)  # 3.5 periods: back at wall time 57, at Trio time 22
    again = await serve_for(job(store, wall, **options), 4)
    assert summary(list(again)) == expected
    runs = await store.runs("rollup")
    assert [r.slot for r in runs] == sorted(
        (s[3] for s in [*summary(list(first)), *expected] if s[0] == "started"), reverse=True
    )


async def test_a_first_serve_has_missed_nothing(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    wall = Wall()
    wall.shift = 10_000
    events = await serve_for(job(store, wall, initial_delay=0), 5)
    assert summary(list(events)) == [("started", 0.0, 0.0, at(10_000))]


async def test_a_cron_job_catches_up_the_fire_time_of_a_deploy(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    wall = Wall()
    nightly = job(store, wall, every=None, cron="0 2 * * *")
    wall.shift = (datetime.datetime(2026, 5, 1, 1, 59, tzinfo=UTC) - T0).total_seconds()
    first = await serve_for(nightly, 120)  # runs the 02:00 of May 1st
    assert [s.fire_time for s in first.of(Started)] == [
        datetime.datetime(2026, 5, 1, 2, tzinfo=UTC)
    ]
    # Down from 01:59 to 02:05 the next night: the deploy.
    await down_for(86400 - 120 + 360, wall)
    again = await serve_for(job(store, wall, every=None, cron="0 2 * * *"), 10)
    [started] = again.of(Started)
    assert started.fire_time == datetime.datetime(2026, 5, 2, 2, tzinfo=UTC)
    assert started.scheduled_at == started.started_at - 300


async def test_processes_without_a_peer_never_run_a_slot_twice(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    wall = Wall()
    jobs = [job(store, wall) for _ in range(3)]  # three "processes", one job name
    with capture_events() as events:
        async with trio.open_nursery() as nursery:
            for each in jobs:
                await nursery.start(each.serve)
            await trio.sleep(45)
            nursery.cancel_scope.cancel()
    started = [e for e in events.of(Started) if e.job == "rollup"]
    assert sorted(s.fire_time for s in started) == [at(10), at(20), at(30), at(40)]
    claimed = [e for e in events.of(Skipped) if e.reason is SkipReason.CLAIMED]
    assert len(claimed) == 8
    assert sum(j.statistics().skipped["claimed"] for j in jobs) == 8


async def test_split_brain_leaders_never_run_a_slot_twice(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, nursery: trio.Nursery
) -> None:
    wall = Wall()
    peers = [LocalPeer(node=f"node-{i}") for i in range(3)]  # all believe they lead
    for peer in peers:
        await nursery.start(peer.serve)
    with capture_events() as events:
        async with trio.open_nursery() as inner:
            for peer in peers:
                await inner.start(job(store, wall, peer=peer).serve)
            await trio.sleep(35)
            inner.cancel_scope.cancel()
    assert sorted(s.fire_time for s in events.of(Started)) == [at(10), at(20), at(30)]


async def test_a_lower_fence_is_refused_after_a_higher_one_ran(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    await store.register("f", schedule="x", anchor=at(0))
    assert await store.claim("f", slot=at(1), node="a", fence=5, started_at=at(1)) is not None
    assert await store.claim("f", slot=at(2), node="b", fence=4, started_at=at(2)) is None
    assert await store.claim("f", slot=at(2), node="a", fence=5, started_at=at(2)) is not None
    assert await store.claim("f", slot=at(3), node="c", fence=None, started_at=at(3)) is not None


async def test_runs_are_recorded_with_their_outcome_and_error(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    wall = Wall()
    outcomes = iter([None, ValueError("x" * 3000), None])

    async def flaky() -> None:
        error = next(outcomes)
        await trio.sleep(1)
        if error is not None:
            raise error

    await serve_for(job(store, wall, run=flaky), 35)
    runs = await store.runs("rollup")
    assert [(r.slot, r.outcome, r.duration) for r in runs] == [
        (at(30), "ok", 1.0),
        (at(20), "error", 1.0),
        (at(10), "ok", 1.0),
    ]
    assert runs[1].error is not None
    assert runs[1].error.startswith("ValueError: xxx")
    assert len(runs[1].error) == 2000
    assert runs[0].finished_at == at(31)
    assert runs[0].node == runs[1].node  # this process
    state = await store.job("rollup")
    assert state is not None
    assert (state.last_outcome, state.consecutive_failures) == ("ok", 0)


async def test_a_run_cancelled_at_shutdown_is_recorded(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    async def forever() -> None:
        await trio.sleep(math.inf)

    wall = Wall()
    await serve_for(job(store, wall, run=forever, job_shutdown=1), 12)
    [run] = await store.runs("rollup")
    assert (run.outcome, run.finished_at) == ("cancelled", at(13))


class BrokenStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    async def claim(self, name: str, **kwargs: Any) -> int | None:
        if self.broken:
            raise ConnectionError("the database is gone")
        return await super().claim(name, **kwargs)


async def test_a_store_error_at_claim_time_skips_the_tick_and_the_job_goes_on(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    store = BrokenStore()
    await nursery.start(store.serve)
    wall = Wall()
    p = job(store, wall)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(15)
            store.broken = True
            await trio.sleep(20)
            store.broken = False
            await trio.sleep(10)
            inner.cancel_scope.cancel()
    assert [
        (type(e).__name__, getattr(e, "reason", None))
        for e in events
        if not isinstance(e, Finished)
    ] == [
        ("Started", None),
        ("Skipped", SkipReason.STORE_ERROR),
        ("Skipped", SkipReason.STORE_ERROR),
        ("Started", None),
    ]
    errors = events.find(Skipped, reason=SkipReason.STORE_ERROR)
    assert all(isinstance(e.error, ConnectionError) for e in errors)
    assert p.statistics().skipped["store_error"] == 2


async def test_a_store_that_is_not_served_is_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    with pytest.raises(RuntimeError, match=r"its store <MemoryStore 0 jobs> is not being served"):
        await job(store, Wall()).serve()


async def test_the_leader_that_takes_over_catches_up_the_slot_the_cluster_missed(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, nursery: trio.Nursery
) -> None:
    wall = Wall()
    old, new = LocalPeer(node="old"), LocalPeer(node="new", leader=False)
    for peer in (old, new):
        await nursery.start(peer.serve)
    with capture_events() as events:
        async with trio.open_nursery() as inner:
            await inner.start(job(store, wall, peer=old).serve)
            await inner.start(job(store, wall, peer=new).serve)
            await trio.sleep(15)
            old.set_leader(False)  # the old leader dies at 15 ...
            await trio.sleep(20)
            new.set_leader(True)  # ... the new one leads only at 35: 20 and 30 missed
            await trio.sleep(1)
            inner.cancel_scope.cancel()
    started = [(s.started_at, s.fence, s.fire_time) for s in events.of(Started)]
    assert started == [(10.0, 1, at(10)), (35.0, 1, at(30))]
    missed = events.find(Skipped, reason=SkipReason.MISSED)
    assert [(m.count, m.scheduled_at) for m in missed] == [(1, 20.0)]


async def test_manual_ticks_claim_the_wall_time_of_the_tick(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, nursery: trio.Nursery
) -> None:
    wall = Wall()
    p = manual(job(store, wall))
    await nursery.start(p.serve)
    await trio.sleep(3)
    first = await sync_tick(p)
    assert first.outcome == "ok"
    info = [r.slot for r in await store.runs("rollup")]
    assert info == [at(3)]


async def test_retries_of_a_job_with_a_store_record_one_run(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    tries = []

    async def flaky() -> None:
        tries.append(periodic.current_run().fire_time)
        if len(tries) < 2:
            raise ValueError

    await serve_for(job(store, Wall(), run=flaky, retry=Retry(delay=1)), 15)
    assert tries == [at(10), at(10)]
    [run] = await store.runs("rollup")
    assert (run.slot, run.outcome) == (at(10), "ok")


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"name": None}, ValueError, "needs an explicit name="),
        ({"catch_up": "all"}, ValueError, "catch_up='all' needs catch_up_window="),
        ({"catch_up": "some"}, ValueError, "catch_up must be one of"),
        ({"catch_up_window": 0}, ValueError, "catch_up_window must be"),
        ({"catch_up_window": "x"}, ValueError, "catch_up_window: "),
        ({"store": "sqlite:///x.db"}, TypeError, "store must be None or a periodic.stores.Store"),
        ({"store": None, "catch_up": "none"}, ValueError, "apply only to jobs with a store"),
    ],
)
def test_bad_store_options_are_refused(
    options: dict[str, Any], error: type[Exception], text: str
) -> None:
    kwargs: dict[str, Any] = {"run": nothing, "every": 10, "store": MemoryStore(), "name": "n"}
    kwargs.update(options)
    if kwargs["name"] is None:
        del kwargs["name"]
    with pytest.raises(error, match=text):
        Periodic(**kwargs)


def test_records_are_plain_frozen_values() -> None:
    state = JobState(name="n", schedule="every 1s", anchor=at(0))
    assert state.last_slot is None
    record = RunRecord(slot=at(1), node="n", fence=None, started_at=at(1))
    assert record.outcome is None


async def test_a_tick_that_comes_as_serve_is_cancelled_does_not_wake_it(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    # The catch-up tick of a restart reports the missed slots, and a handler of that
    # event cancels serve: the cancellation reaches the parked serve task, and only then
    # is the tick handed over. It must not try to wake a task that is already on its way
    # out (that was a TrioInternalError), and no run may start.
    wall = Wall()
    await serve_for(job(store, wall), 22)
    await down_for(35, wall)
    again = job(store, wall)
    with trio.CancelScope() as scope:

        def on_missed(event: Event) -> None:
            if isinstance(event, Skipped) and event.reason is SkipReason.MISSED:
                scope.cancel()

        with periodic.subscribe(on_missed, job=again), capture_events(again) as events:
            async with trio.open_nursery() as nursery:
                await nursery.start(again.serve)
                await trio.sleep(100)
    assert scope.cancelled_caught
    assert trio.current_time() == 22.0
    assert [type(e) for e in events] == [Skipped]
    assert not again.serving
    assert [r.slot for r in await store.runs("rollup")] == [at(20), at(10)]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_store_served_beside_its_jobs_records_their_last_runs(
    kind: str, tmp_path: Any
) -> None:
    # Store and job in one nursery, cancelled together while a run is under way: the
    # store stays open until the job has stopped, so the run's end is recorded. (Real
    # time, briefly: the SQLite store's calls run in threads.)
    from periodic.stores.sqlite import SQLiteStore

    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(str(tmp_path / "s.db"))

    async def slow() -> None:
        await trio.sleep(0.3)

    p = Periodic(run=slow, every=0.05, name="beside", store=store, job_shutdown=5)
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)
            await nursery.start(p.serve)
            await events.wait_for(Started)
            nursery.cancel_scope.cancel()
    assert not store.serving
    [finished] = events.of(Finished)
    assert finished.outcome == "ok"  # it had its grace
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        [run] = await store.runs("beside")
        nursery.cancel_scope.cancel()
    assert (run.outcome, run.duration) == ("ok", finished.duration)


async def test_a_memory_store_is_used_only_while_served_and_only_with_aware_times() -> None:
    store = MemoryStore()
    with pytest.raises(RuntimeError, match="is not being served"):
        await store.register("x", schedule="s", anchor=at(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        with pytest.raises(ValueError, match="anchor must be a timezone-aware datetime"):
            await store.register("x", schedule="s", anchor=datetime.datetime(2026, 1, 1))
        nursery.cancel_scope.cancel()


async def test_a_leadership_gained_as_the_job_starts_is_caught_up(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, nursery: trio.Nursery
) -> None:
    # The peer leads only from right after serve started (the serve-time plan saw a
    # follower): what the cluster missed is caught up at the gain.
    wall = Wall()
    await serve_for(job(store, wall), 22)  # slots 10 and 20 ran
    await down_for(35, wall)  # back at wall time 57: 30, 40 and 50 missed
    peer = LocalPeer(leader=False)
    await nursery.start(peer.serve)
    p = job(store, wall, peer=peer)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            peer.set_leader(True)
            await trio.sleep(1)
            inner.cancel_scope.cancel()
    assert [(s.started_at, s.fire_time) for s in events.of(Started)] == [(22.0, at(50))]
    assert [(m.count, m.scheduled_at) for m in events.find(Skipped, reason=SkipReason.MISSED)] == [
        (2, -5.0)
    ]


async def test_catch_up_all_runs_the_window_after_an_outage_of_many_slots(
    autojump_clock: trio.testing.MockClock, store: MemoryStore
) -> None:
    wall = Wall()
    await serve_for(job(store, wall, every=1), 1.5)  # slot 1 ran
    await down_for(150_000, wall)  # 150 000 slots missed; the window keeps the last 100
    events = await serve_for(job(store, wall, every=1, catch_up="all", catch_up_window=100), 0.2)
    missed = events.find(Skipped, reason=SkipReason.MISSED)
    assert [m.count for m in missed] == [149_900]
    assert [s.fire_time for s in events.of(Started)] == [at(k) for k in range(149_902, 150_002)]


async def test_a_replan_during_catch_up_all_does_not_queue_the_slots_twice(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, nursery: trio.Nursery
) -> None:
    async def slow() -> None:
        await trio.sleep(5)

    wall = Wall()
    await serve_for(job(store, wall), 12)  # slot 10 ran
    await down_for(50, wall)  # back at wall time 62: 20..60 missed
    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = job(
        store,
        wall,
        run=slow,
        peer=peer,
        catch_up="all",
        catch_up_window=1000,
        cancel_on_leadership_loss=False,
    )
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(1)  # the first caught-up run goes on
            peer.set_leader(False)
            peer.set_leader(True)  # gained again: plan again from the store
            await trio.sleep(35)
            inner.cancel_scope.cancel()
    assert not events.find(Skipped, reason=SkipReason.CLAIMED)
    # Each missed slot once, one after another (5 s each); then, at wall time 87, the
    # usual missed-tick rule (70 missed, 80 runs), and 90 on time.
    started = [(s.started_at, s.fire_time) for s in events.of(Started)]
    assert started == [
        (12.0, at(20)),
        (17.0, at(30)),
        (22.0, at(40)),
        (27.0, at(50)),
        (32.0, at(60)),
        (37.0, at(80)),
        (40.0, at(90)),
    ]


async def test_a_leadership_gain_left_over_from_a_serve_is_not_planned_at_the_next(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, nursery: trio.Nursery
) -> None:
    wall = Wall()
    slow_guard = False

    async def guard() -> bool:
        if slow_guard:
            await trio.sleep(5)
        return True

    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = job(store, wall, peer=peer, when=guard)
    async with trio.open_nursery() as inner:
        await inner.start(p.serve)
        await trio.sleep(25)  # slots 10 and 20 ran
        slow_guard = True
        await trio.sleep(6)  # at 31 the tick of 30 awaits its guard (until 35)
        peer.set_leader(False)
        peer.set_leader(True)  # a gain while no alarm is armed: a replan is left
        await trio.sleep(0.5)
        inner.cancel_scope.cancel()  # serve ends inside the guard
    slow_guard = False
    await serve_for(job(store, wall), 60)  # another process runs 40..90
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(12)
            inner.cancel_scope.cancel()
    assert not events.find(Skipped, reason=SkipReason.MISSED)
    assert [s.fire_time for s in events.of(Started)] == [at(100)]
