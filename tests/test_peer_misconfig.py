"""Misconfigured database peers, against real databases: what fails ``serve`` at once,
what is retried and how loudly, and the configurations that used to split the election.

The rules shared by every database backend run against SQLite and PostgreSQL alike (the
``db`` fixture); the ones only a backend has follow. PostgreSQL tests create roles and
schemas of random names in the test database and drop them afterwards. Real time, short
``ttl``, every wait bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from pg_support import pg_dsn, pg_table, query, require_postgres, unique_table

from periodic.peers import DatabaseConfigError, LeasePeer, SQLitePeer

__all__ = ["pg_dsn", "pg_table"]  # fixtures, imported for pytest

BOUND = 10.0


async def wait_until(check: Callable[[], bool], timeout: float = BOUND) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def serve_briefly(peer: LeasePeer, seconds: float) -> None:
    """Serve ``peer`` for ``seconds``; its errors propagate."""
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def fails_at_once(peer: LeasePeer) -> DatabaseConfigError:
    """``serve`` must raise DatabaseConfigError within a second, by itself."""
    with trio.fail_after(1.0), pytest.raises(DatabaseConfigError) as info:
        await peer.serve()
    assert not peer.is_leader()
    return info.value


@attrs.define
class Database:
    """One database backend, with the means to set up its table behind the peer's back."""

    kind: str
    make: Callable[..., LeasePeer]
    #: Run a statement of this backend's dialect.
    execute: Callable[[str], object]
    #: The lease table the peers use, unqualified.
    table: str
    #: A column type that is wrong for expires_at, in this dialect.
    wrong_expiry: str
    #: An election this backend cannot even reach (a database or directory that is not).
    unreachable: Callable[[], LeasePeer]
    cleanup: list[Callable[[], object]] = attrs.Factory(list)


def _sqlite(tmp_path: Path) -> Database:
    path = tmp_path / "peers.db"
    table = "leases"

    def execute(statement: str) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(statement)
        finally:
            conn.close()

    return Database(
        "sqlite",
        make=lambda **kw: SQLitePeer(path, **{"name": "e", "ttl": 1.0, "table": table, **kw}),
        execute=execute,
        table=table,
        wrong_expiry="TEXT",
        unreachable=lambda: SQLitePeer(tmp_path / "missing" / "p.db", name="e", ttl=1.0),
    )


def _postgres() -> Database:
    dsn = require_postgres()
    from periodic.peers.postgres import PostgresPeer

    table = unique_table()
    db = Database(
        "postgres",
        make=lambda **kw: PostgresPeer(dsn, **{"name": "e", "ttl": 1.0, "table": table, **kw}),
        execute=lambda statement: query(dsn, statement),
        table=table,
        wrong_expiry="timestamp",
        unreachable=lambda: PostgresPeer(
            dsn.rsplit("/", 1)[0] + f"/no_such_db_{table[-12:]}", name="e", ttl=1.0
        ),
    )
    db.cleanup.append(lambda: query(dsn, f"DROP TABLE IF EXISTS {table}, {table}_members"))
    return db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    made = _sqlite(tmp_path) if request.param == "sqlite" else _postgres()
    yield made
    for fn in made.cleanup:
        fn()


# -- every database backend -------------------------------------------------------------------


