"""A peer elected through a lease row in an SQLite database: processes on one host."""

from __future__ import annotations

import os
import re
import sqlite3
import threading

from ._lease import LeaseBackend, LeasePeer

__all__ = ["SQLitePeer"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# The host's clock, as SQLite reads it: seconds since the epoch, with fractions.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def check_table(table: object) -> str:
    if not isinstance(table, str):
        raise TypeError(f"table must be a str, got {table!r}")
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(
            f"table must be a plain SQL identifier (letters, digits, _; not starting with "
            f"a digit; at most 63 characters), got {table!r}"
        )
    return table


class _SQLiteBackend(LeaseBackend):
    def __init__(self, path: str, table: str, create_table: bool) -> None:
        self._path = path
        # Quoted: a valid identifier may still be an SQL keyword ("order").
        self._table = f'"{table}"'
        self._busy_timeout = 5.0
        self._create_table = create_table
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                if self._create_table:
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self._table} ("
                        "name TEXT PRIMARY KEY, node TEXT NOT NULL, "
                        "epoch INTEGER NOT NULL, expires_at REAL NOT NULL)"
                    )
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

    def close(self) -> None:
        with self._lock:
            self._drop()


class SQLitePeer(LeasePeer):
    """A peer whose election is a lease row in an SQLite file: processes on one host.

    The stdlib ``sqlite3`` runs in a worker thread. Expiry is computed by SQLite from the
    host's clock, which all processes on the host share. Followers poll every ``ttl / 2``
    (with jitter); a leader that stops expires its lease so the next poll takes over.

    Args:
        path: The database file (made if missing). Give every process the same path.
        name: The election's name: peers with the same name elect one leader.
        ttl: Lease length in seconds (default 30).
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
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
        if not isinstance(create_table, bool):
            raise TypeError(f"create_table must be a bool, got {create_table!r}")
        self._path = os.fspath(path)
        backend = _SQLiteBackend(self._path, check_table(table), create_table)
        super().__init__(
            backend, name=name, ttl=ttl, node=node, margin=margin, call_timeout=call_timeout
        )

    def __repr__(self) -> str:
        state = "leader" if self._is_leader else "follower"
        return f"<SQLitePeer {self._name!r} path={self._path!r} node={self._node!r} {state}>"
