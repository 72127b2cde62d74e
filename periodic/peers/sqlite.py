"""A peer elected through a lease row in an SQLite database: processes on one host."""

from __future__ import annotations

import datetime
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

from .._db import DatabaseConfigError, Fault, table_name
from .._db import sqlite as db
from ._lease import Election, LeaseBackend, LeasePeer, gather_elections, members_table

__all__ = ["SQLitePeer", "read_elections"]

T = TypeVar("T")

_log = logging.getLogger("periodic")

# The host's clock, as SQLite reads it: seconds since the epoch, with fractions.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_CREATE = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "name TEXT PRIMARY KEY, node TEXT NOT NULL, "
    "epoch INTEGER NOT NULL, expires_at REAL NOT NULL)"
)
# The affinities an existing table must give its columns: a TEXT expires_at would
# compare as text with the clock, and no lease would ever end.
_COLUMNS = {
    "name": ("TEXT",),
    "node": ("TEXT",),
    "epoch": ("INTEGER",),
    "expires_at": ("REAL", "NUMERIC"),
}
# One row per live member of an election, beside the leases: <table>_members.
_CREATE_MEMBERS = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "election TEXT NOT NULL, node TEXT NOT NULL, expires_at REAL NOT NULL, "
    "PRIMARY KEY (election, node))"
)
_MEMBER_COLUMNS = {
    "election": ("TEXT",),
    "node": ("TEXT",),
    "expires_at": ("REAL", "NUMERIC"),
}
_MEMBER_KEY = ("election", "node")


