"""PostgreSQL for every backend: DSNs and their passwords, connections bounded in time,
how lasting an error is, and how a table is found and checked."""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, unquote, urlsplit

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from . import DatabaseConfigError, Fault, TableName, check_shape

T = TypeVar("T")
Connection = psycopg.Connection[TupleRow]


# -- DSNs -------------------------------------------------------------------------------------

# Where a password may sit in a connection string, parsed or not.
_URI_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^@\s]*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#\s]*)", re.IGNORECASE)
_URI_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)@")
_BARE_PASSWORD = re.compile(r"password\s+([^=\s]\S*)", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]*)"')
_DSN_FORMS = (
    'keyword=value pairs such as "host=db dbname=app user=app", or a URI such as '
    '"postgresql://app@db/app"'
)


class Scrubber:
    """Takes a DSN's password out of text and exceptions, also when the DSN is malformed."""

    def __init__(self, dsn: str) -> None:
        found: set[str] = set()
        with contextlib.suppress(Exception):
            password = conninfo_to_dict(dsn).get("password")
            if password:
                found.add(str(password))
        # Unparsable DSNs too: anything that sits where a password could.
        userinfo = _URI_USERINFO.match(dsn)
        if userinfo and ":" in userinfo[1]:
            found.add(userinfo[1].split(":", 1)[1])
        for pattern in (_QUERY_PASSWORD, _KEYWORD_PASSWORD, _BARE_PASSWORD):
            found.update(m[m.lastindex or 0].strip("'") for m in pattern.finditer(dsn))
        with contextlib.suppress(Exception):
            raw = urlsplit(dsn).password
            if raw:
                found.add(raw)
        for secret in list(found):
            found.update({unquote(secret), quote(secret, safe=""), quote_plus(secret)})
        self._secrets = sorted((s for s in found if s), key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _URI_PASSWORD.sub(r"\1***@", text)
        return _KEYWORD_PASSWORD.sub(r"\1***", text)

    def quoted_pieces(self, text: str) -> str:
        """``text`` with every quoted piece that overlaps a possible password masked.

        libpq quotes the part of a DSN it could not parse, which may be a piece of the
        password; the others (a keyword, a host) stay readable.
        """

        def mask(match: re.Match[str]) -> str:
            piece = match[1]
            if len(piece) > 1 and any(piece in s or s in piece for s in self._secrets):
                return '"***"'
            return match[0]

        return _QUOTED.sub(mask, self.text(text))

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


def parse_dsn(dsn: str) -> tuple[dict[str, Any], Scrubber]:
    """The DSN's parameters, and a scrubber for its password.

    Raises:
        ValueError: libpq cannot parse it; the message says where, without the password.
    """
    scrubber = Scrubber(dsn)
    try:
        return conninfo_to_dict(dsn), scrubber
    except Exception as exc:
        message = scrubber.quoted_pieces(str(exc).strip())
    # Outside the except block: the original error may name the password.
    raise ValueError(f"dsn is not a valid connection string: {message} (expected {_DSN_FORMS})")


def describe(params: Mapping[str, Any], scrubber: Scrubber) -> str:
    """``user@host:port/dbname`` from a parsed DSN, without the password."""
    where = f"{params.get('host') or ''}" + (f":{params['port']}" if params.get("port") else "")
    user = f"{params['user']}@" if params.get("user") else ""
    db = f"/{params['dbname']}" if params.get("dbname") else ""
    return scrubber.text(f"{user}{where}{db}")


# libpq and the kernel take these as C ints; Linux caps TCP keepalive times at 32767 s.
_INT_MAX = 2**31 - 1
_KEEPALIVE_MAX = 32767


def _clamp(value: float, low: int, high: int) -> int:
    return max(low, min(high, math.ceil(min(value, high))))


def conninfo(
    dsn: str, params: Mapping[str, Any], call_timeout: float, *, application_name: str
) -> tuple[str, str]:
    """The conninfo that bounds one call by about ``call_timeout`` (connecting, a dead
    server), and the ``statement_timeout`` to set; the DSN's own options win.

    Every derived time-out is clamped to what libpq and the kernel accept.
    """
    ms = _clamp(call_timeout * 1000, 1, _INT_MAX)
    defaults: dict[str, Any] = {
        "connect_timeout": _clamp(call_timeout, 2, _INT_MAX),  # libpq's minimum is 2
        "keepalives": 1,
        "keepalives_idle": _clamp(call_timeout, 1, _KEEPALIVE_MAX),
        "keepalives_interval": _clamp(call_timeout / 4, 1, _KEEPALIVE_MAX),
        "keepalives_count": 3,
        "tcp_user_timeout": ms,
        "fallback_application_name": application_name,
    }
    info = make_conninfo(dsn, **{k: v for k, v in defaults.items() if k not in params})
    return info, f"{ms}ms"


#: What :func:`connect` gives ``psycopg.connect`` (and a pool its connections).
CONNECTION_OPTIONS: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}


