"""A peer elected through a lease row in PostgreSQL: processes on many hosts."""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, urlsplit

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from ._lease import LeaseBackend, LeasePeer
from .sqlite import check_table

__all__ = ["PostgresPeer"]

T = TypeVar("T")
_Connection = psycopg.Connection[TupleRow]

# Where a password may sit in a connection string that could not be parsed.
_URI_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^@\s]*@")
_QUOTED = re.compile(r'"([^"]*)"')
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    name text PRIMARY KEY,
    node text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
)"""

# Insert, take over an expired row, or renew our own: one statement, on the server's
# clock. Under READ COMMITTED, ON CONFLICT DO UPDATE judges its WHERE on the latest
# committed row, but the fallback SELECT reads the statement's snapshot, which can be
# older: it names the holder as it was, and may be missing a row inserted concurrently.
_ACQUIRE = """
WITH upserted AS (
    INSERT INTO {table} AS t (name, node, epoch, expires_at)
    VALUES (%(name)s, %(node)s, 1, now() + make_interval(secs => %(ttl)s))
    ON CONFLICT (name) DO UPDATE SET
        epoch = CASE WHEN t.node = EXCLUDED.node THEN t.epoch ELSE t.epoch + 1 END,
        node = EXCLUDED.node,
        expires_at = EXCLUDED.expires_at
    WHERE t.node = EXCLUDED.node OR t.expires_at <= now()
    RETURNING t.node, t.epoch
)
SELECT node, epoch, true FROM upserted
UNION ALL
SELECT node, epoch, false FROM {table}
WHERE name = %(name)s AND NOT EXISTS (SELECT FROM upserted)"""

# Expire rather than delete: the row keeps its epoch, so fences never go back.
_RELEASE = """
WITH released AS (
    UPDATE {table} SET expires_at = now() - interval '1 second'
    WHERE name = %(name)s AND node = %(node)s
    RETURNING name
)
SELECT pg_notify(%(channel)s, name) FROM released"""


class _Scrubber:
    """Takes a DSN's password out of text and exceptions."""

    def __init__(self, dsn: str) -> None:
        found: set[str] = set()
        with contextlib.suppress(Exception):
            password = conninfo_to_dict(dsn).get("password")
            if password:
                found.update(
                    {str(password), quote(str(password), safe=""), quote_plus(str(password))}
                )
        with contextlib.suppress(Exception):
            raw = urlsplit(dsn).password
            if raw:
                found.add(raw)
        self._secrets = sorted(found, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _URI_PASSWORD.sub(r"\1***@", text)
        return _KEYWORD_PASSWORD.sub(r"\1***", text)

    def error(self, exc: Exception) -> Exception:
        """``exc``, or a fresh exception of its type whose message names no password.

        A psycopg error is always remade: its ``pgconn`` attribute holds the password.
        """
        message = self.text(str(exc).strip())
        if isinstance(exc, psycopg.Error):
            try:
                return type(exc)(message)
            except Exception:
                return psycopg.OperationalError(message)
        if message == str(exc).strip():
            return exc
        return RuntimeError(f"{type(exc).__name__}: {message}")


def _mask_quoted(match: re.Match[str]) -> str:
    return match[0] if len(match[1]) <= 1 else '"***"'


def _parse(dsn: str, scrubber: _Scrubber) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # libpq quotes the piece it could not parse, which may be (part of) the password.
        message = _QUOTED.sub(_mask_quoted, scrubber.text(str(exc).strip()))
    # Outside the except block: the original error may name the password.
    raise ValueError(f"dsn is not a valid connection string: {message}")


class _Link:
    """One connection, used by one call at a time, dropped after any error.

    The lock matters when the peer abandons a call that is still running in its thread.
    """

    def __init__(self, connect: Callable[[], _Connection]) -> None:
        self._connect = connect
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self._drop_when_done = False

    def run(self, fn: Callable[[_Connection], T], timeout: float) -> T:
        """``fn(connection)``, on a new connection when the one it reused was broken."""
        if not self._lock.acquire(timeout=timeout):
            raise TimeoutError("an earlier call on this connection is still running")
        try:
            reused = self._conn is not None and not self._conn.closed
            if not reused:
                self._drop()
                self._conn = self._connect()
            assert self._conn is not None
            try:
                return fn(self._conn)
            except psycopg.OperationalError:
                # An idle connection the server dropped (restart, pg_terminate_backend)
                # fails the next call: try once more on a new one. Every call here may
                # run twice — the statements are idempotent.
                broken = self._conn.broken
                self._drop()
                if not (reused and broken):
                    raise
            except BaseException:
                self._drop()
                raise
            self._conn = self._connect()
            try:
                return fn(self._conn)
            except BaseException:
                self._drop()
                raise
        finally:
            if self._drop_when_done:
                self._drop_when_done = False
                self._drop()
            self._lock.release()

    def close(self, timeout: float) -> None:
        """Close the connection; the next call opens a new one."""
        if self._lock.acquire(timeout=timeout):
            try:
                self._drop()
            finally:
                self._lock.release()
        else:  # a call still running closes it when it ends
            self._drop_when_done = True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is being thrown away
                conn.close()


class _PostgresBackend(LeaseBackend):
    """The lease statements on PostgreSQL, with psycopg's sync API; LISTEN on a second
    connection. Needs psycopg >= 3.2 (``Connection.notifies(timeout=...)``)."""

    notifies = True

    def __init__(self, dsn: str, table: str, create_table: bool) -> None:
        self._scrubber = _Scrubber(dsn)
        self._params = _parse(dsn, self._scrubber)
        self._dsn = dsn
        self._table = table
        self._create_table = create_table
        self._created = False
        identifier = sql.Identifier(table)
        self._regclass = f'"{table}"'  # quoted, as sql.Identifier does
        self._create_sql = sql.SQL(_CREATE).format(table=identifier)
        self._acquire_sql = sql.SQL(_ACQUIRE).format(table=identifier)
        self._release_sql = sql.SQL(_RELEASE).format(table=identifier)
        self._listen_sql = sql.SQL("LISTEN {}").format(identifier)
        self._main = _Link(self._connect)
        self._listener = _Link(self._connect_listening)
        self.set_call_timeout(5.0)

    def set_call_timeout(self, seconds: float) -> None:
        """Bound every call to about ``seconds``: connecting, the statement, a dead peer.

        Options given in the DSN win over these defaults.
        """
        self._timeout = seconds
        ms = max(1, math.ceil(seconds * 1000))
        defaults: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(seconds)),  # libpq's minimum is 2
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(seconds)),
            "keepalives_interval": max(1, math.ceil(seconds / 4)),
            "keepalives_count": 3,
            "tcp_user_timeout": ms,
            "fallback_application_name": "periodic-peer",
        }
        self._conninfo = make_conninfo(
            self._dsn, **{k: v for k, v in defaults.items() if k not in self._params}
        )
        self._statement_timeout = f"{ms}ms"

    def describe(self) -> str:
        """``user@host:port/dbname`` from the DSN, without the password."""
        p = self._params
        where = f"{p.get('host') or ''}" + (f":{p['port']}" if p.get("port") else "")
        user = f"{p['user']}@" if p.get("user") else ""
        db = f"/{p['dbname']}" if p.get("dbname") else ""
        return self._scrubber.text(f"{user}{where}{db}")

    # -- connections ----------------------------------------------------------------------

    def _connect(self) -> _Connection:
        conn = psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=None)
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false), "
                # The election's one-statement upsert is written for READ COMMITTED; a
                # stricter default would turn a lost race into a serialization error.
                "set_config('default_transaction_isolation', 'read committed', false)",
                (self._statement_timeout,),
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_listening(self) -> _Connection:
        conn = self._connect()
        try:
            conn.execute(self._listen_sql)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, link: _Link, fn: Callable[[_Connection], T]) -> T:
        try:
            return link.run(fn, self._timeout)
        except Exception as exc:
            error = self._scrubber.error(exc)
        raise error  # outside the except block: the original may name the password

    def _ensure_table(self, conn: _Connection) -> None:
        if self._created or not self._create_table:
            return
        # CREATE TABLE IF NOT EXISTS needs the right to create in the schema even when
        # the table exists: look first, so a role allowed only to use it can.
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self._regclass,)).fetchone()
        if not (exists and exists[0]):
            # UniqueViolation: another process created it at the same moment.
            with contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable):
                conn.execute(self._create_sql)
        self._created = True

    # -- LeaseBackend ---------------------------------------------------------------------

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        def statement(conn: _Connection) -> list[TupleRow]:
            self._ensure_table(conn)
            params = {"name": name, "node": node, "ttl": ttl}
            return conn.execute(self._acquire_sql, params).fetchall()

        rows = self._run(self._main, statement)
        if not rows:
            return None  # a concurrent insert, not in our snapshot: holder unknown
        holder, epoch, written = rows[0]
        if not written and holder == node:
            return None  # an old snapshot of our own row: we did not get the lease
        return str(holder), int(epoch)

    def release(self, name: str, node: str) -> None:
        params = {"name": name, "node": node, "channel": self._table}
        self._run(self._main, lambda conn: conn.execute(self._release_sql, params))

    def wait_released(self, name: str, timeout: float) -> bool:
        # The peer abandons a call after its call_timeout; a wait must end well before,
        # or it could never report anything (and would hold the peer's thread).
        wait = max(0.0, min(timeout, self._timeout / 2))

        def listen(conn: _Connection) -> bool:
            return any(n.payload == name for n in conn.notifies(timeout=wait))

        return self._run(self._listener, listen)

    def close(self) -> None:
        self._main.close(self._timeout)
        self._listener.close(self._timeout)


