"""PostgresPeer against a real server (see pg_support): the backend's statements, elections
among peers in one process, hand-over by NOTIFY, lost connections, a server restart,
fencing, and keeping the DSN's password secret.

These run on Trio's real clock with a short ``ttl``; waits are bounded with
``trio.fail_after``. The restart test stops the server: it runs only when asked for
(``pytest -m pg_restart``), alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import psycopg
import pytest
import trio
from pg_support import drop_table, pg_ctlcluster, pg_dsn, pg_table, query, unique_table
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from periodic.events import Event, LeadershipChanged
from periodic.peers.postgres import PostgresPeer, _PostgresBackend

__all__ = ["pg_dsn", "pg_table"]  # fixtures, imported for pytest

pytestmark = pytest.mark.postgres

SECRET = "s3cr%t-p@ss"


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def backend(pg_dsn: str, pg_table: str) -> Iterator[Callable[[], _PostgresBackend]]:
    """Make backends on the test's table; all closed afterwards."""
    made: list[_PostgresBackend] = []

    def make() -> _PostgresBackend:
        b = _PostgresBackend(pg_dsn, pg_table, create_table=True)
        b.set_call_timeout(2.0)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def app_dsn(dsn: str, app: str) -> str:
    """``dsn`` with an application_name, to find the peer's connections on the server."""
    return make_conninfo(dsn, application_name=app)


def kill_connections(dsn: str, app: str) -> int:
    rows = query(
        dsn,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s",
        (app,),
    )
    return int(rows[0][0])