def connect(info: str, statement_timeout: str) -> Connection:
    """An autocommit connection whose statements are cut off after ``statement_timeout``,
    in READ COMMITTED (a stricter default would turn a lost race into an error)."""
    conn = psycopg.connect(info, **CONNECTION_OPTIONS)
    try:
        configure(conn, statement_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def configure(conn: Connection, statement_timeout: str) -> None:
    """Set the session of a new connection as :func:`connect` does (for a pool's
    ``configure`` callback)."""
    conn.execute(
        "SELECT set_config('statement_timeout', %s, false), "
        "set_config('default_transaction_isolation', 'read committed', false)",
        (statement_timeout,),
    )


class Link:
    """One connection, used by one call at a time, dropped after any error.

    The lock matters when a caller abandons a call that is still running in its thread.
    """

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._drop_when_done = False

    def run(self, fn: Callable[[Connection], T], timeout: float) -> T:
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
                # run twice: the statements are idempotent.
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
            self._lock.release()
            if self._drop_when_done:  # a close() came while this call ran
                self.close(0)

    def close(self, timeout: float) -> None:
        """Close the connection; the next call opens a new one. A call still running
        closes it as it ends."""
        # Asked for before the lock is tried: a call that ends meanwhile either sees it
        # as it lets go of the lock, or let go before, and the lock is ours.
        self._drop_when_done = True
        if self._lock.acquire(timeout=timeout):
            try:
                self._drop_when_done = False
                self._drop()
            finally:
                self._lock.release()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is being thrown away
                conn.close()


# -- notifications ----------------------------------------------------------------------------

# A channel is an identifier: at most 63 bytes, or LISTEN and pg_notify() disagree.
_CHANNEL_BYTES = 63


def channel(schema: str, table: str) -> str:
    """The notification channel of a table: its qualified name, or a digest of it."""
    qualified = f"{schema}.{table}"
    if len(qualified.encode()) <= _CHANNEL_BYTES:
        return qualified
    return f"periodic_{hashlib.sha256(qualified.encode()).hexdigest()[:40]}"


class Listener:
    """One connection listening (``LISTEN``) on a set of channels that may change,
    replaced after an error (it is a :class:`Link`).

    A notification sent while no connection listened is lost: :meth:`hear` says which
    channels it has just begun to listen on, so that the caller can look for what it
    may have missed on them.
    """

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._closed = False

        def connecting() -> Connection:
            # A call abandoned before it began may begin after close(): it must not
            # open a connection that nobody would ever close.
            if self._closed:
                raise RuntimeError("the listener is closed")
            return connect()

        self._link = Link(connecting)
        # The connection the channels below are listened on (kept, so that a new one
        # is never taken for it).
        self._conn: Connection | None = None
        self._channels: set[str] = set()

    def hear(
        self, channels: Collection[str], *, wait: float, timeout: float
    ) -> tuple[list[tuple[str, str]], set[str]]:
        """Listen on exactly ``channels``, and wait at most ``wait`` seconds for a
        notification (returning as soon as one comes).

        Returns:
            The notifications heard, as ``(channel, payload)``, and the channels that
            were not listened on before (on a new connection: all of them).

        Raises:
            TimeoutError: An earlier call still holds the connection after ``timeout``.
            RuntimeError: The listener was closed.
            psycopg.Error: The database failed (the connection is dropped).
        """

        def listen(conn: Connection) -> tuple[list[tuple[str, str]], set[str]]:
            if conn is not self._conn:
                self._conn, self._channels = conn, set()
            wanted = set(channels)
            fresh = wanted - self._channels
            for name in sorted(fresh):
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
                self._channels.add(name)
            for name in sorted(self._channels - wanted):
                conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(name)))
                self._channels.discard(name)
            heard = [(n.channel, n.payload) for n in conn.notifies(timeout=wait, stop_after=1)]
            return heard, fresh

        return self._link.run(listen, timeout)

    def disconnect(self, timeout: float) -> None:
        """Close the connection (when the call under way ends, if one is); the next call
        opens a new one."""
        self._link.close(timeout)

    def close(self, timeout: float) -> None:
        """Close the connection for good (when the call under way ends, if one is): a
        later call opens none."""
        self._closed = True
        self._link.close(timeout)


# -- errors -----------------------------------------------------------------------------------

