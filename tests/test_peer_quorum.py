"""Quorum: a lease peer leads only while enough members of its election are alive.

The first part runs :class:`LeasePeer` against ``Hall``, an election kept in memory on
Trio's clock, whose calls run in Trio's own thread: on a ``MockClock`` every time is
exact. The second part runs ``read_elections``, ``members()`` and the members table of
the SQLite and PostgreSQL peers against real databases (the contract suite,
tests/test_peers_contract.py, has the rest; tests/test_peers_cluster.py the processes).
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing
from pg_support import query, require_postgres, unique_table

import periodic
from periodic.events import Event, LeadershipChanged
from periodic.peers import DatabaseConfigError, Election, LeaseBackend, LeasePeer, SQLitePeer
from periodic.peers import _lease as lease_module
from periodic.peers import sqlite as sqlite_peers

T = TypeVar("T")


# -- an election in memory ----------------------------------------------------------------------


@attrs.define
class Lease:
    holder: str
    epoch: int
    expires: float


@attrs.define
class Hall:
    """The database: leases and members of every election, on Trio's clock."""

    leases: dict[str, Lease] = attrs.Factory(dict)
    members: dict[tuple[str, str], float] = attrs.Factory(dict)
    #: Every lease taken or renewed: (time, holder, live members then).
    writes: list[tuple[float, str, int]] = attrs.Factory(list)

    def alive(self, name: str) -> list[str]:
        now = trio.current_time()
        return sorted(n for (e, n), ends in self.members.items() if e == name and ends > now)


class Seat(LeaseBackend):
    """One peer's connection to a ``Hall``. ``dead``: its process was killed, so it says
    goodbye to nobody (no leave, no release)."""

    membership = True

    def __init__(self, hall: Hall) -> None:
        self.hall = hall
        self.dead = False

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        now = trio.current_time()
        lease = self.hall.leases.get(name)
        if lease is None:
            lease = self.hall.leases[name] = Lease(node, 1, now + ttl)
        elif lease.holder == node or lease.expires <= now:
            if lease.holder != node:
                lease.holder, lease.epoch = node, lease.epoch + 1
            lease.expires = now + ttl
        else:
            return lease.holder, lease.epoch
        self.hall.writes.append((now, lease_module.node_of(node), len(self.hall.alive(name))))
        return lease.holder, lease.epoch

    def elect(
        self, name: str, node: str, ttl: float, *, member: str, quorum: int
    ) -> tuple[tuple[str, int] | None, int | None]:
        self.hall.members[name, member] = trio.current_time() + ttl
        alive = len(self.hall.alive(name))
        if alive >= quorum:
            return self.acquire(name, node, ttl), alive
        lease = self.hall.leases.get(name)
        return (None if lease is None else (lease.holder, lease.epoch)), alive

    def members(self, name: str) -> list[str]:
        return self.hall.alive(name)

    def leave(self, name: str, member: str) -> None:
        if not self.dead:
            self.hall.members.pop((name, member), None)

    def release(self, name: str, node: str) -> None:
        lease = self.hall.leases.get(name)
        if not self.dead and lease is not None and lease.holder == node:
            lease.expires = trio.current_time() - 1

    def close(self) -> None:
        return