class _SQLiteBackend(LeaseBackend):
    membership = True

    def __init__(self, path: str, table: str, create_table: bool) -> None:
        self._path = path
        self._name = table
        # Quoted: a valid identifier may still be an SQL keyword ("order").
        self._table = f'"{table}"'
        self._members_name = members_table(table)
        self._members = f'"{self._members_name}"'
        # Whether members are recorded: None until the table is found; False when a
        # quorum of one goes on without them (the table cannot be made or used).
        self._membership: bool | None = None
        self._busy_timeout = 5.0
        self._create_table = create_table
        self._checked = False
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = db.connect(self._path, self._busy_timeout)
            try:
                if not self._checked:
                    db.find_table(
                        conn,
                        self._name,
                        columns=_COLUMNS,
                        key="name",
                        create=_CREATE if self._create_table else None,
                    )
                    self._checked = True
                    _log.info("SQLite leases are in %s, table %s", self._path, self._name)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _find_members(self, conn: sqlite3.Connection) -> None:
        if self._membership:
            return
        if self._members_name is None:
            raise DatabaseConfigError(
                f"table {self._name!r} leaves no room for its members table "
                f"({self._name}_members is longer than 63 characters)"
            )
        db.find_table(
            conn,
            self._members_name,
            columns=_MEMBER_COLUMNS,
            key=_MEMBER_KEY,
            create=_CREATE_MEMBERS if self._create_table else None,
        )
        self._membership = True

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], members: bool) -> T:
        """``fn(connection)`` in one write transaction; ``members``: with that table."""
        with self._lock:
            conn = self._connection()
            try:
                if members:
                    self._find_members(conn)
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._drop()
                raise
            return result

    def _acquire(self, conn: sqlite3.Connection, name: str, node: str, ttl: float) -> None:
        t = self._table
        conn.execute(
            f"INSERT INTO {t} (name, node, epoch, expires_at) "
            f"VALUES (?, ?, 1, {_NOW} + ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            f"epoch = CASE WHEN {t}.node = excluded.node "
            f"THEN {t}.epoch ELSE {t}.epoch + 1 END, "
            "node = excluded.node, expires_at = excluded.expires_at "
            f"WHERE {t}.node = excluded.node OR {t}.expires_at <= {_NOW}",
            (name, node, ttl),
        )

    def _holder(self, conn: sqlite3.Connection, name: str) -> tuple[str, int] | None:
        row = conn.execute(f"SELECT node, epoch FROM {self._table} WHERE name = ?", (name,))
        found = row.fetchone()
        return None if found is None else (str(found[0]), int(found[1]))

    def _heartbeat(self, conn: sqlite3.Connection, name: str, member: str, ttl: float) -> int:
        """Keep ``member`` alive for ``ttl``, sweep the dead; the live members now."""
        m = self._members
        conn.execute(f"DELETE FROM {m} WHERE election = ? AND expires_at <= {_NOW}", (name,))
        conn.execute(
            f"INSERT INTO {m} (election, node, expires_at) VALUES (?, ?, {_NOW} + ?) "
            "ON CONFLICT (election, node) DO UPDATE SET expires_at = excluded.expires_at",
            (name, member, ttl),
        )
        alive = conn.execute(f"SELECT count(*) FROM {m} WHERE election = ?", (name,))
        return int(alive.fetchone()[0])

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        def statements(conn: sqlite3.Connection) -> tuple[str, int] | None:
            self._acquire(conn, name, node, ttl)
            return self._holder(conn, name)

        return self._transaction(statements, members=False)

    def elect(
        self, name: str, node: str, ttl: float, *, member: str, quorum: int
    ) -> tuple[tuple[str, int] | None, int | None]:
        def statements(conn: sqlite3.Connection) -> tuple[tuple[str, int] | None, int]:
            alive = self._heartbeat(conn, name, member, ttl)
            if alive >= quorum:
                self._acquire(conn, name, node, ttl)
            return self._holder(conn, name), alive

        if self._membership is not False:
            try:
                return self._transaction(statements, members=True)
            except Exception as exc:
                # A quorum of one needs no members: go on without them, if the lease
                # itself works, rather than stop an election that worked before.
                if quorum > 1 or db.fault(exc) is Fault.TRANSIENT:
                    raise
                error: Exception | None = exc
        else:
            error = None
        row = self.acquire(name, node, ttl)
        if error is not None:
            self._membership = False
            _log.info(
                "SQLite election %r in %s records no members (quorum=1 needs none; "
                "periodic status shows none): %s",
                name,
                self._path,
                error,
            )
        return row, None

    def members(self, name: str) -> list[str]:
        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT node FROM {self._members} WHERE election = ? AND expires_at > {_NOW}",
                (name,),
            )
            return sorted(str(row[0]) for row in rows)

        return self._transaction(read, members=True)

    def leave(self, name: str, member: str) -> None:
        if not self._membership:
            return  # no row was written

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"DELETE FROM {self._members} WHERE election = ? AND node = ?", (name, member)
            )

        self._transaction(delete, members=True)

    def release(self, name: str, node: str) -> None:
        def expire(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE {self._table} SET expires_at = {_NOW} - 1 WHERE name = ? AND node = ?",
                (name, node),
            )

        self._transaction(expire, members=False)

    def set_call_timeout(self, seconds: float) -> None:
        # Waiting for another process's write lock counts against the call's own time.
        self._busy_timeout = seconds

    def fault(self, exc: Exception) -> Fault:
        return db.fault(exc)

    def close(self) -> None:
        with self._lock:
            self._drop()
            if self._membership is False:
                self._membership = None  # look again at the next serve


