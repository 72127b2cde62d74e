"""Operating jobs through their store: pause, resume, trigger and overdue, as the scheduler
honours them (MemoryStore, virtual time; the stores' own side is in the contract suite)."""

from __future__ import annotations

import contextvars
import datetime
import random
from typing import Any

import pytest
import trio
import trio.testing
from store_support import T0, Wall

from periodic import Periodic
from periodic.events import Overdue, Skipped, SkipReason, Started
from periodic.stores import JobState, MemoryStore, Store
from periodic.testing import LocalPeer, capture_events


class Job:
    def __init__(self, duration: float = 0.0) -> None:
        self.starts: list[float] = []
        self.duration = duration

    async def __call__(self) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(self.duration)


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
async def store(nursery: trio.Nursery, wall: Wall) -> MemoryStore:
    store = MemoryStore(wall_clock=wall)
    await nursery.start(store.serve)
    return store


def make(store: Store, wall: Wall, run: Job, **options: Any) -> Periodic:
    options.setdefault("every", 10)
    return Periodic(run=run, store=store, wall_clock=wall, name="rollup", **options)


async def test_a_pause_in_the_store_stops_every_process_and_resume_catches_nothing_up(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    first, second = Job(), Job()
    a, b = make(store, wall, first), make(store, wall, second)  # two processes, no peer
    with capture_events(a) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            await trio.sleep(15)
            await store.pause("rollup", note="incident 42")
            state = await store.job("rollup")
            assert state is not None
            assert (state.paused, state.pause_note) == (True, "incident 42")
            await trio.sleep(20)  # slots 20 and 30: paused
            await store.resume("rollup")
            await trio.sleep(10)  # slot 40 runs; 20 and 30 are not caught up
            nursery.cancel_scope.cancel()
    assert sorted(first.starts + second.starts) == [10.0, 40.0]
    # (which process claimed slots 10 and 40 is a race: the other one was refused)
    assert [
        (str(e.reason), e.scheduled_at)
        for e in events.of(Skipped)
        if e.reason is not SkipReason.CLAIMED
    ] == [("paused", 20.0), ("paused", 30.0)]
    assert a.statistics().skipped["paused"] == 2
    assert b.statistics().skipped["paused"] == 2
    assert not a.paused  # (the job object's own pause is another thing)


async def test_a_job_paused_in_the_store_catches_nothing_up_when_served(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    job = Job()
    p = make(store, wall, job)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(11)  # slot 10 ran
        nursery.cancel_scope.cancel()
    await store.pause("rollup")
    wall.shift += 100  # down for 100 s, paused
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(5)
            await store.resume("rollup")  # at wall 116
            await trio.sleep(10)  # the next slot, 120, runs; none of the missed ones
            nursery.cancel_scope.cancel()
    assert job.starts == [10.0, 20.0]  # Trio's clock: 20 is wall 120
    assert events.of(Skipped) == []  # nothing missed, nothing tried while paused


async def test_slots_that_fell_due_while_paused_are_not_caught_up_after_a_resume(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    job = Job()
    p = make(store, wall, job, catch_up="all", catch_up_window=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(11)  # slot 10 ran
        nursery.cancel_scope.cancel()
    await store.pause("rollup")
    wall.shift += 50  # slots 20..60 fall due while paused (and down)
    await store.resume("rollup")  # at wall 61
    wall.shift += 30  # down 30 s more: slots 70, 80, 90 were missed after the resume
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert [s.fire_time for s in events.of(Started)] == [
        T0 + datetime.timedelta(seconds=s) for s in (70, 80, 90)
    ]


async def test_a_store_trigger_runs_once_at_once_on_one_process(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    first, second = Job(), Job()
    a, b = make(store, wall, first, every=100), make(store, wall, second, every=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        await trio.sleep(5)
        await store.trigger("rollup")
        await trio.sleep(1)
        assert sorted(first.starts + second.starts) == [5.0]  # one run, at once
        state = await store.job("rollup")
        assert state is not None
        assert state.triggered_at is None  # taken
        await trio.sleep(100)  # the schedule is as it was: slot 100
        nursery.cancel_scope.cancel()
    assert sorted(first.starts + second.starts) == [5.0, 100.0]


async def test_a_store_trigger_runs_a_job_paused_in_the_store(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    job = Job()
    p = make(store, wall, job)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await store.pause("rollup")
        await trio.sleep(3)
        await store.trigger("rollup")
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert job.starts == [3.0]


async def test_job_trigger_runs_a_job_paused_in_the_store(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    job = Job()
    p = make(store, wall, job)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await store.pause("rollup")
        await trio.sleep(3)
        started = await p.trigger()
        assert isinstance(started, Started)
        nursery.cancel_scope.cancel()
    assert job.starts == [3.0]
    [run] = await store.runs("rollup")
    assert run.slot == T0 + datetime.timedelta(seconds=3)


async def test_a_trigger_asked_for_while_nobody_served_runs_at_serve(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    job = Job()
    p = make(store, wall, job, every=100)
    await store.register("rollup", schedule="every 100s", anchor=T0)
    await store.trigger("rollup")
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    # The trigger's run, and beside it the scheduled slot due at serve (the anchor's):
    # a trigger leaves the schedule's slots as they are.
    assert job.starts == [0.0, 0.0]
    runs = await store.runs("rollup")
    assert sorted((r.slot, r.triggered) for r in runs) == [(T0, False), (T0, True)]
    state = await store.job("rollup")
    assert state is not None
    assert (state.last_slot, state.triggered_at) == (T0, None)


async def test_only_the_leader_takes_a_store_trigger(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    leader, follower = Job(), Job()
    peer_a, peer_b = LocalPeer(leader=True), LocalPeer(leader=False)
    a = make(store, wall, leader, every=100, peer=peer_a)
    b = make(store, wall, follower, every=100, peer=peer_b)
    with capture_events(b) as follower_events:
        async with trio.open_nursery() as nursery:
            for peer in (peer_a, peer_b):
                await nursery.start(peer.serve)
            await nursery.start(b.serve)  # the follower hears of it first
            await nursery.start(a.serve)
            await trio.sleep(2)
            await store.trigger("rollup")
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert (leader.starts, follower.starts) == ([2.0], [])
    assert list(follower_events) == []  # a follower leaves it without a word


async def test_a_store_trigger_refused_by_a_guard_is_reported_once_and_stays_pending(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    job = Job(duration=50)
    p = make(store, wall, job, every=100, on_overlap="ignore")
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(1)
            await p.trigger()  # a run from 1 to 51
            await store.trigger("rollup")  # refused: the run goes on
            await trio.sleep(1)
            await store.trigger("rollup")  # (the same trigger, told again) refused again
            await trio.sleep(59)  # at 61 the run is over
            state = await store.job("rollup")
            assert state is not None
            assert state.triggered_at == T0 + datetime.timedelta(seconds=1)
            await store.trigger("rollup")  # told again: now it runs
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert job.starts == [1.0, 61.0]
    assert [(str(e.reason), e.scheduled_at) for e in events.of(Skipped)] == [
        ("overlap", 1.0)  # reported once
    ]


async def test_overdue_after_is_registered_and_judged_by_the_store(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    p = make(store, wall, Job(), every=10, overdue_after=25)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    state = await store.job("rollup")
    assert state is not None
    assert (state.overdue_after, state.overdue) == (25.0, False)
    assert state.last_ok_at == T0 + datetime.timedelta(seconds=10)
    await trio.sleep(23)  # nobody serves it: 25 s after its last ok run, at 35
    state = await store.job("rollup")
    assert state is not None
    assert state.overdue


async def test_a_claim_refused_as_paused_is_not_a_store_error(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    p = make(store, wall, Job(), every=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await store.pause("rollup")
        await trio.sleep(25)
        nursery.cancel_scope.cancel()
    skipped = p.statistics().skipped
    assert (skipped["paused"], skipped["store_error"]) == (2, 0)


class OldStore(Store):
    """A store written to the interface before pausing, triggers and overdue_after."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    @property
    def serving(self) -> bool:
        return self.inner.serving

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.inner.serve(task_status=task_status)

    async def register(self, name: str, *, schedule: str, anchor: datetime.datetime) -> Any:
        return await self.inner.register(name, schedule=schedule, anchor=anchor)

    async def claim(
        self,
        name: str,
        *,
        slot: datetime.datetime,
        node: str,
        fence: int | None,
        started_at: datetime.datetime,
    ) -> int | None:
        return await self.inner.claim(
            name, slot=slot, node=node, fence=fence, started_at=started_at
        )

    async def finish(self, name: str, run: int, **record: Any) -> None:
        await self.inner.finish(name, run, **record)

    async def jobs(self) -> Any:
        return await self.inner.jobs()

    async def job(self, name: str) -> Any:
        return await self.inner.job(name)

    async def runs(self, name: str, *, limit: int = 20) -> Any:
        return await self.inner.runs(name, limit=limit)


async def test_a_store_written_before_these_operations_keeps_working(
    autojump_clock: trio.testing.MockClock, wall: Wall
) -> None:
    store = OldStore()
    job = Job()
    p = make(store, wall, job)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        await nursery.start(p.serve)
        await trio.sleep(12)
        assert isinstance(await p.trigger(), Started)  # claimed as a scheduled tick
        with pytest.raises(NotImplementedError, match="OldStore cannot pause jobs"):
            await store.pause("rollup")
        with pytest.raises(NotImplementedError, match="OldStore cannot trigger jobs"):
            await store.trigger("rollup")
        await trio.sleep(1)
        # A record compares equal to one made without the store's clock readings.
        assert await store.job("rollup") == JobState(
            name="rollup",
            schedule="every 10s",
            anchor=T0 + datetime.timedelta(seconds=10),
            last_slot=T0 + datetime.timedelta(seconds=12),
            last_outcome="ok",
            last_node=p._node,
            last_started_at=T0 + datetime.timedelta(seconds=12),
            last_finished_at=T0 + datetime.timedelta(seconds=12),
        )
        nursery.cancel_scope.cancel()
    assert job.starts == [10.0, 12.0]


async def test_a_process_that_loses_every_claim_is_not_overdue(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    # Both processes tick every 10 s; b's ticks come a little later (jitter), so a claims
    # every slot and b is refused each one: the job runs fine, and b is not overdue.
    a_job, b_job = Job(), Job()
    a = make(store, wall, a_job, overdue_after=25)
    b = make(store, wall, b_job, overdue_after=25, jitter=1, jitter_rng=random.Random(1))
    with capture_events(b) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
    assert (a_job.starts, b_job.starts) == ([10.0, 20.0, 30.0, 40.0, 50.0], [])
    assert events.of(Overdue) == []
    assert b.statistics().skipped["claimed"] == 5


async def test_a_store_trigger_runs_in_serves_context(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    where: contextvars.ContextVar[str] = contextvars.ContextVar("where")
    seen: list[str] = []

    async def job() -> None:
        seen.append(where.get())

    p = Periodic(run=job, every=100, store=store, wall_clock=wall, name="c")

    async def serve_job(task_status: trio.TaskStatus[None]) -> None:
        where.set("serve")
        await p.serve(task_status=task_status)

    async def operator() -> None:
        where.set("operator")
        await store.trigger("c")

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_job)
        await trio.sleep(50)
        nursery.start_soon(operator)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert seen == ["serve", "serve"]  # the trigger at 50, the slot at 100


async def test_a_local_trigger_queued_behind_a_store_trigger_claims_its_own_time(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    pytest.importorskip("cronsim")

    async def when() -> bool:
        await trio.sleep(20)
        return True

    job = Job()
    p = make(store, wall, job, every=None, cron="* * * * *", when=when)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve)
        await trio.sleep(65)  # the tick of 60 is in its guard until 80
        await store.trigger("rollup")  # waits for it, then its own guard: 80 to 100
        await trio.sleep(5)
        started = await p.trigger()  # waits for both: its time is read at 100
        nursery.cancel_scope.cancel()
    assert isinstance(started, Started)
    assert started.fire_time == T0 + datetime.timedelta(seconds=100)
    assert job.starts == [80.0, 100.0, 120.0]


async def test_a_trigger_leaves_the_slots_of_the_schedule_to_run(
    autojump_clock: trio.testing.MockClock, store: MemoryStore, wall: Wall
) -> None:
    # Slot 200's tick comes at 242.4 (jitter); a trigger at 220 claims beside the schedule.
    job = Job()
    p = make(store, wall, job, every=100, jitter=50, jitter_rng=random.Random(1))
    with capture_events(p) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(p.serve)
            await trio.sleep(220)
            assert isinstance(await p.trigger(), Started)
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    assert [round(t, 1) for t in job.starts] == [106.7, 220.0, 242.4]
    assert events.of(Skipped) == []
    runs = await store.runs("rollup")
    assert [(r.slot - T0).total_seconds() for r in runs] == [200.0, 220.0, 100.0]
    assert [r.triggered for r in runs] == [False, True, False]
