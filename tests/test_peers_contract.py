"""The contract every peer keeps, run against each backend.

The backends: :class:`LocalPeer` (set by hand), :class:`SQLitePeer` (a file in
``tmp_path``), :class:`PostgresPeer` (the test server; skipped when it is absent unless
``PERIODIC_REQUIRE_POSTGRES=1``) and the ``FileLockPeer`` of the "Writing a peer" page,
so that example keeps working. The database peers run on real time with a short ttl;
every wait is bounded.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from example_support import load_example
from pg_support import query, require_postgres, unique_table
from trio.testing import wait_all_tasks_blocked

import periodic
from periodic import Periodic, current_run
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
from periodic.peers import LocalPeer, Peer
from periodic.peers.sqlite import SQLitePeer
from periodic.testing import capture_events, manual, sync_tick, tick

TTL = 1.0
# Generous: a loaded CI machine may take a while to run a statement in a worker thread.
BOUND = 10.0


@attrs.define
class Backend:
    """How to make peers of one kind that share one election, and how to upset them."""

    kind: str
    make: Callable[..., Peer]
    #: Peers made by ``make`` share one election (LocalPeers don't: each is set by hand).
    shared: bool = True
    #: Make this served leader lose its leadership to another node, or None if impossible.
    take_over: Callable[[Peer], None] | None = None
    #: How long to watch a leader to see that it stays leader (renewals included).
    settle: float = 0.0
    cleanup: list[Callable[[], object]] = attrs.Factory(list)

    def usurp(self, peer: Peer) -> None:
        assert self.take_over is not None
        self.take_over(peer)

    def follower(self) -> Peer:
        """A peer that does not lead when served while a peer from ``make`` leads."""
        return self.make() if self.shared else LocalPeer(leader=False)


def _local() -> Backend:
    def take_over(peer: Peer) -> None:
        assert isinstance(peer, LocalPeer)
        peer.set_leader(False, reason="taken over")

    return Backend("local", make=lambda **kw: LocalPeer(**kw), shared=False, take_over=take_over)


def _sqlite(tmp_path: Path) -> Backend:
    path = tmp_path / "peers.db"

    def take_over(peer: Peer) -> None:
        with sqlite3.connect(path, isolation_level=None) as conn:
            conn.execute(
                "UPDATE periodic_peers SET node = 'usurper', epoch = epoch + 1, "
                "expires_at = expires_at + 3600 WHERE name = 'contract'"
            )
        conn.close()

    return Backend(
        "sqlite",
        make=lambda **kw: SQLitePeer(path, name="contract", ttl=TTL, **kw),
        take_over=take_over,
        settle=1.5 * TTL,
    )


def _postgres() -> Backend:
    dsn = require_postgres()
    from periodic.peers.postgres import PostgresPeer

    table = unique_table()

    def take_over(peer: Peer) -> None:
        query(
            dsn,
            f"UPDATE {table} SET node = 'usurper', epoch = epoch + 1, "
            "expires_at = expires_at + interval '1 hour' WHERE name = 'contract'",
        )

    backend = Backend(
        "postgres",
        make=lambda **kw: PostgresPeer(dsn, name="contract", ttl=TTL, table=table, **kw),
        take_over=take_over,
        settle=1.5 * TTL,
    )
    backend.cleanup.append(lambda: query(dsn, f"DROP TABLE IF EXISTS {table}, {table}_members"))
    return backend


def _filelock(tmp_path: Path) -> Backend:
    peer_class = load_example("filelock_peer").FileLockPeer
    path = tmp_path / "leader.lock"
    # A held flock cannot be taken away: no take_over.
    return Backend("filelock", make=lambda **kw: peer_class(path, poll=0.05, **kw), settle=0.3)


@pytest.fixture(
    params=[
        "local",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        "filelock",
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "local":
        made = _local()
    elif kind == "sqlite":
        made = _sqlite(tmp_path)
    elif kind == "postgres":
        made = _postgres()
    else:
        made = _filelock(tmp_path)
    yield made
    for fn in made.cleanup:
        fn()


@pytest.fixture
def shared(backend: Backend) -> Backend:
    """A backend whose peers share one election."""
    if not backend.shared:
        pytest.skip(f"{backend.kind} peers do not share an election")
    return backend


@pytest.fixture
def usurpable(backend: Backend) -> Backend:
    """A backend that can take the leadership away from a served leader."""
    if backend.take_over is None:
        pytest.skip(f"a {backend.kind} peer's leadership cannot be taken away")
    return backend


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    with periodic.subscribe(seen.append):
        yield seen


async def wait_until(peer: Peer, leading: bool) -> None:
    with trio.fail_after(BOUND):
        while peer.is_leader() is not leading:
            await peer.wait_change()


@pytest.fixture
async def serving() -> AsyncIterator[Callable[[Peer], Any]]:
    """``await serving(peer)``: serve it until the test ends."""
    async with trio.open_nursery() as nursery:

        async def serve(peer: Peer) -> None:
            await nursery.start(peer.serve)

        yield serve
        nursery.cancel_scope.cancel()


def changes(events: list[Event], peer: Peer) -> list[LeadershipChanged]:
    return [e for e in events if isinstance(e, LeadershipChanged) and e.node == peer.node]


def assert_consistent(peer: Peer) -> None:
    if peer.is_leader():
        assert isinstance(peer.fence, int)
        assert peer.fence > 0
        assert peer.leader() == peer.node
    else:
        assert peer.fence is None
        assert peer.leader() != peer.node


# -- not served ---------------------------------------------------------------------------


async def test_a_peer_not_served_is_never_leader_and_says_so_once(
    backend: Backend, caplog: pytest.LogCaptureFixture, events: list[Event]
) -> None:
    peer = backend.make(node="idle")
    with caplog.at_level(logging.WARNING, logger="periodic"):
        for _ in range(3):
            assert not peer.is_leader()
            assert peer.fence is None
            assert peer.leader() is None
        await trio.sleep(0.05)
        assert not peer.is_leader()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not being served" in warnings[0].getMessage()
    assert "'idle'" in warnings[0].getMessage()
    assert changes(events, peer) == []


async def test_a_job_with_a_peer_not_served_starts_no_run(
    backend: Backend, nursery: trio.Nursery
) -> None:
    job = Periodic(run=lambda: None, every=1, peer=backend.make(), mode="manual")
    await nursery.start(job.serve)

    with pytest.raises(JobNotStarted) as info:
        await sync_tick(job)

    assert info.value.reason == SkipReason.NOT_LEADER


# -- serving ------------------------------------------------------------------------------


async def test_served_alone_it_leads_with_a_fence(
    backend: Backend, serving: Callable[[Peer], Any], events: list[Event]
) -> None:
    peer = backend.make(node="alone")
    await serving(peer)
    await wait_until(peer, leading=True)

    assert_consistent(peer)
    assert peer.node == "alone"
    fence = peer.fence
    (gained,) = changes(events, peer)
    assert (gained.gained, gained.fence, gained.leader) == (True, fence, "alone")

    # It keeps leading, under the same fence, for as long as nothing happens.
    with trio.move_on_after(backend.settle):
        await peer.wait_change()
        pytest.fail(f"leadership changed while nothing happened: {changes(events, peer)}")
    assert peer.is_leader()
    assert peer.fence == fence
    assert_consistent(peer)


async def test_a_second_peer_follows_and_knows_the_leader(
    shared: Backend, serving: Callable[[Peer], Any], events: list[Event]
) -> None:
    first = shared.make(node="first")
    await serving(first)
    await wait_until(first, leading=True)
    second = shared.make(node="second")
    await serving(second)

    with trio.fail_after(BOUND):
        while second.leader() != "first":
            await trio.sleep(0.01)

    assert first.is_leader()
    assert not second.is_leader()
    assert_consistent(first)
    assert_consistent(second)
    assert changes(events, second) == []


async def test_serving_twice_raises(backend: Backend, serving: Callable[[Peer], Any]) -> None:
    peer = backend.make()
    await serving(peer)

    with pytest.raises(RuntimeError, match="already being served"):
        await peer.serve()

    await wait_until(peer, leading=True)  # the first serve is unharmed


async def test_wait_change_wakes_on_gain_and_on_loss(
    usurpable: Backend, serving: Callable[[Peer], Any]
) -> None:
    peer = usurpable.make()
    woke: list[tuple[bool, int | None]] = []

    async def watch() -> None:
        while True:
            await peer.wait_change()
            woke.append((peer.is_leader(), peer.fence))

    async def woken(times: int) -> None:
        with trio.fail_after(BOUND):
            while len(woke) < times:
                await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await wait_all_tasks_blocked()
        assert woke == []
        await serving(peer)
        await wait_until(peer, leading=True)
        await woken(1)
        fence = peer.fence
        assert woke == [(True, fence)]

        usurpable.usurp(peer)
        await wait_until(peer, leading=False)
        await woken(2)
        assert woke == [(True, fence), (False, None)]
        if usurpable.shared:
            assert peer.leader() == "usurper"
        nursery.cancel_scope.cancel()


async def test_stopping_steps_down_and_says_so(backend: Backend, events: list[Event]) -> None:
    peer = backend.make()
    woke = trio.Event()

    async def watch() -> None:
        await peer.wait_change()
        woke.set()

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await wait_until(peer, leading=True)
            fence = peer.fence
            outer.start_soon(watch)
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        with trio.fail_after(BOUND):
            await woke.wait()

    assert not peer.is_leader()
    assert peer.fence is None
    assert_consistent(peer)
    lost = changes(events, peer)[-1]
    assert lost == LeadershipChanged(
        name=lost.name, node=peer.node, gained=False, fence=fence, leader=None, reason="stopped"
    )


async def test_a_stopped_peer_can_be_served_again(
    backend: Backend, serving: Callable[[Peer], Any]
) -> None:
    peer = backend.make()
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer, leading=True)
        first = peer.fence
        assert first is not None
        nursery.cancel_scope.cancel()

    await serving(peer)
    await wait_until(peer, leading=True)

    assert peer.fence is not None
    assert peer.fence >= first
    assert_consistent(peer)


async def test_a_stopped_leader_hands_over(
    shared: Backend, serving: Callable[[Peer], Any]
) -> None:
    first = shared.make(node="first")
    second = shared.make(node="second")
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        await wait_until(first, leading=True)
        old = first.fence
        await serving(second)
        nursery.cancel_scope.cancel()

    await wait_until(second, leading=True)

    assert second.fence is not None
    assert old is not None
    assert second.fence > old
    assert second.leader() == "second"


# -- with a Periodic ----------------------------------------------------------------------


def fence_job(peer: Peer, **options: Any) -> Periodic:
    async def report_fence() -> int | None:
        return current_run().fence

    return manual(Periodic(run=report_fence, every=60, peer=peer, name="fenced", **options))


async def test_a_run_carries_the_fence(
    backend: Backend, serving: Callable[[Peer], Any], nursery: trio.Nursery, events: list[Event]
) -> None:
    peer = backend.make()
    await serving(peer)
    await wait_until(peer, leading=True)
    job = fence_job(peer)
    await nursery.start(job.serve)

    finished = await sync_tick(job)

    assert finished.outcome == Outcome.OK
    assert finished.result == peer.fence
    (started,) = [e for e in events if isinstance(e, Started)]
    assert started.fence == peer.fence
    assert started.job == "fenced"


async def test_a_follower_tick_starts_no_run(
    backend: Backend, serving: Callable[[Peer], Any], nursery: trio.Nursery, events: list[Event]
) -> None:
    leader = backend.make()
    await serving(leader)
    await wait_until(leader, leading=True)
    follower = backend.follower()
    await serving(follower)
    job = fence_job(follower)
    await nursery.start(job.serve)

    with pytest.raises(JobNotStarted) as info:
        await sync_tick(job)

    assert info.value.reason == SkipReason.NOT_LEADER
    assert [e for e in events if isinstance(e, (Skipped, Started))] == [
        Skipped(
            job="fenced", reason=SkipReason.NOT_LEADER, scheduled_at=info.value.event.scheduled_at
        )
    ]
    assert job.statistics().skipped["not_leader"] == 1


async def test_a_run_is_cancelled_when_leadership_is_lost(
    usurpable: Backend, serving: Callable[[Peer], Any], nursery: trio.Nursery
) -> None:
    peer = usurpable.make()
    await serving(peer)
    await wait_until(peer, leading=True)
    running = trio.Event()

    async def long_job() -> None:
        running.set()
        await trio.sleep_forever()

    job = manual(Periodic(run=long_job, every=60, peer=peer, name="long"))
    await nursery.start(job.serve)
    with capture_events(job) as captured:
        await tick(job)
        await running.wait()
        usurpable.usurp(peer)
        with trio.fail_after(BOUND):
            finished = await captured.wait_for(Finished)

    assert finished.outcome == Outcome.CANCELLED
    assert finished.cancel_reason == CancelReason.LEADERSHIP_LOST


# -- quorum (the database peers) -----------------------------------------------------------


@pytest.fixture
def with_members(backend: Backend) -> Backend:
    """A backend whose peers keep members, and so take a ``quorum``."""
    if backend.kind not in ("sqlite", "postgres"):
        pytest.skip(f"{backend.kind} peers keep no members")
    return backend


async def members_become(peer: Peer, expected: list[str]) -> None:
    members = getattr(peer, "members")  # noqa: B009 (not every Peer has it)
    with trio.fail_after(BOUND):
        while await members() != expected:
            await trio.sleep(0.02)


async def test_members_are_the_served_peers_and_a_stopped_one_leaves(
    with_members: Backend, serving: Callable[[Peer], Any]
) -> None:
    second, first = with_members.make(node="second"), with_members.make(node="first")
    await serving(second)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        await members_become(second, ["first", "second"])  # sorted
        await members_become(first, ["first", "second"])
        nursery.cancel_scope.cancel()

    # A clean stop deletes its row at once: no waiting for it to expire.
    assert await second.members() == ["second"]  # type: ignore[attr-defined]


async def test_below_its_quorum_a_peer_never_leads(
    with_members: Backend, serving: Callable[[Peer], Any], events: list[Event]
) -> None:
    peer = with_members.make(node="lonely", quorum=2)
    await serving(peer)
    await members_become(peer, ["lonely"])

    with trio.move_on_after(with_members.settle):
        await peer.wait_change()
        pytest.fail(f"leadership changed below the quorum: {changes(events, peer)}")
    assert not peer.is_leader()
    assert peer.leader() is None
    assert_consistent(peer)


async def test_a_leader_below_its_quorum_steps_down_and_a_new_member_restores_it(
    with_members: Backend, nursery: trio.Nursery, events: list[Event]
) -> None:
    peers = [with_members.make(node=node, quorum=2) for node in ("first", "second")]
    scopes = [trio.CancelScope() for _ in peers]
    stopped = [trio.Event() for _ in peers]

    async def serve(i: int, task_status: trio.TaskStatus[None]) -> None:
        with scopes[i]:
            await peers[i].serve(task_status=task_status)
        stopped[i].set()

    for i in range(2):
        await nursery.start(serve, i)
    with trio.fail_after(BOUND):
        while not any(p.is_leader() for p in peers):
            await trio.sleep(0.02)
    leader = next(p for p in peers if p.is_leader())
    fence = leader.fence
    other = 1 - peers.index(leader)
    scopes[other].cancel()  # the only other member stops cleanly
    await stopped[other].wait()

    await wait_until(leader, leading=False)  # at its next round, within ttl / 2
    assert changes(events, leader)[-1] == LeadershipChanged(
        name="contract",
        node=leader.node,
        gained=False,
        fence=fence,
        leader=None,
        reason="quorum_lost",
    )
    third = with_members.make(node="third", quorum=2)
    await nursery.start(third.serve)
    with trio.fail_after(BOUND):
        while not (leader.is_leader() or third.is_leader()):
            await trio.sleep(0.02)
    assert_consistent(leader)
    assert_consistent(third)
    nursery.cancel_scope.cancel()
