"""periodic._db: the rules every database backend shares, without a server.

How a table name and an SQLite path are checked, how DSN errors read, how derived
time-outs are clamped, how errors are judged, and when a streak of failures is reported.
The same rules against real databases are in tests/test_peer_misconfig.py.
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from periodic._db import DatabaseConfigError, FailureStreak, Fault, TableName, table_name
from periodic._db import postgres as pg
from periodic._db import sqlite as lite

# -- table names ------------------------------------------------------------------------------


def test_a_table_is_a_name_or_schema_dot_name() -> None:
    assert table_name("periodic_peers", qualified=True) == TableName(None, "periodic_peers")
    assert table_name("app.Peers", qualified=True) == TableName("app", "Peers")
    assert str(table_name("app.peers", qualified=True)) == "app.peers"
    assert table_name("order", qualified=False) == TableName(None, "order")


@pytest.mark.parametrize("bad", ["a.b.c", "a.", ".b", "a..b", "1a.b", "a.b;", "", "p" * 64])
def test_anything_else_is_refused_naming_what_is_accepted(bad: str) -> None:
    with pytest.raises(ValueError, match=r"table must be a plain SQL identifier or schema\.table"):
        table_name(bad, qualified=True)


def test_a_backend_without_schemas_refuses_a_dot() -> None:
    with pytest.raises(ValueError, match="table must be a plain SQL identifier \\("):
        table_name("main.peers", qualified=False)
    with pytest.raises(TypeError, match="table must be a str"):
        table_name(b"peers", qualified=False)


# -- SQLite paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [":memory:", "", "  "])
def test_a_database_of_each_connection_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path must name a file that every process opens"):
        lite.absolute_path(path)


def test_a_path_is_made_absolute_against_the_working_directory_of_the_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert lite.absolute_path("p.db") == str(tmp_path / "p.db")
    assert lite.absolute_path(Path("sub") / ".." / "p.db") == str(tmp_path / "p.db")
    with pytest.raises(ValueError, match="NUL"):
        lite.absolute_path("p\0.db")
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        lite.absolute_path(b"p.db")
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        lite.absolute_path(3)


def test_connecting_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "p.db"
    with pytest.raises(DatabaseConfigError, match=r"the directory .*nowhere. does not exist"):
        lite.connect(str(missing), 1.0)
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    ("declared", "affinity"),
    [
        ("TEXT", "TEXT"),
        ("varchar(20)", "TEXT"),
        ("INTEGER", "INTEGER"),
        ("bigint", "INTEGER"),
        ("REAL", "REAL"),
        ("double precision", "REAL"),
        ("", "BLOB"),
        ("timestamp", "NUMERIC"),
        ("NUMERIC", "NUMERIC"),
    ],
)
def test_sqlite_affinity_follows_its_documented_rules(declared: str, affinity: str) -> None:
    assert lite.affinity(declared) == affinity


# -- SQLite errors ----------------------------------------------------------------------------


def sqlite_error(tmp_path: Path, how: str) -> sqlite3.Error:
    """A real error of SQLite's own, with its error code."""
    path = tmp_path / "e.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    try:
        if how == "readonly":
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            conn.execute("INSERT INTO t VALUES (1)")
        elif how == "notadb":
            garbage = tmp_path / "garbage.db"
            garbage.write_bytes(b"this is not a database, just some text" * 100)
            sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master")
        elif how == "busy":
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            sqlite3.connect(path, timeout=0.01, isolation_level=None).execute("BEGIN IMMEDIATE")
        elif how == "no such table":
            sqlite3.connect(path).execute("SELECT * FROM missing")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"no error for {how}")


@pytest.mark.parametrize(
    ("how", "fault"),
    [
        ("busy", Fault.TRANSIENT),
        ("readonly", Fault.PERSISTENT),
        ("notadb", Fault.PERSISTENT),
        ("no such table", Fault.PERSISTENT),
    ],
)
def test_sqlite_errors_are_judged_by_what_can_heal(how: str, fault: Fault, tmp_path: Path) -> None:
    assert lite.fault(sqlite_error(tmp_path, how)) is fault


def test_other_sqlite_faults() -> None:
    assert lite.fault(DatabaseConfigError("bad shape")) is Fault.FATAL
    assert lite.fault(TimeoutError()) is Fault.TRANSIENT
    assert lite.fault(sqlite3.OperationalError("database is locked")) is Fault.TRANSIENT
    assert lite.fault(sqlite3.OperationalError("no such table: x")) is Fault.PERSISTENT


