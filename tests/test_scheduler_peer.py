"""Periodic(peer=...): the leadership guard, fences and leadership loss, in virtual time."""

from __future__ import annotations

import functools
import logging
import math

import pytest
import trio
import trio.testing

import periodic
from periodic import Periodic
from periodic.events import (
    CancelReason,
    Event,
    Finished,
    LeadershipChanged,
    Outcome,
    Skipped,
    SkipReason,
    Started,
)
from periodic.exceptions import JobNotStarted
from periodic.testing import LocalPeer, capture_events, manual, sync_tick


async def sleeper(seconds: float) -> None:
    await trio.sleep(seconds)


def job(peer: LocalPeer | None, *, seconds: float = 0.5, **options: object) -> Periodic:
    return Periodic(
        run=functools.partial(sleeper, seconds),
        every=1,
        peer=peer,
        name="guarded",
        **options,  # type: ignore[arg-type]
    )


async def test_not_leader_skips_every_tick(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer(leader=False)
    await nursery.start(peer.serve)
    p = job(peer)
    events = await periodic.testing.serve_for(p, 2.5)
    assert events == [
        Skipped(job="guarded", reason=SkipReason.NOT_LEADER, scheduled_at=1.0),
        Skipped(job="guarded", reason=SkipReason.NOT_LEADER, scheduled_at=2.0),
    ]
    assert p.statistics().skipped["not_leader"] == 2


async def test_a_peer_not_served_is_never_leader_and_says_so_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    peer = LocalPeer()
    with caplog.at_level(logging.WARNING, logger="periodic"):
        events = await periodic.testing.serve_for(job(peer), 3.5)
    assert [e.reason for e in events.of(Skipped)] == [SkipReason.NOT_LEADER] * 3
    warnings = [r for r in caplog.records if "not being served" in r.getMessage()]
    assert len(warnings) == 1
    assert peer.fence is None
    assert not peer.is_leader()


async def test_runs_carry_the_fence(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)
    fences: list[int | None] = []

    async def record() -> None:
        fences.append(periodic.current_run().fence)

    p = Periodic(run=record, every=1, peer=peer)
    events = await periodic.testing.serve_for(p, 2.5)
    assert fences == [1, 1]
    assert [e.fence for e in events.of(Started)] == [1, 1]


async def test_losing_leadership_cancels_the_runs_started_under_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = job(peer, seconds=10, on_overlap="ignore")
    with capture_events() as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(1.5)
            peer.set_leader(False, reason="test")
            await trio.sleep(1)  # the tick at 2.0 is not leader
            peer.set_leader(True)
            await trio.sleep(1)  # the tick at 3.0 runs under fence 2
            inner.cancel_scope.cancel()
    finished = events.of(Finished)
    assert (finished[0].run_id, finished[0].outcome, finished[0].cancel_reason) == (
        1,
        Outcome.CANCELLED,
        CancelReason.LEADERSHIP_LOST,
    )
    assert finished[0].duration == 0.5
    assert [(e.run_id, e.fence) for e in events.of(Started)] == [(1, 1), (2, 2)]
    assert [e.reason for e in events.of(Skipped)] == [SkipReason.NOT_LEADER]
    changes = events.of(LeadershipChanged)
    assert [(c.gained, c.fence, c.reason) for c in changes] == [
        (False, 1, "test"),
        (True, 2, "set by hand"),
    ]


async def test_a_new_fence_cancels_runs_of_the_old_one(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = job(peer, seconds=10)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(1.5)
            peer.set_leader(False)  # lost and regained before the scheduler looks:
            peer.set_leader(True)  # the run's fence 1 is stale all the same
            await trio.sleep(0.25)
            inner.cancel_scope.cancel()
    [first, *_] = events.of(Finished)
    assert (first.run_id, first.cancel_reason) == (1, CancelReason.LEADERSHIP_LOST)
    assert peer.fence == 2


async def test_runs_may_keep_going_after_leadership_is_lost(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = job(peer, seconds=2, cancel_on_leadership_loss=False)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(1.5)
            peer.set_leader(False)
            await trio.sleep(2)
            inner.cancel_scope.cancel()
    [finished] = events.of(Finished)
    assert (finished.outcome, finished.duration) == (Outcome.OK, 2.0)
    assert [e.reason for e in events.of(Skipped)] == [SkipReason.NOT_LEADER] * 2


async def test_leadership_loss_during_the_shutdown_grace_still_cancels(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = job(peer, seconds=10, job_shutdown=5)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(1.5)
            inner.cancel_scope.cancel()
            nursery.start_soon(lose_later, peer, 1.0)
    assert trio.current_time() == 2.5
    [finished] = events.of(Finished)
    assert finished.cancel_reason is CancelReason.LEADERSHIP_LOST


async def lose_later(peer: LocalPeer, seconds: float) -> None:
    await trio.sleep(seconds)
    peer.set_leader(False)


async def test_the_when_guard_comes_before_leadership(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer(leader=False)
    await nursery.start(peer.serve)
    events = await periodic.testing.serve_for(job(peer, when=lambda: False), 1.5)
    assert [e.reason for e in events.of(Skipped)] == [SkipReason.GUARD]


async def test_leadership_comes_before_the_overlap_policy(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)
    p = job(peer, seconds=10, on_overlap="stop_previous", cancel_on_leadership_loss=False)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(1.5)
            peer.set_leader(False)
            await trio.sleep(1)
            inner.cancel_scope.cancel()
    # The tick at 2.0 is not leader: it stops nothing.
    assert [e.reason for e in events.of(Skipped)] == [SkipReason.NOT_LEADER]
    assert not events.of("stopped_previous")


async def test_leadership_lost_while_stop_previous_waits_starts_nothing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer()
    await nursery.start(peer.serve)

    async def slow_to_stop() -> None:
        try:
            await trio.sleep(10)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.5)

    p = Periodic(
        run=slow_to_stop,
        every=1,
        peer=peer,
        on_overlap="stop_previous",
        cancel_on_leadership_loss=False,
    )
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(2.25)  # the tick at 2.0 waits for run 1 until 2.5
            peer.set_leader(False)
            await trio.sleep(0.5)
            inner.cancel_scope.cancel()
    assert [e.run_id for e in events.of(Started)] == [1]
    assert events.assert_emitted(Skipped, reason="not_leader").scheduled_at == 2.0


async def test_sync_tick_reports_not_leader(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LocalPeer(leader=False)
    await nursery.start(peer.serve)
    p = manual(job(peer))
    await nursery.start(p.serve)
    with pytest.raises(JobNotStarted) as info:
        await sync_tick(p)
    assert info.value.reason is SkipReason.NOT_LEADER
    peer.set_leader(True)
    finished = await sync_tick(p)
    assert finished.outcome is Outcome.OK


def test_peer_options_are_checked() -> None:
    with pytest.raises(TypeError, match=r"peer must be None or a periodic\.peers\.Peer"):
        Periodic(run=functools.partial(sleeper, 1), every=1, peer=object())
    with pytest.raises(TypeError, match="cancel_on_leadership_loss must be a bool"):
        Periodic(run=functools.partial(sleeper, 1), every=1, cancel_on_leadership_loss="no")


async def test_local_peer_basics(autojump_clock: trio.testing.MockClock) -> None:
    peer = LocalPeer(name="e", node="n1")
    assert (peer.node, peer.name, peer.leader(), peer.fence) == ("n1", "e", None, None)
    changes: list[Event] = []
    with periodic.subscribe(changes.append):
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            assert (peer.is_leader(), peer.fence, peer.leader()) == (True, 1, "n1")
            with pytest.raises(RuntimeError, match="already being served"):
                await peer.serve()
            nursery.start_soon(lose_later, peer, 1)
            with trio.fail_after(2):
                await peer.wait_change()
            assert (peer.is_leader(), peer.fence) == (False, None)
            nursery.cancel_scope.cancel()
    assert [(c.gained, c.reason) for c in changes if isinstance(c, LeadershipChanged)] == [
        (True, "served"),
        (False, "set by hand"),
    ]
    assert "follower" in repr(peer)
    with pytest.raises(TypeError, match="leader must be a bool"):
        peer.set_leader(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="leader must be a bool"):
        LocalPeer(leader="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        LocalPeer(name="")


async def test_leadership_changes_are_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    peer = LocalPeer(name="cluster", node="n1")
    with caplog.at_level(logging.INFO, logger="periodic"):
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            peer.set_leader(False, reason="demoted")
            nursery.cancel_scope.cancel()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("INFO", "peer 'n1' is now leader of 'cluster' with fence 1 (served)"),
        ("WARNING", "peer 'n1' lost the leadership of 'cluster' (fence 1): demoted"),
    ]
    assert caplog.records[1].periodic_fence == 1  # type: ignore[attr-defined]


class LeasedPeer(periodic.peers.PeerBase):
    """A peer whose leadership runs out at ``until`` unless renewed: a lease, by hand."""

    def __init__(self, until: float) -> None:
        super().__init__(name="leased", node="n1")
        self.until = until

    def is_leader(self) -> bool:
        return super().is_leader() and trio.current_time() < self.until

    def lease_deadline(self) -> float:
        return self.until if self.is_leader() else -math.inf

    def renew(self, until: float) -> None:
        self.until = until
        self._lease_moved_now()

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._begin_serving()
        try:
            self._set_leader(1, "test")
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._end_serving()


async def steps_job(steps: list[float]) -> None:
    await trio.sleep(3)
    steps.append(trio.current_time())


async def test_a_run_never_outlives_the_lease_it_started_under(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LeasedPeer(until=2.5)
    await nursery.start(peer.serve)
    steps: list[float] = []
    p = Periodic(run=functools.partial(steps_job, steps), every=100, initial_delay=1, peer=peer)
    events = await periodic.testing.serve_for(p, 5)
    [finished] = events.of(Finished)
    assert (finished.outcome, finished.cancel_reason, finished.duration) == (
        Outcome.CANCELLED,
        CancelReason.LEADERSHIP_LOST,
        1.5,
    )
    assert steps == []


async def test_a_renewed_lease_lets_the_run_finish(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LeasedPeer(until=2.5)
    await nursery.start(peer.serve)
    steps: list[float] = []
    p = Periodic(run=functools.partial(steps_job, steps), every=100, initial_delay=1, peer=peer)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(2)
            peer.renew(10)
            await trio.sleep(3)
            inner.cancel_scope.cancel()
    assert [f.outcome for f in events.of(Finished)] == [Outcome.OK]
    assert steps == [4.0]


async def test_a_frozen_process_wakes_with_its_runs_already_cancelled(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LeasedPeer(until=3.5)
    await nursery.start(peer.serve)
    steps: list[float] = []
    p = Periodic(run=functools.partial(steps_job, steps), every=100, initial_delay=1, peer=peer)
    with capture_events(p) as events:
        async with trio.open_nursery() as inner:
            await inner.start(p.serve)
            await trio.sleep(1.5)
            # A freeze: both the job's sleep (due 4.0) and the lease (3.5) are past when
            # the process wakes. The job must not take its next step.
            autojump_clock.jump(10)
            await trio.sleep(1)
            inner.cancel_scope.cancel()
    [finished] = events.of(Finished)
    assert finished.cancel_reason is CancelReason.LEADERSHIP_LOST
    assert steps == []


async def test_a_job_timeout_before_the_lease_end_is_a_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peer = LeasedPeer(until=50)
    await nursery.start(peer.serve)
    p = Periodic(
        run=functools.partial(sleeper, 10), every=100, initial_delay=1, peer=peer, timeout=2
    )
    events = await periodic.testing.serve_for(p, 5)
    [finished] = events.of(Finished)
    assert (finished.outcome, finished.cancel_reason) == (Outcome.TIMEOUT, None)
