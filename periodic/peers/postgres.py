"""A peer elected through a lease row in PostgreSQL: processes on many hosts."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import trio
from psycopg import errors, sql
from psycopg.rows import TupleRow

from .._db import DatabaseConfigError, Fault, TableName, table_name
from .._db import postgres as db
from ._lease import Election, LeaseBackend, LeasePeer, gather_elections, members_table

__all__ = ["PostgresPeer", "read_elections"]

T = TypeVar("T")
_log = logging.getLogger("periodic")

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    name text PRIMARY KEY,
    node text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
)"""
# What an existing table must look like (types as format_type writes them). A timestamp
# without time zone would be read in each session's TimeZone: leases would disagree.
_COLUMNS = {
    "name": ("text", "character varying"),
    "node": ("text", "character varying"),
    "epoch": ("bigint",),
    "expires_at": ("timestamp with time zone",),
}

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

# One row per live member of an election, beside the leases: <table>_members.
_CREATE_MEMBERS = """
CREATE TABLE IF NOT EXISTS {table} (
    election text NOT NULL,
    node text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (election, node)
)"""
_MEMBER_COLUMNS = {
    "election": ("text", "character varying"),
    "node": ("text", "character varying"),
    "expires_at": ("timestamp with time zone",),
}
_MEMBER_KEY = ("election", "node")

# A round with members, in one statement (one round trip, as without them): sweep the
# election's dead members, keep ours alive, count the live ones, and only with enough
# of them do what _ACQUIRE does. The sub-statements share one snapshot, which does not
# show our own row: the count is of the others, plus one. Always one row back: the count,
# and the lease row (NULLs when there is none in the snapshot).
_ELECT = """
WITH swept AS (
    DELETE FROM {members}
    WHERE election = %(name)s AND node <> %(member)s AND expires_at <= now()
), kept AS (
    INSERT INTO {members} AS m (election, node, expires_at)
    VALUES (%(name)s, %(member)s, now() + make_interval(secs => %(ttl)s))
    ON CONFLICT (election, node) DO UPDATE SET expires_at = EXCLUDED.expires_at
), alive AS (
    SELECT 1 + count(*) AS n FROM {members}
    WHERE election = %(name)s AND node <> %(member)s AND expires_at > now()
), upserted AS (
    INSERT INTO {table} AS t (name, node, epoch, expires_at)
    SELECT %(name)s, %(node)s, 1, now() + make_interval(secs => %(ttl)s)
    FROM alive WHERE alive.n >= %(quorum)s
    ON CONFLICT (name) DO UPDATE SET
        epoch = CASE WHEN t.node = EXCLUDED.node THEN t.epoch ELSE t.epoch + 1 END,
        node = EXCLUDED.node,
        expires_at = EXCLUDED.expires_at
    WHERE t.node = EXCLUDED.node OR t.expires_at <= now()
    RETURNING t.node, t.epoch
)
SELECT alive.n, lease.node, lease.epoch, lease.written FROM alive LEFT JOIN (
    SELECT node, epoch, true AS written FROM upserted
    UNION ALL
    SELECT node, epoch, false FROM {table}
    WHERE name = %(name)s AND NOT EXISTS (SELECT FROM upserted)
) AS lease ON true"""
_MEMBERS = """
SELECT node FROM {members} WHERE election = %(name)s AND expires_at > now()"""
_LEAVE = """
DELETE FROM {members} WHERE election = %(name)s AND node = %(member)s"""

# Expire rather than delete: the row keeps its epoch, so fences never go back.
_RELEASE = """
WITH released AS (
    UPDATE {table} SET expires_at = now() - interval '1 second'
    WHERE name = %(name)s AND node = %(node)s
    RETURNING name
)
SELECT pg_notify(%(channel)s, name) FROM released"""

# A channel is an identifier: at most 63 bytes, or LISTEN and pg_notify() disagree.
_CHANNEL_BYTES = 63


def _channel(schema: str, table: str) -> str:
    """The notification channel of a table: its qualified name, or a digest of it."""
    qualified = f"{schema}.{table}"
    if len(qualified.encode()) <= _CHANNEL_BYTES:
        return qualified
    return f"periodic_{hashlib.sha256(qualified.encode()).hexdigest()[:40]}"