class InlinePeer(LeasePeer):
    """Runs the backend's calls in Trio's thread, in virtual time."""

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint()
        return fn(*args)


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every random wait at its longest, so that retry times are exact."""
    monkeypatch.setattr("periodic.peers._lease.random.uniform", lambda low, high: high)


@pytest.fixture
def timed_events() -> Iterator[list[tuple[float, Event]]]:
    seen: list[tuple[float, Event]] = []
    with periodic.subscribe(lambda e: seen.append((trio.current_time(), e))):
        yield seen


def changes(seen: list[tuple[float, Event]]) -> list[tuple[float, str, bool, int | None, str]]:
    return [
        (t, e.node, e.gained, e.fence, e.reason)
        for t, e in seen
        if isinstance(e, LeadershipChanged)
    ]


@attrs.define
class Member:
    peer: InlinePeer
    seat: Seat
    scope: trio.CancelScope

    def kill(self) -> None:
        self.seat.dead = True
        self.scope.cancel()


async def join(
    nursery: trio.Nursery, hall: Hall, node: str, *, quorum: int = 2, ttl: float = 10.0
) -> Member:
    seat = Seat(hall)
    peer = InlinePeer(seat, name="e", ttl=ttl, node=node, quorum=quorum)
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await peer.serve(task_status=task_status)

    await nursery.start(serve)
    return Member(peer, seat, scope)


async def test_the_leader_steps_down_when_members_die_and_a_returning_one_leads(
    autojump_clock: trio.testing.MockClock,
    no_jitter: None,
    timed_events: list[tuple[float, Event]],
) -> None:
    # ttl 10: rounds every 5 s; a member's row lives 10 s from its last round.
    hall = Hall()
    async with trio.open_nursery() as nursery:
        a = await join(nursery, hall, "a")  # rounds at 0, 5, 10, ...
        await trio.sleep(1)
        b = await join(nursery, hall, "b")  # 1, 6, 11, ...
        await trio.sleep(1)
        c = await join(nursery, hall, "c")  # 2, 7, 12, ...
        await trio.sleep(1)
        assert [m.peer.is_leader() for m in (a, b, c)] == [False, True, False]
        assert await b.peer.members() == ["a", "b", "c"]

        await trio.sleep_until(20.5)
        a.kill()  # last round at 20: its row lives until 30
        c.kill()  # last round at 17: until 27
        await trio.sleep_until(30.5)
        assert b.peer.is_leader()  # at 26, a still counted: renewed
        await trio.sleep_until(31.5)
        assert not b.peer.is_leader()  # at 31, alone
        assert await b.peer.members() == ["b"]

        await trio.sleep_until(40)
        await join(nursery, hall, "c")  # the lease of b ended at 36: c takes it at 40
        await trio.sleep_until(50)
        nursery.cancel_scope.cancel()

    assert changes(timed_events) == [
        (1.0, "b", True, 1, "elected"),
        (31.0, "b", False, 1, "quorum_lost"),
        (40.0, "c", True, 2, "elected"),
        (50.0, "c", False, 2, "stopped"),
    ]
    # The lease was never taken or renewed below the quorum.
    assert all(alive >= 2 for _, _, alive in hall.writes), hall.writes
    assert [t for t, node, _ in hall.writes if node == "b"] == [1, 6, 11, 16, 21, 26]


async def test_below_the_quorum_a_held_lease_is_neither_renewed_nor_released(
    autojump_clock: trio.testing.MockClock,
    no_jitter: None,
    timed_events: list[tuple[float, Event]],
) -> None:
    hall = Hall()
    async with trio.open_nursery() as nursery:
        a = await join(nursery, hall, "a")
        b = await join(nursery, hall, "b")
        await trio.sleep(1)
        leader, other = (a, b) if a.peer.is_leader() else (b, a)
        fence = leader.peer.fence
        other.scope.cancel()  # a clean stop: its row is deleted at once
        await trio.sleep(5)  # the leader's next round
        assert not leader.peer.is_leader()
        assert leader.peer.leader() is None
        lease = hall.leases["e"]
        assert lease.holder.startswith(f"{leader.peer.node}/")  # still its row ...
        assert lease.expires == 10.0  # ... as renewed at 0, and left to run out
        nursery.cancel_scope.cancel()
    lost = [c for c in changes(timed_events) if c[1] == leader.peer.node and not c[2]]
    assert lost[0] == (5.0, leader.peer.node, False, fence, "quorum_lost")


async def test_the_same_node_renews_its_own_lease_when_the_quorum_is_back_in_time(
    autojump_clock: trio.testing.MockClock,
    no_jitter: None,
    timed_events: list[tuple[float, Event]],
) -> None:
    hall = Hall()
    async with trio.open_nursery() as nursery:
        a = await join(nursery, hall, "a")  # 0, 5, 10, ...
        await trio.sleep(1)
        b = await join(nursery, hall, "b")  # 1: a's row is alive, b leads
        await trio.sleep(1)
        a.scope.cancel()  # leaves at 2
        await trio.sleep_until(6.5)  # b's round at 6: alone
        assert not b.peer.is_leader()
        await join(nursery, hall, "a")  # 6.5: counts b, but b's lease runs to 11
        await trio.sleep_until(11.5)  # b, at 11: quorum again, and its own row
        assert b.peer.is_leader()
        nursery.cancel_scope.cancel()
    assert [c[1:] for c in changes(timed_events)][:3] == [
        ("b", True, 1, "elected"),
        ("b", False, 1, "quorum_lost"),
        ("b", True, 1, "elected"),  # the same holder, so the same fence
    ]


async def test_a_lone_member_says_once_that_it_waits_for_a_quorum(
    autojump_clock: trio.testing.MockClock, no_jitter: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    hall = Hall()
    async with trio.open_nursery() as nursery:
        await join(nursery, hall, "a", quorum=3)
        await trio.sleep(20)
        await join(nursery, hall, "b", quorum=3)
        await join(nursery, hall, "c", quorum=3)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "live members" in r.getMessage()]
    assert lines[:2] == [
        "peer 'a': election 'e' has 1 of the 3 live members it needs: "
        "nobody leads it until more serve it",
        "peer 'b': election 'e' has 2 of the 3 live members it needs: "
        "nobody leads it until more serve it",
    ]
    assert "peer 'a': election 'e' has its quorum: 3 of 3 live members" in lines
    assert len(lines) == 4  # and c never was short
    (record,) = [r for r in caplog.records if r.getMessage() == lines[0]]
    assert record.levelname == "INFO"
    assert record.periodic_members == 1  # type: ignore[attr-defined]
    assert record.periodic_quorum == 3  # type: ignore[attr-defined]


async def test_rounds_below_the_quorum_are_counted_as_no_quorum(
    autojump_clock: trio.testing.MockClock, no_jitter: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        "periodic.peers._lease._telemetry.record_election", lambda *a: counted.append(a)
    )
    async with trio.open_nursery() as nursery:
        hall = Hall()
        await join(nursery, hall, "a")
        await trio.sleep(6)
        await join(nursery, hall, "b")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert counted == [("e", "no_quorum"), ("e", "no_quorum"), ("e", "leader")]


class Uncounted(Seat):
    """Says it keeps members, but does not count them."""

    def elect(
        self, name: str, node: str, ttl: float, *, member: str, quorum: int
    ) -> tuple[tuple[str, int] | None, int | None]:
        return self.acquire(name, node, ttl), None


async def test_a_count_the_backend_does_not_know_is_a_quorum_of_one_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alone = InlinePeer(Uncounted(Hall()), name="e", ttl=10.0, quorum=1)
    short = InlinePeer(Uncounted(Hall()), name="e", ttl=10.0, quorum=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(alone.serve)
        await nursery.start(short.serve)
        await trio.sleep(1)
        assert alone.is_leader()
        assert not short.is_leader()
        nursery.cancel_scope.cancel()


async def test_a_clean_stop_leaves_and_a_quorum_of_one_leads_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hall = Hall()
    peer = InlinePeer(Seat(hall), name="e", ttl=10.0, node="solo")
    assert peer.quorum == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(1)
        assert peer.is_leader()
        assert await peer.members() == ["solo"]
        nursery.cancel_scope.cancel()
    assert hall.members == {}
    assert hall.alive("e") == []


# -- options ------------------------------------------------------------------------------------


class Plain(LeaseBackend):
    """A backend without members."""

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        return node, 1

    def release(self, name: str, node: str) -> None:
        return

    def close(self) -> None:
        return


@pytest.mark.parametrize(
    ("quorum", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1.0, TypeError),
        (2.5, TypeError),
        (True, TypeError),
        ("2", TypeError),
        (None, TypeError),
    ],
)
def test_quorum_is_an_int_of_at_least_one(quorum: Any, error: type[Exception]) -> None:
    match = r"quorum must be an int >= 1 \(members alive to lead\), got "
    with pytest.raises(error, match=match):
        LeasePeer(Seat(Hall()), name="e", quorum=quorum)


@pytest.mark.parametrize("quorum", [0, 1.5, "3"])
def test_the_database_peers_check_quorum(tmp_path: Path, quorum: Any) -> None:
    from periodic.peers import PostgresPeer

    with pytest.raises((TypeError, ValueError), match="quorum must be an int >= 1"):
        SQLitePeer(tmp_path / "p.db", name="e", quorum=quorum)
    with pytest.raises((TypeError, ValueError), match="quorum must be an int >= 1"):
        PostgresPeer("postgresql://db/app", name="e", quorum=quorum)


def test_a_backend_without_members_takes_a_quorum_of_one_only() -> None:
    assert LeasePeer(Plain(), name="e", quorum=1).quorum == 1
    with pytest.raises(ValueError, match=r"quorum must be 1 with Plain: it keeps no members"):
        LeasePeer(Plain(), name="e", quorum=2)


async def test_members_of_a_backend_without_members_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError, match="Plain keeps no members"):
        await LeasePeer(Plain(), name="e").members()


def test_a_table_too_long_for_its_members_table_takes_a_quorum_of_one_only(
    tmp_path: Path,
) -> None:
    from periodic.peers import PostgresPeer

    table = "t" * 56  # t..._members would be 64 characters
    SQLitePeer(tmp_path / "p.db", name="e", table=table)
    PostgresPeer("postgresql://db/app", name="e", table=f"app.{table}")
    with pytest.raises(ValueError, match="table must leave room for its members table"):
        SQLitePeer(tmp_path / "p.db", name="e", table=table, quorum=2)
    with pytest.raises(ValueError, match="table must leave room for its members table"):
        PostgresPeer("postgresql://db/app", name="e", table=f"app.{table}", quorum=2)
    SQLitePeer(tmp_path / "p.db", name="e", table="t" * 55, quorum=2)


# -- the databases ------------------------------------------------------------------------------

TTL = 1.0
BOUND = 10.0


@attrs.define
class Database:
    kind: str
    #: The election's database: a path or a DSN.
    target: str
    table: str
    make: Callable[..., LeasePeer]
    read: Callable[..., Any]
    execute: Callable[[str], object]
    #: The type of a column that is wrong for a members table's expires_at.
    wrong_expiry: str
    cleanup: list[Callable[[], object]] = attrs.Factory(list)


def _sqlite(tmp_path: Path) -> Database:
    path = str(tmp_path / "peers.db")
    sqlite3.connect(path).close()  # the file exists; no table yet

    def execute(statement: str) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(statement)
        finally:
            conn.close()

    return Database(
        "sqlite",
        path,
        "periodic_peers",
        make=lambda **kw: SQLitePeer(path, **{"name": "e", "ttl": TTL, **kw}),
        read=lambda **kw: sqlite_peers.read_elections(path, **kw),
        execute=execute,
        wrong_expiry="TEXT",
    )


def _postgres() -> Database:
    dsn = require_postgres()
    from periodic.peers import postgres as postgres_peers

    table = unique_table()
    db = Database(
        "postgres",
        dsn,
        table,
        make=lambda **kw: postgres_peers.PostgresPeer(
            dsn, **{"name": "e", "ttl": TTL, "table": table, **kw}
        ),
        read=lambda **kw: postgres_peers.read_elections(dsn, **{"table": table, **kw}),
        execute=lambda statement: query(dsn, statement),
        wrong_expiry="timestamp",
    )
    db.cleanup.append(lambda: query(dsn, f"DROP TABLE IF EXISTS {table}, {table}_members"))
    return db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    made = _sqlite(tmp_path) if request.param == "sqlite" else _postgres()
    yield made
    for fn in made.cleanup:
        fn()


async def wait_until(check: Callable[[], bool], timeout: float = BOUND) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


def near_now(when: datetime.datetime | None, offset: float) -> bool:
    assert when is not None
    assert when.tzinfo is datetime.timezone.utc
    now = datetime.datetime.now(datetime.timezone.utc)
    return abs((when - now).total_seconds() - offset) < 1.0


async def test_read_elections_is_empty_without_the_leases_table(db: Database) -> None:
    assert await db.read() == []
    assert await db.read(table="no_such_table") == []


async def test_read_elections_shows_leader_fence_lease_end_and_live_members(
    db: Database,
) -> None:
    first, second = db.make(node="n-1"), db.make(node="n-2")
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def serve_first(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await first.serve(task_status=task_status)

        await nursery.start(serve_first)
        await wait_until(first.is_leader)
        await nursery.start(second.serve)
        await wait_until(lambda: second.leader() == "n-1")
        fence = first.fence

        (election,) = await db.read()
        assert election.name == "e"
        assert election.leader == "n-1"  # the node, without the serve's token
        assert election.fence == fence
        assert near_now(election.expires_at, TTL)
        assert election.members == ("n-1", "n-2")

        scope.cancel()  # a clean stop: it releases the lease and leaves
        await wait_until(second.is_leader)
        (election,) = await db.read()
        assert election == Election(
            name="e",
            leader="n-2",
            fence=second.fence,
            expires_at=election.expires_at,
            members=("n-2",),
        )
        assert second.fence is not None
        assert fence is not None
        assert second.fence > fence
        last = second.fence
        nursery.cancel_scope.cancel()

    (election,) = await db.read()
    assert election.leader is None  # released
    assert election.fence == last  # the last one
    assert election.expires_at is not None
    assert election.expires_at < datetime.datetime.now(datetime.timezone.utc)
    assert election.members == ()


async def test_an_election_below_its_quorum_shows_its_members_and_no_lease(
    db: Database,
) -> None:
    peer = db.make(node="lonely", quorum=2, name="needs-two")
    other = db.make(node="other", name="alone")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await nursery.start(other.serve)
        await wait_until(other.is_leader)
        with trio.fail_after(BOUND):
            while await peer.members() != ["lonely"]:
                await trio.sleep(0.02)
        assert await other.members() == ["other"]
        assert not peer.is_leader()
        elections = await db.read()
        nursery.cancel_scope.cancel()
    assert [e.name for e in elections] == ["alone", "needs-two"]
    assert elections[1] == Election(
        name="needs-two", leader=None, fence=None, expires_at=None, members=("lonely",)
    )


async def test_without_a_members_table_a_quorum_of_one_leads_and_says_so(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    kind = "timestamptz" if db.kind == "postgres" else "REAL"
    db.execute(
        f"CREATE TABLE {db.table} (name TEXT PRIMARY KEY, node TEXT NOT NULL, "
        f"epoch BIGINT NOT NULL, expires_at {kind} NOT NULL)"
    )
    peer = db.make(node="n", create_table=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer.is_leader)
        with pytest.raises(Exception, match="_members"):  # the driver's: no such table
            await peer.members()
        (election,) = await db.read()
        nursery.cancel_scope.cancel()
    assert (election.leader, election.members) == ("n", ())
    (record,) = [r for r in caplog.records if "records no members" in r.getMessage()]
    assert record.levelname == "INFO"
    assert "quorum=1 needs none" in record.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # A quorum of two cannot do without: an error to fix, as a missing leases table is.
    caplog.clear()
    needy = db.make(create_table=False, quorum=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(needy.serve)
        await wait_until(lambda: any(r.levelno >= logging.ERROR for r in caplog.records))
        assert not needy.is_leader()
        nursery.cancel_scope.cancel()
    (error,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "this needs a fix" in error.getMessage()
    assert f"{db.table}_members" in error.getMessage()


async def test_a_members_table_of_the_wrong_shape_is_refused(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    db.execute(
        f"CREATE TABLE {db.table}_members (election TEXT NOT NULL, node TEXT NOT NULL, "
        f"expires_at {db.wrong_expiry} NOT NULL, PRIMARY KEY (election, node))"
    )
    with trio.fail_after(BOUND), pytest.raises(DatabaseConfigError) as info:
        await db.make(quorum=2).serve()
    assert f"{db.table}_members has the wrong shape (expires_at is" in str(info.value)
    with pytest.raises(DatabaseConfigError, match="has the wrong shape"):
        await db.read()

    peer = db.make()  # a quorum of one goes on without it
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer.is_leader)
        nursery.cancel_scope.cancel()
    assert any("records no members" in r.getMessage() for r in caplog.records)


async def test_a_members_table_must_be_unique_on_election_and_node(db: Database) -> None:
    kind = "timestamptz" if db.kind == "postgres" else "REAL"
    db.execute(
        f"CREATE TABLE {db.table}_members (election TEXT NOT NULL, node TEXT NOT NULL, "
        f"expires_at {kind} NOT NULL)"
    )
    with trio.fail_after(BOUND), pytest.raises(DatabaseConfigError) as info:
        await db.make(quorum=2).serve()
    assert "(election, node) has no unique index of its own" in str(info.value)
    db.execute(f"CREATE UNIQUE INDEX {db.table}_by_node ON {db.table}_members (node, election)")
    peer, other = db.make(quorum=2), db.make(quorum=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await nursery.start(other.serve)
        await wait_until(lambda: peer.is_leader() or other.is_leader())
        nursery.cancel_scope.cancel()


async def test_members_of_a_peer_not_served_are_read_all_the_same(db: Database) -> None:
    served, idle = db.make(node="b"), db.make(node="a")
    async with trio.open_nursery() as nursery:
        await nursery.start(served.serve)
        await wait_until(served.is_leader)
        assert await idle.members() == ["b"]
        assert await served.members() == ["b"]
        nursery.cancel_scope.cancel()
    assert await idle.members() == []


def test_read_elections_checks_its_options(tmp_path: Path) -> None:
    from periodic.peers import postgres as postgres_peers

    with pytest.raises(ValueError, match="table must be a plain SQL identifier"):
        trio.run(lambda: sqlite_peers.read_elections(tmp_path / "p.db", table="a b"))
    with pytest.raises(ValueError, match="path must name a file"):
        trio.run(lambda: sqlite_peers.read_elections(":memory:"))
    with pytest.raises(TypeError, match="dsn must be a str"):
        trio.run(lambda: postgres_peers.read_elections(b"postgresql://db"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dsn is not a valid connection string"):
        trio.run(lambda: postgres_peers.read_elections("this is not=a dsn'"))


async def test_read_elections_of_a_missing_sqlite_file_is_a_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(DatabaseConfigError, match="does not exist"):
        await sqlite_peers.read_elections(tmp_path / "typo.db")
    assert not (tmp_path / "typo.db").exists()  # and it made none


async def test_read_elections_of_a_table_too_long_for_members(tmp_path: Path) -> None:
    path, table = tmp_path / "p.db", "t" * 60
    peer = SQLitePeer(path, name="e", ttl=TTL, node="n", table=table)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer.is_leader)
        nursery.cancel_scope.cancel()
    (election,) = await sqlite_peers.read_elections(path, table=table)
    assert (election.fence, election.members) == (1, ())


@pytest.mark.postgres
async def test_read_elections_hides_the_password_of_a_dsn_that_cannot_work() -> None:
    from periodic.peers import postgres as postgres_peers

    dsn = require_postgres()
    host = dsn.split("@", 1)[1]
    bad = f"postgresql://no_such_role_{unique_table('')[-8:]}:s3cr3t-pw@{host}"
    with pytest.raises(DatabaseConfigError) as info:
        await postgres_peers.read_elections(bad)
    text = f"{info.value} {info.value.__cause__!r}"
    assert "s3cr3t-pw" not in text
    assert "cannot read the elections at" in text


@pytest.mark.postgres
async def test_read_elections_finds_a_qualified_table_and_its_members_beside_it() -> None:
    from periodic.peers import postgres as postgres_peers

    dsn = require_postgres()
    schema = unique_table("s")
    query(dsn, f"CREATE SCHEMA {schema}")
    try:
        peer = postgres_peers.PostgresPeer(
            dsn, name="e", ttl=TTL, node="n", table=f"{schema}.leases"
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await wait_until(peer.is_leader)
            (election,) = await postgres_peers.read_elections(dsn, table=f"{schema}.leases")
            nursery.cancel_scope.cancel()
        assert (election.leader, election.members) == ("n", ("n",))
        assert await postgres_peers.read_elections(dsn, table="leases") == []  # not found
        tables = query(
            dsn, "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
        )
        assert tables == [("leases",), ("leases_members",)]
    finally:
        query(dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