# -- DSNs -------------------------------------------------------------------------------------

SECRET = "s3cr%t-p@ss"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("this is not a dsn", 'missing "=" after "this"'),
        ("host=db password secret", 'missing "=" after "password"'),
        ("host=db dbnme=app", 'invalid connection option "dbnme"'),
        ("postgresql://app@db/app?sslmode", 'separator "=" in URI query parameter: "sslmode"'),
    ],
)
def test_a_malformed_dsn_says_where_it_is_wrong(dsn: str, shown: str) -> None:
    with pytest.raises(ValueError, match="dsn is not a valid connection string") as info:
        pg.parse_dsn(dsn)
    assert shown in str(info.value)
    assert "postgresql://app@db/app" in str(info.value)  # and what a good one looks like
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET}@127.0.0.1/test",  # a bare % in the password
        f"postgresql://app@h/db?password={SECRET}",
        f"postgresql://app:{SECRET.replace('%', '%25').replace('@', '%40')}@[::1/test",
        f"host=127.0.0.1 password='{SECRET}",
        f"host=127.0.0.1 password={SECRET} nonsense",
        f"host=127.0.0.1 password = {SECRET} nonsense",
    ],
)
def test_a_malformed_dsn_never_shows_its_password(dsn: str) -> None:
    with pytest.raises(ValueError, match="dsn is not a valid connection string") as info:
        pg.parse_dsn(dsn)
    for fragment in (SECRET, "s3cr", "p@ss", "%t-p", "p%40ss"):
        assert fragment not in str(info.value)
    assert info.value.__context__ is None


def test_a_parsed_dsn_is_described_without_its_password() -> None:
    encoded = SECRET.replace("%", "%25").replace("@", "%40")
    params, scrubber = pg.parse_dsn(f"postgresql://app:{encoded}@db:6543/x")
    assert params["password"] == SECRET
    assert pg.describe(params, scrubber) == "app@db:6543/x"
    error = scrubber.error(psycopg.OperationalError(f"failed for password {SECRET}"))
    assert SECRET not in str(error)
    assert isinstance(error, psycopg.OperationalError)


@pytest.mark.parametrize("call_timeout", [0.001, 0.25, 7.5, 21600.0, 1e9, 1e308, math.inf])
def test_derived_time_outs_stay_within_what_libpq_and_the_kernel_take(call_timeout: float) -> None:
    info, statement_timeout = pg.conninfo(
        "host=db", {"host": "db"}, call_timeout, application_name="t"
    )
    params = conninfo_to_dict(info)
    assert 2 <= int(params["connect_timeout"]) <= 2**31 - 1
    assert 1 <= int(params["keepalives_idle"]) <= 32767  # Linux's TCP_KEEPIDLE maximum
    assert 1 <= int(params["keepalives_interval"]) <= 32767
    assert 1 <= int(params["tcp_user_timeout"]) <= 2**31 - 1
    assert 1 <= int(statement_timeout.removesuffix("ms")) <= 2**31 - 1
    assert params["fallback_application_name"] == "t"


def test_a_days_call_timeout_keeps_the_keepalive_in_range() -> None:
    # ttl >= ~36 h made keepalives_idle = ttl / 4 > 32767 s: every connect failed.
    info, statement_timeout = pg.conninfo("host=db", {}, 36 * 3600 / 4, application_name="t")
    params = conninfo_to_dict(info)
    assert params["keepalives_idle"] == "32400"
    info, _ = pg.conninfo("host=db", {}, 86400 / 4 * 2, application_name="t")
    assert conninfo_to_dict(info)["keepalives_idle"] == "32767"
    assert statement_timeout == "32400000ms"