class _PostgresBackend(LeaseBackend):
    """The lease statements on PostgreSQL, with psycopg's sync API; LISTEN on a second
    connection. Needs psycopg >= 3.2 (``Connection.notifies(timeout=...)``)."""

    notifies = True
    membership = True

    def __init__(self, dsn: str, table: str | TableName, create_table: bool) -> None:
        self._params, self._scrubber = db.parse_dsn(dsn)
        self._dsn = dsn
        self._table = table if isinstance(table, TableName) else table_name(table, qualified=True)
        self._create_table = create_table
        # Found at first use, then fixed: every statement names the same table however
        # the search_path of a later connection reads.
        self._qualified: tuple[str, str] | None = None
        self._acquire_sql: sql.Composed | None = None
        self._release_sql: sql.Composed | None = None
        self._channel: str | None = None
        # The members table, beside the leases in their schema, once found. False: a
        # quorum of one goes on without it (it cannot be made or used).
        self._members_name = members_table(self._table.name)
        self._membership: bool | None = None
        self._elect_sql: sql.Composed | None = None
        self._members_sql: sql.Composed | None = None
        self._leave_sql: sql.Composed | None = None
        self._main = db.Link(self._connect)
        self._listener = db.Link(self._connect_listening)
        self.set_call_timeout(5.0)

    def set_call_timeout(self, seconds: float) -> None:
        """Bound every call to about ``seconds``: connecting, the statement, a dead peer.

        Options given in the DSN win over these defaults.
        """
        self._timeout = seconds
        self._conninfo, self._statement_timeout = db.conninfo(
            self._dsn, self._params, seconds, application_name="periodic-peer"
        )

    def describe(self) -> str:
        """``user@host:port/dbname`` from the DSN, without the password."""
        return db.describe(self._params, self._scrubber)

    # -- connections ----------------------------------------------------------------------

    def _connect(self) -> db.Connection:
        return db.connect(self._conninfo, self._statement_timeout)

    def _connect_listening(self) -> db.Connection:
        assert self._channel is not None
        conn = self._connect()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, link: db.Link, fn: Callable[[db.Connection], T]) -> T:
        try:
            return link.run(fn, self._timeout)
        except Exception as exc:
            error = self._scrubber.error(exc)
        raise error  # outside the except block: the original may name the password

    def _find_table(self, conn: db.Connection) -> None:
        if self._qualified is not None:
            return
        schema, name = db.find_table(
            conn,
            self._table,
            columns=_COLUMNS,
            key="name",
            create=_CREATE if self._create_table else None,
        )
        table = sql.Identifier(schema, name)
        self._acquire_sql = sql.SQL(_ACQUIRE).format(table=table)
        self._release_sql = sql.SQL(_RELEASE).format(table=table)
        self._channel = _channel(schema, name)
        self._qualified = (schema, name)
        hint = (
            ""
            if self._table.schema
            else f" (found through the search_path: give table={schema + '.' + name!r} so "
            f"that every role and search_path finds this one)"
        )
        _log.info(
            "PostgreSQL leases at %s are in table %s.%s%s",
            self.describe(),
            schema,
            name,
            hint,
            extra={"periodic_table": f"{schema}.{name}"},
        )

    def _find_members(self, conn: db.Connection) -> None:
        self._find_table(conn)
        if self._membership:
            return
        assert self._qualified is not None
        schema, name = self._qualified
        if self._members_name is None:
            raise DatabaseConfigError(
                f"table {schema}.{name} leaves no room for its members table "
                f"({name}_members is longer than 63 characters)"
            )
        _, members = db.find_table(
            conn,
            TableName(schema, self._members_name),
            columns=_MEMBER_COLUMNS,
            key=_MEMBER_KEY,
            create=_CREATE_MEMBERS if self._create_table else None,
        )
        names = {"table": sql.Identifier(schema, name), "members": sql.Identifier(schema, members)}
        self._elect_sql = sql.SQL(_ELECT).format(**names)
        self._members_sql = sql.SQL(_MEMBERS).format(**names)
        self._leave_sql = sql.SQL(_LEAVE).format(**names)
        self._membership = True

    # -- LeaseBackend ---------------------------------------------------------------------

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        def statement(conn: db.Connection) -> list[TupleRow]:
            self._find_table(conn)
            assert self._acquire_sql is not None
            params = {"name": name, "node": node, "ttl": ttl}
            return conn.execute(self._acquire_sql, params).fetchall()

        rows = self._run(self._main, statement)
        if not rows:
            return None  # a concurrent insert, not in our snapshot: holder unknown
        holder, epoch, written = rows[0]
        if not written and holder == node:
            return None  # an old snapshot of our own row: we did not get the lease
        return str(holder), int(epoch)

    def elect(
        self, name: str, node: str, ttl: float, *, member: str, quorum: int
    ) -> tuple[tuple[str, int] | None, int | None]:
        def statement(conn: db.Connection) -> TupleRow:
            self._find_members(conn)
            assert self._elect_sql is not None
            params = {"name": name, "node": node, "ttl": ttl, "member": member, "quorum": quorum}
            row = conn.execute(self._elect_sql, params).fetchone()
            assert row is not None  # one row, always
            return row

        error: Exception | None = None
        if self._membership is not False:
            try:
                alive, holder, epoch, written = self._run(self._main, statement)
            except Exception as exc:
                # A quorum of one needs no members: go on without them, if the lease
                # itself works, rather than stop an election that worked before.
                if quorum > 1 or db.fault(exc) is Fault.TRANSIENT:
                    raise
                error = exc
            else:
                if holder is None:
                    return None, int(alive)  # no row, or a concurrent insert: unknown
                if not written and holder == node and int(alive) >= quorum:
                    return None, int(alive)  # an old snapshot of our own row (see _ACQUIRE)
                return (str(holder), int(epoch)), int(alive)
        row = self.acquire(name, node, ttl)
        if error is not None:
            self._membership = False
            _log.info(
                "PostgreSQL election %r at %s records no members (quorum=1 needs none; "
                "periodic status shows none): %s",
                name,
                self.describe(),
                error,
            )
        return row, None

    def members(self, name: str) -> list[str]:
        def statement(conn: db.Connection) -> list[str]:
            self._find_members(conn)
            assert self._members_sql is not None
            rows = conn.execute(self._members_sql, {"name": name}).fetchall()
            return sorted(str(row[0]) for row in rows)

        return self._run(self._main, statement)

    def leave(self, name: str, member: str) -> None:
        if not self._membership:
            return  # no row was written

        def statement(conn: db.Connection) -> None:
            assert self._leave_sql is not None
            conn.execute(self._leave_sql, {"name": name, "member": member})

        self._run(self._main, statement)

    def release(self, name: str, node: str) -> None:
        def statement(conn: db.Connection) -> None:
            self._find_table(conn)
            assert self._release_sql is not None
            params = {"name": name, "node": node, "channel": self._channel}
            conn.execute(self._release_sql, params)

        self._run(self._main, statement)

    def wait_released(self, name: str, timeout: float) -> bool:
        # The peer abandons a call after its call_timeout; a wait must end well before,
        # or it could never report anything (and would hold the peer's thread).
        wait = max(0.0, min(timeout, self._timeout / 2))
        if self._channel is None:  # no acquire has found the table yet
            self._run(self._main, self._find_table)

        def listen(conn: db.Connection) -> bool:
            return any(n.payload == name for n in conn.notifies(timeout=wait))

        return self._run(self._listener, listen)

    def fault(self, exc: Exception) -> Fault:
        return db.fault(exc)

    def close(self) -> None:
        self._main.close(self._timeout)
        self._listener.close(self._timeout)
        if self._membership is False:
            self._membership = None  # look again at the next serve