class SQLitePeer(LeasePeer):
    """A peer whose election is a lease row in an SQLite file: processes on one host.

    The stdlib ``sqlite3`` runs in a worker thread. Expiry is computed by SQLite from the
    host's clock, which all processes on the host share. Followers poll every ``ttl / 2``
    (with jitter); a leader that stops expires its lease so the next poll takes over.

    The path is made absolute when the peer is made, so processes started in different
    directories share one file; ``":memory:"`` and ``""`` (a database of each connection's
    own) are refused. ``serve`` fails with :class:`~periodic.peers.DatabaseConfigError`
    when the file's directory does not exist or an existing table has the wrong shape; a
    read-only file, one that is not a database, or a missing table with
    ``create_table=False`` is logged at ERROR while the peer retries.

    Each round of the election also keeps this peer's row in the members table
    (``<table>_members``, made like the leases table) alive for ``ttl``; the peer leads
    only while at least ``quorum`` members are alive, itself included. With
    ``quorum=1`` the members are only recorded (for :meth:`members` and
    :func:`read_elections`), and a members table that cannot be made or used is logged
    at INFO and done without.

    Args:
        path: The database file (made if missing). Give every process the same file.
        name: The election's name: peers with the same name elect one leader.
        ttl: Lease length in seconds (default 30; from 1 to 86 400).
        node: This process's identity; default ``host:pid:random``.
        table: The table of leases (default ``periodic_peers``); a plain identifier.
        create_table: Create the table on first use if it is missing (default ``True``).
        margin: Seconds the local belief ends before the lease (default ``ttl / 10``).
        call_timeout: Seconds one database call may take (default ``ttl / 4``).
        quorum: Live members the election needs for anyone to lead (default 1).

    Raises:
        TypeError, ValueError: An option is invalid (named in the message).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        ttl: float = 30.0,
        node: str | None = None,
        table: str = "periodic_peers",
        create_table: bool = True,
        margin: float | None = None,
        call_timeout: float | None = None,
        quorum: int = 1,
    ) -> None:
        self._path = db.absolute_path(path)
        if not isinstance(create_table, bool):
            raise TypeError(f"create_table must be a bool, got {create_table!r}")
        table = table_name(table, qualified=False).name
        backend = _SQLiteBackend(self._path, table, create_table)
        super().__init__(
            backend,
            name=name,
            ttl=ttl,
            node=node,
            margin=margin,
            call_timeout=call_timeout,
            quorum=quorum,
        )
        if self.quorum > 1 and members_table(table) is None:
            raise ValueError(
                f"table must leave room for its members table (<table>_members, at most 63 "
                f"characters) with quorum > 1, got {table!r}"
            )

    @property
    def path(self) -> str:
        """The database file, absolute."""
        return self._path

    def __repr__(self) -> str:
        state = "leader" if self._is_leader else "follower"
        return f"<SQLitePeer {self._name!r} path={self._path!r} node={self._node!r} {state}>"


# -- reading the elections from outside --------------------------------------------------------

#: How long a reader waits for another process's write lock.
_READ_TIMEOUT = 10.0


async def read_elections(
    path: str | os.PathLike[str], *, table: str = "periodic_peers"
) -> list[Election]:
    """The elections kept in an SQLite file, as they are now, without a peer.

    Reads the leases table and its members table (``<table>_members``) in one
    transaction, on the host's clock as the peers do; creates nothing.

    Args:
        path: The database file the peers use.
        table: The peers' ``table`` option.

    Returns:
        One :class:`~periodic.peers.Election` per election found (a lease row, or live
        members), by name; empty when the leases table does not exist.

    Raises:
        TypeError, ValueError: ``path`` or ``table`` is invalid.
        DatabaseConfigError: The file does not exist, or a table has the wrong shape.
        sqlite3.Error: SQLite failed (the file is not a database, it stayed locked).
    """
    file = db.absolute_path(path)
    name = table_name(table, qualified=False).name
    return await trio.to_thread.run_sync(_read_elections, file, name, abandon_on_cancel=True)


def _read_elections(path: str, table: str) -> list[Election]:
    if not os.path.isfile(path):
        raise DatabaseConfigError(f"SQLite database {path!r} does not exist")
    conn = sqlite3.connect(path, timeout=_READ_TIMEOUT, isolation_level=None)
    try:
        if not _found(conn, table, _COLUMNS, "name"):
            return []
        members = members_table(table)
        with_members = members is not None and _found(conn, members, _MEMBER_COLUMNS, _MEMBER_KEY)
        conn.execute("BEGIN")
        leases = conn.execute(
            f'SELECT name, node, epoch, expires_at, expires_at > {_NOW} FROM "{table}"'
        ).fetchall()
        alive = (
            conn.execute(
                f'SELECT election, node FROM "{members}" WHERE expires_at > {_NOW}'
            ).fetchall()
            if with_members
            else []
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return gather_elections(
        (
            (
                str(election),
                str(node),
                int(epoch),
                datetime.datetime.fromtimestamp(float(ends), tz=datetime.timezone.utc),
                bool(held),
            )
            for election, node, epoch, ends, held in leases
        ),
        ((str(election), str(node)) for election, node in alive),
    )


def _found(
    conn: sqlite3.Connection,
    table: str,
    columns: dict[str, tuple[str, ...]],
    key: str | tuple[str, ...],
) -> bool:
    """Whether ``table`` exists; checks its shape if it does."""
    if not conn.execute(f'PRAGMA table_info("{table}")').fetchall():
        return False
    db.find_table(conn, table, columns=columns, key=key, create=None)
    return True