async def test_an_existing_table_of_the_wrong_shape_is_refused_at_first_use(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # As found: expires_at without time zone, read in each session's TimeZone, gave two
    # leaders for 1.4 s and then none.
    db.execute(
        f"CREATE TABLE {db.table} (name text PRIMARY KEY, node text NOT NULL, "
        f"epoch bigint NOT NULL, expires_at {db.wrong_expiry} NOT NULL)"
    )
    error = await fails_at_once(db.make())
    expected = "timestamp without time zone" if db.kind == "postgres" else "TEXT"
    assert f"has the wrong shape (expires_at is {expected})" in str(error)
    assert "drop it, or give another table=" in str(error)
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_a_table_whose_name_is_not_unique_is_refused(db: Database) -> None:
    db.execute(
        f"CREATE TABLE {db.table} (name text NOT NULL, node text NOT NULL, "
        "epoch bigint NOT NULL, expires_at real NOT NULL)"
        if db.kind == "sqlite"
        else f"CREATE TABLE {db.table} (name text NOT NULL, node text NOT NULL, "
        "epoch bigint NOT NULL, expires_at timestamptz NOT NULL)"
    )
    error = await fails_at_once(db.make())
    assert "name has no unique index of its own" in str(error)


async def test_a_table_of_the_right_shape_made_by_hand_is_used(db: Database) -> None:
    expiry = "REAL" if db.kind == "sqlite" else "timestamp(3) with time zone"
    db.execute(
        f"CREATE TABLE {db.table} (name varchar(200) NOT NULL UNIQUE, node text NOT NULL, "
        f"epoch bigint NOT NULL, expires_at {expiry} NOT NULL, note text)"
    )
    peer = db.make(create_table=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer.is_leader)
        nursery.cancel_scope.cancel()


async def test_a_store_that_cannot_be_reached_as_configured_fails_serve_at_once(
    db: Database,
) -> None:
    error = await fails_at_once(db.unreachable())
    if db.kind == "sqlite":
        assert "the directory" in str(error)
        assert "does not exist" in str(error)
    else:
        assert 'database "no_such_db_' in str(error)
        assert "does not exist" in str(error)


async def test_a_missing_table_without_create_table_is_an_error_until_it_exists(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    peer = db.make(create_table=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)  # not fatal: a migration may create it later
        await wait_until(lambda: any(r.levelno == logging.ERROR for r in caplog.records))
        (first,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert first.levelname == "ERROR"
        assert "this needs a fix" in first.getMessage()
        assert "create_table=False: create it first" in first.getMessage()
        assert first.periodic_fault == "persistent"  # type: ignore[attr-defined]
        await trio.sleep(0.5)
        assert not peer.is_leader()
        await nursery.start(db.make(name="other").serve)  # it creates the table
        await wait_until(peer.is_leader)
        nursery.cancel_scope.cancel()
    assert "reachable again" in caplog.text


async def test_the_table_is_logged_where_it_was_found(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="periodic")
    await serve_briefly(db.make(), 0.3)
    if db.kind == "postgres":
        assert f"are in table public.{db.table} (found through the search_path" in caplog.text
    else:
        assert f"SQLite leases are in {os.sep}" in caplog.text


# -- SQLite -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [":memory:", ""])
def test_sqlite_refuses_a_database_of_each_connection(path: str) -> None:
    # Each process (each connection) would get a database of its own, and all would lead.
    with pytest.raises(ValueError, match="path must name a file that every process opens"):
        SQLitePeer(path, name="e")


async def test_a_relative_sqlite_path_is_fixed_when_the_peer_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(first)
    peer = SQLitePeer("peers.db", name="e", ttl=1.0)
    assert peer.path == str(first / "peers.db")
    assert repr(peer).startswith(f"<SQLitePeer 'e' path={str(first / 'peers.db')!r}")
    monkeypatch.chdir(elsewhere)
    await serve_briefly(peer, 0.3)
    assert (first / "peers.db").exists()
    assert not (elsewhere / "peers.db").exists()


async def test_a_file_that_is_not_a_database_is_an_error_until_it_is_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "peers.db"
    path.write_bytes(b"certainly not an SQLite database " * 200)
    peer = SQLitePeer(path, name="e", ttl=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(lambda: "file is not a database" in caplog.text)
        assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == ["ERROR"]
        path.unlink()  # someone fixes it
        await wait_until(peer.is_leader)
        nursery.cancel_scope.cancel()


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def pg() -> str:
    dsn = require_postgres()
    if "://postgres@" not in dsn:
        pytest.skip("needs the default superuser DSN to create roles")
    return dsn


@contextlib.contextmanager
def roles(dsn: str, *names: str) -> Iterator[list[str]]:
    """Login roles of these names (made unique), dropped afterwards with all they own."""
    suffix = unique_table("")[-12:]
    made = [f"{name}_{suffix}" for name in names]
    try:
        for role in made:
            query(dsn, f'CREATE ROLE "{role}" LOGIN')
        yield made
    finally:
        for role in made:
            with contextlib.suppress(Exception):
                query(dsn, f'DROP OWNED BY "{role}" CASCADE')
            with contextlib.suppress(Exception):
                query(dsn, f'DROP ROLE IF EXISTS "{role}"')


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("postgres@", f"{role}@", 1)


async def leaders_over(peers: list[Any], seconds: float) -> set[int]:
    """Serve ``peers`` for ``seconds``; how many led at once, at each look (a loaded
    machine may make a leader miss a renewal and step down for a moment: 0 is no news)."""
    seen: set[int] = set()
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await nursery.start(peer.serve)
        await trio.sleep(0.5)
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            seen.add(sum(p.is_leader() for p in peers))
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return seen


@pytest.mark.postgres
async def test_roles_with_other_search_paths_share_a_schema_qualified_table(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    from periodic.peers.postgres import PostgresPeer

    caplog.set_level(logging.INFO, logger="periodic")
    table = unique_table()
    with roles(pg, "owner", "other") as (owner, other):
        # owner has a schema of its own name, first in its search_path ("$user", public).
        query(pg, f'CREATE SCHEMA "{owner}" AUTHORIZATION "{owner}"')
        query(pg, f'GRANT USAGE, CREATE ON SCHEMA public TO "{other}"')
        try:
            # Unqualified, as found: the owner made the table in its own schema first, the
            # other role could not see it and made one in public; both led.
            first, second = (
                PostgresPeer(as_role(pg, role), name="e", ttl=2.0, table=table, node=role)
                for role in (owner, other)
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(first.serve)
                await wait_until(first.is_leader)
                await nursery.start(second.serve)
                await wait_until(lambda: first.is_leader() and second.is_leader())
                nursery.cancel_scope.cancel()
            # ... which the log now shows: the two names it resolved to.
            assert f"are in table {owner}.{table}" in caplog.text
            assert f"are in table public.{table}" in caplog.text

            # Qualified: one table, one leader, whatever each role's search_path.
            query(
                pg,
                f"CREATE TABLE public.{table}_q (name text PRIMARY KEY, node text NOT NULL, "
                "epoch bigint NOT NULL, expires_at timestamptz NOT NULL)",
            )
            query(pg, f'GRANT SELECT, INSERT, UPDATE ON public.{table}_q TO "{owner}", "{other}"')
            query(pg, f'GRANT USAGE ON SCHEMA public TO "{owner}"')
            shared = [
                PostgresPeer(
                    as_role(pg, role), name="e", ttl=2.0, table=f"public.{table}_q", node=role
                )
                for role in (owner, other)
            ]
            seen = await leaders_over(shared, 2.0)
            assert max(seen) == 1  # one leader, never two
        finally:
            query(
                pg,
                f"DROP TABLE IF EXISTS public.{table}, public.{table}_q, "
                f"public.{table}_members, public.{table}_q_members",
            )


@pytest.mark.postgres
async def test_a_table_in_a_schema_that_does_not_exist_is_an_error_until_it_does(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    from periodic.peers.postgres import PostgresPeer

    schema = unique_table("s")
    peer = PostgresPeer(pg, name="e", ttl=1.0, table=f"{schema}.leases")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await wait_until(lambda: any(r.levelno == logging.ERROR for r in caplog.records))
            assert f'schema "{schema}" does not exist' in caplog.text
            query(pg, f"CREATE SCHEMA {schema}")
            await wait_until(peer.is_leader)
            nursery.cancel_scope.cancel()
        assert query(pg, "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.leases",)) == [(True,)]
    finally:
        query(pg, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.mark.postgres
async def test_an_unknown_role_fails_serve_without_showing_the_password(pg: str) -> None:
    from periodic.peers.postgres import PostgresPeer

    dsn = pg.replace("postgres@", "no_such_role_x:s3cr%25t@", 1)
    error = await fails_at_once(PostgresPeer(dsn, name="e", ttl=1.0))
    assert 'role "no_such_role_x" does not exist' in str(error)
    text = str(error) + repr(error) + str(error.__cause__) + repr(error.__cause__)
    assert "s3cr" not in text
    assert getattr(error.__cause__, "pgconn", None) is None


@pytest.mark.postgres
async def test_a_bad_connection_option_fails_serve(pg: str) -> None:
    from periodic.peers.postgres import PostgresPeer

    dsn = pg.replace("127.0.0.1:5432", "127.0.0.1:notaport", 1)
    assert dsn != pg
    error = await fails_at_once(PostgresPeer(dsn, name="e", ttl=1.0))
    assert 'invalid integer value "notaport"' in str(error)


@pytest.mark.postgres
async def test_a_missing_grant_is_an_error_until_it_is_granted(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    from periodic.peers.postgres import PostgresPeer

    table = unique_table()
    query(
        pg,
        f"CREATE TABLE public.{table} (name text PRIMARY KEY, node text NOT NULL, "
        "epoch bigint NOT NULL, expires_at timestamptz NOT NULL)",
    )
    try:
        with roles(pg, "user") as (user,):
            query(pg, f'GRANT USAGE ON SCHEMA public TO "{user}"')
            peer = PostgresPeer(as_role(pg, user), name="e", ttl=1.0, table=f"public.{table}")
            async with trio.open_nursery() as nursery:
                await nursery.start(peer.serve)
                await wait_until(lambda: "permission denied" in caplog.text)
                (report,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
                assert report.levelname == "ERROR"
                query(pg, f'GRANT SELECT, INSERT, UPDATE ON public.{table} TO "{user}"')
                await wait_until(peer.is_leader)
                nursery.cancel_scope.cancel()
    finally:
        query(pg, f"DROP TABLE IF EXISTS public.{table}, public.{table}_members")


@pytest.mark.postgres
async def test_a_server_that_does_not_answer_is_retried(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    from periodic.peers.postgres import PostgresPeer

    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        peer = PostgresPeer(f"postgresql://app@127.0.0.1:{port}/app", name="e", ttl=1.0)
        await serve_briefly(peer, 1.0)  # does not raise
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[0].levelname == "WARNING"
    assert "TooSlowError" in warnings[0].getMessage()


@pytest.mark.postgres
async def test_the_longest_ttl_and_call_timeout_still_connect(pg: str, pg_table: str) -> None:
    from periodic.peers.postgres import PostgresPeer

    # ttl >= ~36 h used to ask the kernel for a keepalive longer than it allows.
    peer = PostgresPeer(pg, name="e", ttl=86400, call_timeout=70000, table=pg_table)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer.is_leader)
        nursery.cancel_scope.cancel()


@pytest.mark.postgres
async def test_the_longest_election_name_is_announced_on_release(pg: str, pg_table: str) -> None:
    from periodic.peers.postgres import _PostgresBackend

    name = "é" * 512  # 1024 bytes: the most a name may have
    leader, follower = (_PostgresBackend(pg, pg_table, create_table=True) for _ in range(2))
    try:
        assert leader.acquire(name, "a", 30.0) == ("a", 1)
        assert follower.wait_released(name, 0.0) is False  # listens from now on
        leader.release(name, "a")
        assert follower.wait_released(name, 1.0) is True
    finally:
        leader.close()
        follower.close()


def test_a_lasting_error_is_seen_when_the_application_configures_no_logging(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        import trio
        from periodic.peers import SQLitePeer

        async def main():
            peer = SQLitePeer({str(tmp_path / "p.db")!r}, name="e", ttl=1.0, create_table=False)
            with trio.move_on_after(0.5):
                await peer.serve()

        trio.run(main)
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert "election 'e' failed (this needs a fix" in done.stderr
    assert "no such table: periodic_peers" in done.stderr
