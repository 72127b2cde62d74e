"""A peer elected through a lease row in an SQLite database: processes on one host."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

from .._db import Fault, table_name
from .._db import sqlite as db
from ._lease import LeaseBackend, LeasePeer

__all__ = ["SQLitePeer"]

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


class _SQLiteBackend(LeaseBackend):
    def __init__(self, path: str, table: str, create_table: bool) -> None:
        self._path = path
        self._name = table
        # Quoted: a valid identifier may still be an SQL keyword ("order").
        self._table = f'"{table}"'
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

    def _run(self, name: str, node: str, ttl: float | None) -> tuple[str, int] | None:
        with self._lock:
            conn = self._connection()
            t = self._table
            try:
                conn.execute("BEGIN IMMEDIATE")
                if ttl is None:
                    conn.execute(
                        f"UPDATE {t} SET expires_at = {_NOW} - 1 WHERE name = ? AND node = ?",
                        (name, node),
                    )
                    conn.execute("COMMIT")
                    return None
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
                row = conn.execute(
                    f"SELECT node, epoch FROM {t} WHERE name = ?", (name,)
                ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                self._drop()
                raise
            return None if row is None else (str(row[0]), int(row[1]))

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        return self._run(name, node, ttl)

    def release(self, name: str, node: str) -> None:
        self._run(name, node, None)

    def set_call_timeout(self, seconds: float) -> None:
        # Waiting for another process's write lock counts against the call's own time.
        self._busy_timeout = seconds

    def fault(self, exc: Exception) -> Fault:
        return db.fault(exc)

    def close(self) -> None:
        with self._lock:
            self._drop()


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

    Args:
        path: The database file (made if missing). Give every process the same file.
        name: The election's name: peers with the same name elect one leader.
        ttl: Lease length in seconds (default 30; from 1 to 86 400).
        node: This process's identity; default ``host:pid:random``.
        table: The table of leases (default ``periodic_peers``); a plain identifier.
        create_table: Create the table on first use if it is missing (default ``True``).
        margin: Seconds the local belief ends before the lease (default ``ttl / 10``).
        call_timeout: Seconds one database call may take (default ``ttl / 4``).

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
    ) -> None:
        self._path = db.absolute_path(path)
        if not isinstance(create_table, bool):
            raise TypeError(f"create_table must be a bool, got {create_table!r}")
        backend = _SQLiteBackend(self._path, table_name(table, qualified=False).name, create_table)
        super().__init__(
            backend, name=name, ttl=ttl, node=node, margin=margin, call_timeout=call_timeout
        )

    @property
    def path(self) -> str:
        """The database file, absolute."""
        return self._path

    def __repr__(self) -> str:
        state = "leader" if self._is_leader else "follower"
        return f"<SQLitePeer {self._name!r} path={self._path!r} node={self._node!r} {state}>"