# Connection failures carry no SQLSTATE in psycopg: libpq's (and the server's) words decide.
_FATAL_WORDS = re.compile(
    r"authentication failed|no pg_hba\.conf entry|no password supplied|"
    r"role \".*\" does not exist|database \".*\" does not exist|is not permitted to log in|"
    r"server does not support SSL|SSL was required|invalid connection option|"
    r"invalid \S+ value|invalid integer value|invalid port",
    re.IGNORECASE,
)
_PERSISTENT_WORDS = re.compile(r"permission denied", re.IGNORECASE)
_FATAL_STATES = ("28", "3D000")  # invalid authorization; unknown database
# Access rules (grants, missing objects), a read-only server, unsupported features.
_PERSISTENT_STATES = ("42", "3F000", "25006", "0A000")


def fault(exc: BaseException) -> Fault:
    """How lasting an error of a PostgreSQL call is (also for a scrubbed copy of it)."""
    if isinstance(exc, DatabaseConfigError):
        return Fault.FATAL
    if not isinstance(exc, psycopg.Error):
        return Fault.TRANSIENT  # our own time-outs, OSError
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith(_FATAL_STATES):
        return Fault.FATAL
    if state.startswith(_PERSISTENT_STATES):
        return Fault.PERSISTENT
    if not state:
        message = str(exc)
        if _FATAL_WORDS.search(message):
            return Fault.FATAL
        if _PERSISTENT_WORDS.search(message):
            return Fault.PERSISTENT
    # Refused, timed out, the server starting or shutting down, too many clients, a
    # cancelled statement, a serialization failure: all may pass.
    return Fault.TRANSIENT


# -- the table --------------------------------------------------------------------------------

_TYPMOD = re.compile(r"\(\d+(,\d+)?\)")


def find_table(
    conn: Connection,
    table: TableName,
    *,
    columns: Mapping[str, Collection[str]],
    key: str | Sequence[str],
    create: str | None,
    name_option: str = "table",
    create_option: str = "create_table",
) -> tuple[str, str]:
    """Find the table once for good, create it if asked, and check its shape.

    An unqualified name is looked up through the connection's ``search_path`` (or made
    in its ``current_schema()``) here, once: the caller then uses the qualified name
    whatever the ``search_path`` of later connections says.

    Args:
        columns: Each column the backend needs, with the types it accepts (as
            ``format_type`` writes them, without length or precision).
        key: The column that must have a unique index of its own, or the columns that
            must have one together (in any order).
        create: ``CREATE TABLE IF NOT EXISTS {table} (...)`` with ``{table}`` to fill in,
            or ``None`` to require an existing table.
        name_option, create_option: The backend's options that name the table and
            allow its creation, for the messages.

    Returns:
        The schema and the table's name.

    Raises:
        DatabaseConfigError: The table exists with the wrong shape.
        psycopg.errors.UndefinedTable: It does not exist and ``create`` is ``None``.
        psycopg.errors.InvalidSchemaName: There is no schema to make it in.
        psycopg.Error: The database failed.
    """
    schema = table.schema
    if schema is None:
        found = conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%s)",
            (sql.Identifier(table.name).as_string(conn),),
        ).fetchone()
        if found is None:
            found = conn.execute("SELECT current_schema()").fetchone()
        if found is None or found[0] is None:
            raise errors.InvalidSchemaName(
                f"table {table.name!r}: no schema in the search_path to make it in"
            )
        schema = str(found[0])
    identifier = sql.Identifier(schema, table.name)
    regclass = identifier.as_string(conn)
    shown = f"{schema}.{table.name}"
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), c.relkind "
        "FROM pg_catalog.pg_class c "
        "LEFT JOIN pg_catalog.pg_attribute a "
        "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE c.oid = to_regclass(%s)",
        (regclass,),
    ).fetchall()
    if not rows:
        if create is None:
            raise errors.UndefinedTable(
                f'relation "{shown}" does not exist ({create_option}=False: create it first)'
            )
        # UniqueViolation: another process created it at the same moment.
        with contextlib.suppress(errors.UniqueViolation, errors.DuplicateTable):
            conn.execute(sql.SQL(create).format(table=identifier))
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), 'r' "
            "FROM pg_catalog.pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (regclass,),
        ).fetchall()
    if rows[0][2] not in ("r", "p"):
        raise DatabaseConfigError(f"{shown} is not a table (relkind {rows[0][2]!r})")
    have = {str(name): _TYPMOD.sub("", str(kind)) for name, kind, _ in rows if name is not None}
    keys = sorted([key] if isinstance(key, str) else key)
    unique = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_index i "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indpred IS NULL "
        "AND i.indnatts = %s AND ARRAY(SELECT a.attname::text "
        "FROM unnest(i.indkey::int2[]) AS k(attnum) "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        'ORDER BY a.attname::text COLLATE "C") = %s::text[]',
        (regclass, len(keys), keys),
    ).fetchone()
    check_shape(shown, have, columns, key, unique is not None, option=name_option)
    return schema, table.name