# -- PostgreSQL errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        # Connection failures: no SQLSTATE, libpq's words.
        (
            'connection failed: FATAL:  password authentication failed for user "app"',
            Fault.FATAL,
        ),
        ('connection failed: FATAL:  database "nope" does not exist', Fault.FATAL),
        ('connection failed: FATAL:  role "nope" does not exist', Fault.FATAL),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app"', Fault.FATAL),
        ("fe_sendauth: no password supplied", Fault.FATAL),
        ('invalid integer value "x" for connection option "port"', Fault.FATAL),
        ('invalid sslmode value: "bogus"', Fault.FATAL),
        ("server does not support SSL, but SSL was required", Fault.FATAL),
        ('FATAL:  permission denied for database "app"', Fault.PERSISTENT),
        ("connection failed: Connection refused", Fault.TRANSIENT),
        ("connection failed: timeout expired", Fault.TRANSIENT),
        ("FATAL:  the database system is starting up", Fault.TRANSIENT),
        ("FATAL:  the database system is shutting down", Fault.TRANSIENT),
        ("FATAL:  sorry, too many clients already", Fault.TRANSIENT),
        ("failed to resolve host 'db': Name or service not known", Fault.TRANSIENT),
        ("server closed the connection unexpectedly", Fault.TRANSIENT),
    ],
)
def test_connection_failures_are_judged_by_their_words(error: str, fault: Fault) -> None:
    assert pg.fault(psycopg.OperationalError(error)) is fault


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (errors.InvalidPassword, Fault.FATAL),
        (errors.InvalidAuthorizationSpecification, Fault.FATAL),
        (errors.InvalidCatalogName, Fault.FATAL),
        (errors.InsufficientPrivilege, Fault.PERSISTENT),
        (errors.UndefinedTable, Fault.PERSISTENT),
        (errors.InvalidSchemaName, Fault.PERSISTENT),
        (errors.ReadOnlySqlTransaction, Fault.PERSISTENT),
        (errors.QueryCanceled, Fault.TRANSIENT),
        (errors.AdminShutdown, Fault.TRANSIENT),
        (errors.CannotConnectNow, Fault.TRANSIENT),
        (errors.SerializationFailure, Fault.TRANSIENT),
        (errors.TooManyConnections, Fault.TRANSIENT),
    ],
)
def test_statement_errors_are_judged_by_their_sqlstate(
    error: type[psycopg.Error], fault: Fault
) -> None:
    assert pg.fault(error("whatever the message")) is fault


def test_other_postgres_faults() -> None:
    assert pg.fault(DatabaseConfigError("bad shape")) is Fault.FATAL
    assert pg.fault(TimeoutError("an earlier call is still running")) is Fault.TRANSIENT
    assert pg.fault(OSError("network is unreachable")) is Fault.TRANSIENT


# -- reporting a streak of failures -----------------------------------------------------------


def test_a_streak_is_reported_at_once_then_at_doubling_intervals() -> None:
    streak = FailureStreak(first_repeat=10.0, longest=60.0)
    reported = [t for t in range(200) if streak.failed(float(t), Fault.PERSISTENT)]
    assert reported == [0, 10, 30, 70, 130, 190]  # 10, 20, 40, then 60 s apart at most
    assert streak.attempts == 200
    assert streak.began == 0.0


def test_a_new_kind_of_fault_is_reported_at_once_and_a_new_streak_starts_afresh() -> None:
    streak = FailureStreak(first_repeat=10.0)
    assert streak.failed(0.0, Fault.TRANSIENT)
    assert not streak.failed(1.0, Fault.TRANSIENT)
    assert streak.failed(2.0, Fault.PERSISTENT)  # the database said something new
    assert not streak.failed(3.0, Fault.PERSISTENT)
    assert streak.succeeded() == 4
    assert streak.attempts == 0
    assert streak.failed(5.0, Fault.PERSISTENT)  # a new streak: reported at once
    assert streak.began == 5.0


def test_the_module_keeps_psycopg_out_of_sqlite_backends() -> None:
    # The shared part and the SQLite part import no driver but sqlite3.
    code = (
        "import sys, periodic._db, periodic._db.sqlite, periodic.peers.sqlite; "
        "print('psycopg' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.stdout.strip() == "False"


# -- listening, retrying ----------------------------------------------------------------------


def test_a_closed_listener_opens_no_connection() -> None:
    # A listening call abandoned before it began may begin after the listener was closed.
    made: list[str] = []

    def connect() -> pg.Connection:
        made.append("connection")
        raise AssertionError("a closed listener connects")

    listener = pg.Listener(connect)
    listener.close(0)
    with pytest.raises(RuntimeError, match="the listener is closed"):
        listener.hear(["channel"], wait=0.01, timeout=1.0)
    assert made == []


def test_the_retry_delay_doubles_up_to_the_longest_with_jitter() -> None:
    from periodic._db.calls import retry_delay

    for attempts, base in [(0, 0.25), (1, 0.25), (2, 0.5), (3, 1.0), (7, 15.0), (10_000, 15.0)]:
        for _ in range(20):
            assert base / 2 <= retry_delay(attempts) <= base
    assert retry_delay(5, longest=2.0) <= 2.0