class PostgresPeer(LeasePeer):
    """A peer whose election is a lease row in PostgreSQL: processes on many hosts.

    psycopg 3's synchronous driver runs in worker threads (its async API does not run on
    Trio); install it with ``pip install 'trio-periodic[postgres]'``. Expiry is computed
    and compared by the server (``now()``), so the hosts' clocks do not matter. The leader
    renews every ``ttl / 2``; followers retry every ``ttl / 2`` (with jitter) and, in
    between, listen on a second connection for the ``NOTIFY`` a leader sends when it
    stops, so one of them takes over at once.

    The table (one row per election; created on first use unless ``create_table=False``)::

        CREATE TABLE periodic_peers (
            name text PRIMARY KEY, node text NOT NULL,
            epoch bigint NOT NULL, expires_at timestamptz NOT NULL)

    Name it with its schema (``table="app.periodic_peers"``): an unqualified name is
    looked up through the ``search_path`` of the peer's role, and two roles whose
    ``search_path`` differ would find two tables, and elect two leaders. The table is
    found once, at first use, and its fully qualified name logged at INFO; an existing
    table whose columns have other types (``expires_at timestamp`` without time zone
    makes leases depend on each session's ``TimeZone``) is refused.

    The notification channel is the table's qualified name. A stopping leader expires its
    row rather than deleting it, so the epoch — the fence — never goes back: it grows by
    one each time the lease passes to another node. Fence the writes a guarded job makes,
    so that a leader that was cut off cannot overwrite its successor's work::

        cur.execute(
            "UPDATE totals SET value = %s, fence = %s WHERE id = %s AND fence <= %s",
            (value, fence, id, fence),
        )  # no row changed: a newer leader has written; give up

    where ``fence`` is ``current_run().fence`` (or :attr:`fence`) when the run started.

    Each round of the election also keeps this peer's row in the members table
    (``<table>_members``, in the same schema, made like the leases table) alive for
    ``ttl``, in the same statement; the peer leads only while at least ``quorum``
    members are alive, itself included. With ``quorum=1`` the members are only recorded
    (for :meth:`members` and :func:`read_elections`), and a members table that cannot be
    made or used (a role without ``CREATE`` on the schema) is logged at INFO and done
    without.

    Every call is bounded by ``call_timeout``: a ``statement_timeout``, a
    ``connect_timeout``, TCP keepalives and ``tcp_user_timeout`` are set on the
    connections (the DSN's own values win). The DSN's password never appears in the
    peer's ``repr``, its log records or the errors it reports.

    ``serve`` fails with :class:`~periodic.peers.DatabaseConfigError` when its first
    attempts meet a configuration that cannot work (authentication failed, an unknown
    database or role, a bad connection option, a table of the wrong shape); errors that
    need someone to act (a missing grant, a missing table with ``create_table=False``) are
    logged at ERROR while the peer retries; the others (refused, timed out, the server
    restarting) are retried with a warning.

    Args:
        dsn: A libpq connection string or URI (``postgresql://user:pw@host/db``).
        name: The election's name: peers with the same name elect one leader.
        ttl: Lease length in seconds (default 30; from 1 to 86 400).
        node: This process's identity; default ``host:pid:random``.
        table: The table of leases (default ``periodic_peers``): ``schema.table``, or a
            plain identifier found through the ``search_path``.
        create_table: Create the table on first use if it is missing (default ``True``).
        margin: Seconds the local belief ends before the lease (default ``ttl / 10``).
        call_timeout: Seconds one database call may take (default ``ttl / 4``).
        quorum: Live members the election needs for anyone to lead (default 1).

    Raises:
        TypeError, ValueError: An option is invalid (named in the message), or ``dsn``
            cannot be parsed (the message says where, without the password).
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
        quorum: int = 1,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, got {type(dsn).__name__}")
        if not isinstance(create_table, bool):
            raise TypeError(f"create_table must be a bool, got {create_table!r}")
        qualified = table_name(table, qualified=True)
        backend = _PostgresBackend(dsn, qualified, create_table)
        super().__init__(
            backend,
            name=name,
            ttl=ttl,
            node=node,
            margin=margin,
            call_timeout=call_timeout,
            quorum=quorum,
        )
        if self.quorum > 1 and members_table(qualified.name) is None:
            raise ValueError(
                f"table must leave room for its members table (<table>_members, at most 63 "
                f"characters) with quorum > 1, got {table!r}"
            )
        self._where = backend.describe()
        self._table = table

    @property
    def table(self) -> str:
        """The table of leases, as given (its qualified name is also the channel)."""
        return self._table

    def __repr__(self) -> str:
        state = "leader" if self._is_leader else "follower"
        return (
            f"<PostgresPeer {self._name!r} db={self._where!r} table={self._table!r} "
            f"node={self._node!r} {state}>"
        )


# -- reading the elections from outside --------------------------------------------------------

#: Seconds the reader's connection and statements may take.
_READ_TIMEOUT = 10.0

_READ_LEASES = """
SELECT name, node, epoch, expires_at, expires_at > now() FROM {table}"""
_READ_MEMBERS = """
SELECT election, node FROM {members} WHERE expires_at > now()"""


async def read_elections(dsn: str, *, table: str = "periodic_peers") -> list[Election]:
    """The elections kept in PostgreSQL, as they are now, without a peer.

    Finds the leases table as the peers do (through the ``search_path`` when ``table``
    is not qualified) and its members table beside it, and reads both in one
    transaction, on the server's clock; creates nothing. Every step is bounded by about
    10 s; the DSN's password never appears in what it raises.

    Args:
        dsn: A libpq connection string or URI, as the peers are given.
        table: The peers' ``table`` option.

    Returns:
        One :class:`~periodic.peers.Election` per election found (a lease row, or live
        members), by name; empty when the leases table does not exist.

    Raises:
        TypeError, ValueError: ``dsn`` or ``table`` is invalid.
        DatabaseConfigError: What cannot heal: authentication failed, an unknown
            database or role, a table of the wrong shape.
        psycopg.Error: The server could not be reached or refused the read (a missing
            grant, a time-out).
    """
    if not isinstance(dsn, str):
        raise TypeError(f"dsn must be a str, got {type(dsn).__name__}")
    params, scrubber = db.parse_dsn(dsn)
    qualified = table_name(table, qualified=True)
    read = functools.partial(_read_elections, dsn, params, scrubber, qualified)
    return await trio.to_thread.run_sync(read, abandon_on_cancel=True)


def _read_elections(
    dsn: str, params: Mapping[str, Any], scrubber: db.Scrubber, table: TableName
) -> list[Election]:
    info, statement_timeout = db.conninfo(
        dsn, params, _READ_TIMEOUT, application_name="periodic-status"
    )
    try:
        with db.connect(info, statement_timeout) as conn:
            return _read(conn, table)
    except Exception as exc:
        error = scrubber.error(exc)
    # Outside the except block: the original may name the password.
    if db.fault(error) is Fault.FATAL and not isinstance(error, DatabaseConfigError):
        where = db.describe(params, scrubber)
        raise DatabaseConfigError(
            f"cannot read the elections at {where} as configured ({type(error).__name__}): {error}"
        ) from error
    raise error


def _read(conn: db.Connection, table: TableName) -> list[Election]:
    try:
        schema, name = db.find_table(conn, table, columns=_COLUMNS, key="name", create=None)
    except errors.UndefinedTable:
        return []
    members = members_table(name)
    if members is not None:
        try:
            db.find_table(
                conn,
                TableName(schema, members),
                columns=_MEMBER_COLUMNS,
                key=_MEMBER_KEY,
                create=None,
            )
        except errors.UndefinedTable:
            members = None
    with conn.transaction():  # one snapshot's now() for both
        leases = conn.execute(
            sql.SQL(_READ_LEASES).format(table=sql.Identifier(schema, name))
        ).fetchall()
        alive = (
            []
            if members is None
            else conn.execute(
                sql.SQL(_READ_MEMBERS).format(members=sql.Identifier(schema, members))
            ).fetchall()
        )
    return gather_elections(
        (
            (str(election), str(node), int(epoch), ends, bool(held))
            for election, node, epoch, ends, held in leases
        ),
        ((str(election), str(node)) for election, node in alive),
    )