def backend_pids(dsn: str, app: str) -> set[int]:
    rows = query(dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
    return {int(r[0]) for r in rows}


async def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll ``predicate`` every 5 ms; the seconds it took. Fails after ``timeout``."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
    return trio.current_time() - start


async def _serve(peer: PostgresPeer, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            task_status.started(scope)


class Cluster:
    """Peers served in one nursery, each stoppable on its own."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.scopes: dict[PostgresPeer, trio.CancelScope] = {}

    async def serve(self, peer: PostgresPeer) -> PostgresPeer:
        self.scopes[peer] = await self._nursery.start(_serve, peer)
        return peer

    def stop(self, peer: PostgresPeer) -> None:
        self.scopes.pop(peer).cancel()

    def leaders(self) -> list[PostgresPeer]:
        return [p for p in self.scopes if p.is_leader()]

    def leader(self) -> PostgresPeer:
        (only,) = self.leaders()
        return only


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery)
        try:
            yield c
        finally:
            nursery.cancel_scope.cancel()


def leadership(events: list[Event]) -> list[LeadershipChanged]:
    return [e for e in events if isinstance(e, LeadershipChanged)]


def expire(dsn: str, table: str, name: str) -> None:
    """Age the lease out on the server, instead of waiting for it."""
    query(
        dsn,
        f"UPDATE {table} SET expires_at = now() - interval '1 second' WHERE name = %s",
        (name,),
    )


def row(dsn: str, table: str, name: str) -> tuple[str, int, float] | None:
    """The lease row: holder, epoch, seconds until it expires (server clock)."""
    rows = query(
        dsn,
        f"SELECT node, epoch, extract(epoch FROM expires_at - now())::float8 "
        f"FROM {table} WHERE name = %s",
        (name,),
    )
    return None if not rows else (rows[0][0], rows[0][1], rows[0][2])


# -- the backend's statements -------------------------------------------------------------


def test_acquire_inserts_renews_and_takes_over_only_expired_leases(
    backend: Callable[[], _PostgresBackend], pg_dsn: str, pg_table: str
) -> None:
    a, b = backend(), backend()
    assert a.acquire("job", "a", 1.5) == ("a", 1)
    holder, epoch, left = row(pg_dsn, pg_table, "job")  # type: ignore[misc]
    assert (holder, epoch) == ("a", 1)
    assert 1.0 < left <= 1.5  # computed on the server's clock
    assert b.acquire("job", "b", 1.5) == ("a", 1)  # held: b sees the holder
    assert a.acquire("job", "a", 1.5) == ("a", 1)  # renewal keeps the epoch
    expire(pg_dsn, pg_table, "job")
    assert b.acquire("job", "b", 1.5) == ("b", 2)  # takeover bumps it
    assert a.acquire("job", "a", 1.5) == ("b", 2)
    assert b.acquire("job", "b", 1.5) == ("b", 2)
    # Elections are independent rows.
    assert a.acquire("other", "a", 1.5) == ("a", 1)


def test_release_expires_only_our_row_and_keeps_the_epoch(
    backend: Callable[[], _PostgresBackend], pg_dsn: str, pg_table: str
) -> None:
    a, b = backend(), backend()
    assert a.acquire("job", "a", 30.0) == ("a", 1)
    b.release("job", "b")  # not ours: nothing happens
    assert b.acquire("job", "b", 30.0) == ("a", 1)
    a.release("job", "a")
    holder, epoch, left = row(pg_dsn, pg_table, "job")  # type: ignore[misc]
    assert (holder, epoch) == ("a", 1)  # the row stays, so the epoch never goes back
    assert left < 0
    assert b.acquire("job", "b", 30.0) == ("b", 2)
    b.release("job", "b")
    assert b.acquire("job", "b", 30.0) == ("b", 2)  # same holder again: same epoch
    b.release("job", "b")
    assert a.acquire("job", "a", 30.0) == ("a", 3)


def race(backends: list[_PostgresBackend], name: str) -> dict[str, tuple[str, int] | None]:
    """Every backend acquires ``name`` at the same moment, as node ``n<i>``."""
    barrier = threading.Barrier(len(backends))
    results: dict[str, tuple[str, int] | None] = {}

    def contend(b: _PostgresBackend, node: str) -> None:
        barrier.wait()
        results[node] = b.acquire(name, node, 30.0)

    threads = [threading.Thread(target=contend, args=(b, f"n{i}")) for i, b in enumerate(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == len(backends)
    return results


def test_concurrent_acquires_elect_exactly_one(
    backend: Callable[[], _PostgresBackend],
) -> None:
    backends = [backend() for _ in range(8)]
    backends[0].acquire("warm-up", "n0", 1.0)  # create the table outside the race
    for round_ in range(5):
        results = race(backends, f"race-{round_}")
        winners = [n for n, r in results.items() if r is not None and r[0] == n]
        assert len(winners) == 1, results
        # Losers name the winner, or say they do not know (the concurrent insert).
        assert all(r is None or r == (winners[0], 1) for r in results.values()), results


def test_wait_released_hears_a_release_of_its_election(
    backend: Callable[[], _PostgresBackend],
) -> None:
    leader, follower = backend(), backend()
    assert leader.acquire("job", "a", 30.0) == ("a", 1)
    assert leader.acquire("job2", "a", 30.0) == ("a", 1)
    assert follower.wait_released("job", 0.0) is False  # LISTENs from now on
    leader.release("job2", "a")  # another election: not news for "job"
    assert follower.wait_released("job", 0.2) is False
    leader.release("job", "a")
    assert follower.wait_released("job", 1.0) is True
    follower.release("job", "b")  # not the holder: no notification
    assert follower.wait_released("job", 0.2) is False


def test_wait_released_ends_well_within_the_call_timeout(
    backend: Callable[[], _PostgresBackend],
) -> None:
    b = backend()
    b.set_call_timeout(0.25)  # ttl 1 s: the peer abandons a call after 0.25 s
    b.wait_released("job", 0.0)
    started = time.monotonic()
    assert b.wait_released("job", 0.5) is False
    assert time.monotonic() - started < 0.2


def test_mixed_case_table_is_quoted_everywhere(pg_dsn: str) -> None:
    table = unique_table("Periodic_Peers")
    b = _PostgresBackend(pg_dsn, table, create_table=True)
    try:
        assert b.acquire("job", "a", 30.0) == ("a", 1)
        assert b.wait_released("job", 0.0) is False
        b.release("job", "a")
        assert b.wait_released("job", 1.0) is True
        assert query(pg_dsn, "SELECT count(*) FROM pg_tables WHERE tablename = %s", (table,)) == [
            (1,)
        ]
    finally:
        b.close()
        drop_table(pg_dsn, table)


def test_without_create_table_a_missing_table_is_an_error(pg_dsn: str, pg_table: str) -> None:
    b = _PostgresBackend(pg_dsn, pg_table, create_table=False)
    try:
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.acquire("job", "a", 30.0)
    finally:
        b.close()


def test_a_lost_idle_connection_is_replaced_within_the_call(pg_dsn: str, pg_table: str) -> None:
    b = _PostgresBackend(app_dsn(pg_dsn, "periodic-test-lost"), pg_table, create_table=True)
    b.set_call_timeout(2.0)
    try:
        assert b.acquire("job", "a", 30.0) == ("a", 1)
        before = backend_pids(pg_dsn, "periodic-test-lost")
        assert kill_connections(pg_dsn, "periodic-test-lost") == 1
        assert b.acquire("job", "a", 30.0) == ("a", 1)
        assert backend_pids(pg_dsn, "periodic-test-lost").isdisjoint(before)
    finally:
        b.close()


def test_calls_are_bounded_by_a_statement_timeout(pg_dsn: str, pg_table: str) -> None:
    b = _PostgresBackend(pg_dsn, pg_table, create_table=True)
    b.set_call_timeout(0.3)
    blocker = psycopg.connect(pg_dsn)  # holds the row lock in an open transaction
    try:
        assert b.acquire("job", "a", 30.0) == ("a", 1)
        blocker.execute(f"SELECT * FROM {pg_table} WHERE name = 'job' FOR UPDATE")
        with pytest.raises(psycopg.errors.QueryCanceled):
            b.acquire("job", "a", 30.0)
        blocker.rollback()
        assert b.acquire("job", "a", 30.0) == ("a", 1)  # and it works again after
    finally:
        blocker.close()
        b.close()


# -- elections among peers ----------------------------------------------------------------


async def test_three_peers_elect_exactly_one_leader(pg_dsn: str, pg_table: str) -> None:
    async with cluster() as c:
        peers = [
            await c.serve(PostgresPeer(pg_dsn, name="job", ttl=1.0, table=pg_table, node=n))
            for n in ("a", "b", "c")
        ]
        await wait_until(lambda: len(c.leaders()) == 1, timeout=3)
        leader = c.leader()
        # Over three renewal periods: always exactly that one, and everyone knows it.
        end = trio.current_time() + 1.5
        while trio.current_time() < end:
            assert c.leaders() == [leader]
            await trio.sleep(0.02)
        assert {p.leader() for p in peers} == {leader.node}
        assert leader.fence == 1
        assert all(p.fence is None for p in peers if p is not leader)


@pytest.mark.parametrize("ttl", [1.0, 2.0])
async def test_graceful_stop_hands_over_at_once_via_notify(
    ttl: float, pg_dsn: str, pg_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Followers poll every 3/8 to 1/2 ttl: a hand-over much faster than that is NOTIFY's.
    apps = {n: f"periodic-test-{pg_table}-{n}" for n in ("a", "b", "c")}
    async with cluster() as c:
        for n, app in apps.items():
            await c.serve(
                PostgresPeer(app_dsn(pg_dsn, app), name="job", ttl=ttl, table=pg_table, node=n)
            )
        await wait_until(lambda: len(c.leaders()) == 1, timeout=3)
        old = c.leader()
        followers = [p for p in c.scopes if p is not old]

        def listening() -> bool:
            rows = query(
                pg_dsn,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = ANY(%s) AND query LIKE 'LISTEN%%'",
                ([apps[str(p.node)] for p in followers],),
            )
            return bool(rows[0][0] == len(followers))

        await wait_until(listening, timeout=3)
        # Stop later than one call_timeout (ttl / 4) into the followers' wait: a wait
        # that outlasts the call would be abandoned and the hand-over left to polling.
        await trio.sleep(ttl * 0.3)
        old_fence = old.fence
        c.stop(old)
        handoff = await wait_until(lambda: len(c.leaders()) == 1, timeout=ttl)
        new = c.leader()
        assert new in followers
        assert new.fence == (old_fence or 0) + 1
        assert handoff < ttl / 10, f"hand-over took {handoff:.3f} s"
    with capsys.disabled():
        print(f"\n[postgres] graceful hand-over via NOTIFY: {handoff * 1000:.0f} ms (ttl {ttl} s)")


async def test_killed_connections_do_not_crash_or_unseat_the_leader(
    pg_dsn: str, pg_table: str, events: list[Event], capsys: pytest.CaptureFixture[str]
) -> None:
    ttl = 1.0
    apps = {n: f"periodic-test-{pg_table}-{n}" for n in ("a", "b")}
    async with cluster() as c:
        for n, app in apps.items():
            await c.serve(
                PostgresPeer(app_dsn(pg_dsn, app), name="job", ttl=ttl, table=pg_table, node=n)
            )
        await wait_until(lambda: len(c.leaders()) == 1, timeout=3)
        leader = c.leader()
        fence = leader.fence
        follower = next(p for p in c.scopes if p is not leader)
        worst = 0.0
        for _ in range(3):
            before = {n: backend_pids(pg_dsn, app) for n, app in apps.items()}
            assert kill_connections(pg_dsn, apps["a"]) + kill_connections(pg_dsn, apps["b"])

            def reconnected(before: dict[str, set[int]] = before) -> bool:
                now = {n: backend_pids(pg_dsn, app) for n, app in apps.items()}
                return all(now[n] and now[n].isdisjoint(before[n]) for n in apps)

            # Both are back on new connections by their next call (ttl / 2 at most).
            took = await wait_until(reconnected, timeout=ttl)
            worst = max(worst, took)
            assert c.leaders() == [leader]
        assert leader.fence == fence
        lost = [e for e in leadership(events) if not e.gained]
        assert lost == []  # the lease never lapsed: each renewal retried on a new connection
        # The follower's listener is back too: it hears the leader's stop.
        c.stop(leader)
        handoff = await wait_until(follower.is_leader, timeout=ttl)
    with capsys.disabled():
        print(
            f"\n[postgres] all connections killed 3x: no step-down, both peers on new "
            f"connections within {worst * 1000:.0f} ms; then hand-over in {handoff * 1000:.0f} ms"
        )


async def test_fences_increase_across_leaderships_and_reject_stale_writes(
    pg_dsn: str, pg_table: str
) -> None:
    data = f"{pg_table}_data"
    query(pg_dsn, f"CREATE TABLE {data} (id int PRIMARY KEY, value text, fence bigint)")
    query(pg_dsn, f"INSERT INTO {data} VALUES (1, 'initial', 0)")
    fenced_write = f"UPDATE {data} SET value = %s, fence = %s WHERE id = 1 AND fence <= %s"

    def write(value: str, fence: int) -> int:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return conn.execute(fenced_write, (value, fence, fence)).rowcount

    try:
        fences: list[tuple[str, int]] = []
        async with cluster() as c:
            for n in ("a", "b", "c", "d"):
                await c.serve(PostgresPeer(pg_dsn, name="job", ttl=1.0, table=pg_table, node=n))
            for _ in range(3):
                await wait_until(lambda: len(c.leaders()) == 1, timeout=3)
                leader = c.leader()
                assert leader.fence is not None
                fences.append((leader.node, leader.fence))
                assert write(f"by {leader.node}", leader.fence) == 1
                c.stop(leader)
        assert [f for _, f in fences] == sorted({f for _, f in fences})  # strictly up
        assert len({n for n, _ in fences}) == 3
        # The first leader wakes up late and writes with its old fence: no row changes.
        stale_node, stale_fence = fences[0]
        assert write(f"late by {stale_node}", stale_fence) == 0
        assert query(pg_dsn, f"SELECT value, fence FROM {data}") == [
            (f"by {fences[-1][0]}", fences[-1][1])
        ]
    finally:
        query(pg_dsn, f"DROP TABLE IF EXISTS {data}")


async def test_a_missing_table_without_create_table_recovers_once_it_exists(
    pg_dsn: str, pg_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster() as c:
        peer = await c.serve(
            PostgresPeer(pg_dsn, name="job", ttl=1.0, table=pg_table, create_table=False)
        )
        await wait_until(lambda: "UndefinedTable" in caplog.text, timeout=2)
        assert not peer.is_leader()
        await c.serve(PostgresPeer(pg_dsn, name="other", ttl=1.0, table=pg_table))
        await wait_until(peer.is_leader, timeout=3)  # retries with backoff, never crashes


async def test_a_stopped_peer_can_be_served_again(pg_dsn: str, pg_table: str) -> None:
    peer = PostgresPeer(pg_dsn, name="job", ttl=1.0, table=pg_table, node="a")
    for fence in (1, 2):  # each serve is a new claim, so a new leadership: a new epoch
        async with cluster() as c:
            await c.serve(peer)
            await wait_until(peer.is_leader, timeout=3)
            assert peer.fence == fence
        assert not peer.is_leader()


# -- options and secrets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("peers; DROP TABLE x", ValueError),
        ('peers"', ValueError),
        ("1peers", ValueError),
        ("public.peers.x", ValueError),
        ("public.", ValueError),
        (".peers", ValueError),
        ("public.1peers", ValueError),
        ("", ValueError),
        ("p" * 64, ValueError),
        (b"peers", TypeError),
        (None, TypeError),
    ],
)
def test_table_must_be_an_identifier_or_schema_dot_identifier(
    table: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="table"):
        PostgresPeer(
            "postgresql://postgres@127.0.0.1/test",
            name="job",
            table=table,  # type: ignore[arg-type]
        )


def test_options_are_checked_at_construction() -> None:
    dsn = "postgresql://postgres@127.0.0.1/test"
    with pytest.raises(TypeError, match="dsn"):
        PostgresPeer(b"postgresql://x", name="job")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="create_table"):
        PostgresPeer(dsn, name="job", create_table="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        PostgresPeer(dsn, name="job", ttl=0)
    with pytest.raises(ValueError, match="name"):
        PostgresPeer(dsn, name=" ")
    peer = PostgresPeer(dsn, name="job", table="my_leases", node="n1")
    assert peer.table == "my_leases"
    assert peer.ttl == 30.0
    assert repr(peer) == (
        "<PostgresPeer 'job' db='postgres@127.0.0.1/test' table='my_leases' node='n1' follower>"
    )


def nowhere_dsns() -> list[str]:
    """DSNs with a password, to a port where nothing listens, in the forms libpq takes."""
    return [
        f"postgresql://app:{SECRET.replace('%', '%25').replace('@', '%40')}@127.0.0.1:1/test",
        f"host=127.0.0.1 port=1 dbname=test user=app password='{SECRET}'",
        f"postgresql://app@127.0.0.1:1/test?password={SECRET.replace('%', '%25')}",
    ]


@pytest.mark.parametrize("dsn", nowhere_dsns())
async def test_the_password_is_never_shown(
    dsn: str, caplog: pytest.LogCaptureFixture, events: list[Event]
) -> None:
    assert conninfo_to_dict(dsn)["password"] == SECRET
    caplog.set_level(logging.DEBUG)  # psycopg's own records too
    peer = PostgresPeer(dsn, name="job", ttl=1.0)
    assert SECRET not in repr(peer)
    assert "127.0.0.1" in repr(peer)
    async with cluster() as c:
        await c.serve(peer)
        await wait_until(lambda: "election 'job' failed" in caplog.text, timeout=2)
        assert not peer.is_leader()
    with pytest.raises(psycopg.OperationalError) as info:
        peer._backend.acquire("job", "n", 1.0)
    text = caplog.text + repr(events) + str(info.value) + repr(info.value)
    assert "Connection refused" in text
    for shown in (SECRET, SECRET.replace("%", "%25"), "p@ss", "p%40ss"):
        assert shown not in text
    assert getattr(info.value, "pgconn", None) is None  # psycopg keeps the password there
    assert info.value.__context__ is None
    assert info.value.__cause__ is None


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET}@127.0.0.1/test",  # a bare % in the password
        f"postgresql://app:{SECRET.replace('%', '%25').replace('@', '%40')}@[::1/test",
        f"host=127.0.0.1 password='{SECRET}",
        f"host=127.0.0.1 password={SECRET} nonsense",
    ],
)
def test_an_unparsable_dsn_is_a_value_error_without_the_password(dsn: str) -> None:
    with pytest.raises(ValueError, match="dsn is not a valid connection string") as info:
        PostgresPeer(dsn, name="job")
    for fragment in (SECRET, "s3cr", "p@ss", "-p"):
        assert fragment not in str(info.value)
    assert info.value.__context__ is None


def test_dsn_options_win_over_the_defaults(pg_dsn: str) -> None:
    peer = PostgresPeer(
        make_conninfo(pg_dsn, connect_timeout=7, application_name="mine"),
        name="job",
        ttl=2.0,
    )
    params = conninfo_to_dict(peer._backend._conninfo)  # type: ignore[attr-defined]
    assert params["connect_timeout"] == "7"
    assert params["application_name"] == "mine"
    assert params["tcp_user_timeout"] == "500"  # call_timeout = ttl / 4
    assert params["keepalives"] == "1"


# -- the server goes away -----------------------------------------------------------------


def server_up(dsn: str) -> bool:
    try:
        query(dsn, "SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture
def restartable_dsn(pg_dsn: str, request: pytest.FixtureRequest) -> str:
    """The DSN, if this run may stop and start the server (a sync fixture: pytest-trio
    loses the reasons of skips raised in async tests)."""
    if "pg_restart" not in (request.config.option.markexpr or ""):
        pytest.skip("stops the server under the other tests: run alone, with -m pg_restart")
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        pytest.skip("needs a local Debian cluster (pg_ctlcluster)")
    if conninfo_to_dict(pg_dsn).get("host") not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("the test server is not local")
    return pg_dsn


@pytest.mark.pg_restart
async def test_server_restart_leader_steps_down_in_time_and_all_recover(
    restartable_dsn: str,
    pg_table: str,
    events: list[Event],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ttl, margin = 2.0, 0.2
    try:
        async with cluster() as c:
            for n in ("a", "b"):
                await c.serve(
                    PostgresPeer(
                        restartable_dsn, name="job", ttl=ttl, margin=margin, table=pg_table, node=n
                    )
                )
            await wait_until(lambda: len(c.leaders()) == 1, timeout=3)
            old = c.leader()
            old_fence = old.fence
            assert old_fence is not None

            stopping = trio.current_time()
            await trio.to_thread.run_sync(pg_ctlcluster, "stop")
            stopped = trio.current_time()
            # No renewal succeeds once the server is down: the leader's belief ends by
            # (last renewal sent) + ttl - margin < stopped + ttl - margin, before the
            # lease it wrote, which lasts until (last renewal sent) + ttl or later.
            await wait_until(lambda: not c.leaders(), timeout=ttl - margin)
            step_down = trio.current_time() - stopping
            while trio.current_time() < stopped + ttl:  # nobody leads while it is down
                assert c.leaders() == []
                await trio.sleep(0.02)

            starting = trio.current_time()
            await trio.to_thread.run_sync(pg_ctlcluster, "start")
            await wait_until(lambda: len(c.leaders()) == 1, timeout=ttl * 2)
            recovery = trio.current_time() - starting  # the server's start-up included
            new = c.leader()
            new_fence = new.fence
            assert new_fence is not None
            assert new_fence >= old_fence
            if new is not old:
                assert new_fence > old_fence
        lost = [e for e in leadership(events) if not e.gained and e.node == old.node]
        assert lost
        assert "error" in lost[0].reason or "expired" in lost[0].reason
        assert "***" not in lost[0].reason  # no password here: nothing to hide
    finally:
        if not server_up(restartable_dsn):
            pg_ctlcluster("start")
    with capsys.disabled():
        print(
            f"\n[postgres] server stopped (took {(stopped - stopping) * 1000:.0f} ms): leader "
            f"stepped down {step_down * 1000:.0f} ms after the stop began (lease {ttl} s, "
            f"margin {margin} s); a leader again {recovery * 1000:.0f} ms "
            f"after `pg_ctlcluster start` began ({'same' if new is old else 'other'} node, "
            f"fence {old_fence} -> {new_fence})"
        )