class PostgresPeer(LeasePeer):
    """A peer whose election is a lease row in PostgreSQL: processes on many hosts.

    psycopg 3's synchronous driver runs in worker threads (its async API does not run on
    Trio); install it with ``pip install 'periodic[postgres]'``. Expiry is computed and
    compared by the server (``now()``), so the hosts' clocks do not matter. The leader
    renews every ``ttl / 2``; followers retry every ``ttl / 2`` (with jitter) and, in
    between, listen on a second connection for the ``NOTIFY`` a leader sends when it
    stops, so one of them takes over at once.

    The table (one row per election; created on first use unless ``create_table=False``)::

        CREATE TABLE periodic_peers (
            name text PRIMARY KEY, node text NOT NULL,
            epoch bigint NOT NULL, expires_at timestamptz NOT NULL)

    The notification channel is the table's name. A stopping leader expires its row
    rather than deleting it, so the epoch — the fence — never goes back: it grows by one
    each time the lease passes to another node. Fence the writes a guarded job makes, so
    that a leader that was cut off cannot overwrite its successor's work::

        cur.execute(
            "UPDATE totals SET value = %s, fence = %s WHERE id = %s AND fence <= %s",
            (value, fence, id, fence),
        )  # no row changed: a newer leader has written; give up

    where ``fence`` is ``current_run().fence`` (or :attr:`fence`) when the run started.

    Every call is bounded by ``call_timeout``: a ``statement_timeout``, a
    ``connect_timeout``, TCP keepalives and ``tcp_user_timeout`` are set on the
    connections (the DSN's own values win). The DSN's password never appears in the
    peer's ``repr``, its log records or the errors it reports.

    Args:
        dsn: A libpq connection string or URI (``postgresql://user:pw@host/db``).
        name: The election's name: peers with the same name elect one leader.
        ttl: Lease length in seconds (default 30).
        node: This process's identity; default ``host:pid:random``.
        table: The table of leases (default ``periodic_peers``); a plain identifier,
            in the connection's ``search_path``.
        create_table: Create the table on first use if it is missing (default ``True``).
        margin: Seconds the local belief ends before the lease (default ``ttl / 10``).
        call_timeout: Seconds one database call may take (default ``ttl / 4``).

    Raises:
        TypeError, ValueError: An option is invalid (named in the message), or ``dsn``
            cannot be parsed.
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str,
        ttl: float = 30.0,
        node: str | None = None,
        table: str = "periodic_peers",
        create_table: bool = True,
        margin: float | None = None,
        call_timeout: float | None = None,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, got {type(dsn).__name__}")
        if not isinstance(create_table, bool):
            raise TypeError(f"create_table must be a bool, got {create_table!r}")
        backend = _PostgresBackend(dsn, check_table(table), create_table)
        super().__init__(
            backend, name=name, ttl=ttl, node=node, margin=margin, call_timeout=call_timeout
        )
        self._where = backend.describe()
        self._table = table

    @property
    def table(self) -> str:
        """The table of leases, also the notification channel."""
        return self._table

    def __repr__(self) -> str:
        state = "leader" if self._is_leader else "follower"
        return (
            f"<PostgresPeer {self._name!r} db={self._where!r} table={self._table!r} "
            f"node={self._node!r} {state}>"
        )
