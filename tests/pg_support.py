"""PostgreSQL for the tests: the server's DSN, a skip when it is absent, a fresh table per test.

The server is the one in ``PERIODIC_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be reached (or psycopg is
not installed) the tests that need it are skipped — unless ``PERIODIC_REQUIRE_POSTGRES=1``
(CI sets it), which turns the skip into a failure.

Use the fixtures by importing them into a test module (pytest finds fixtures by name
in the module's namespace)::

    from pg_support import pg_dsn, pg_table

    pytestmark = pytest.mark.postgres

    async def test_something(pg_dsn: str, pg_table: str) -> None:
        peer = PostgresPeer(pg_dsn, name="x", table=pg_table, ttl=1.0)

``pg_table`` is a table name no other test uses (so tests and processes can share the
server), dropped after the test. Outside fixtures, :func:`require_postgres`,
:func:`unique_table`, :func:`query` and :func:`drop_table` do the same by hand.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import pytest

__all__ = [
    "DEFAULT_DSN",
    "drop_table",
    "dsn",
    "pg_ctlcluster",
    "pg_dsn",
    "pg_table",
    "query",
    "require_postgres",
    "unique_table",
]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DSN_ENV = "PERIODIC_TEST_POSTGRES_DSN"
REQUIRE_ENV = "PERIODIC_REQUIRE_POSTGRES"


def dsn() -> str:
    """The test server's DSN: ``$PERIODIC_TEST_POSTGRES_DSN`` or :data:`DEFAULT_DSN`."""
    return os.environ.get(DSN_ENV) or DEFAULT_DSN


def _unavailable(why: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but {why}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {why}")


def require_postgres() -> str:
    """Return the DSN if the server answers; else skip the test (fail if required)."""
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'trio-periodic[postgres]')")
    target = dsn()
    try:
        with psycopg.connect(target, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        # The message names the host, never the password: libpq leaves it out.
        why = f"cannot connect: {type(exc).__name__}: {str(exc).strip()}"
    else:
        return target
    _unavailable(why)  # outside the except block: no chained traceback in the report


def unique_table(prefix: str = "periodic_peers_t") -> str:
    """A table name no other test or process uses: ``prefix`` + 12 random hex digits."""
    return f"{prefix}_{secrets.token_hex(6)}"


def query(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement in autocommit on a fresh connection; the rows, if any."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def pg_ctlcluster(action: str) -> None:
    """Start or stop the local cluster (Debian's pg_ctlcluster), waiting for it."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def drop_table(dsn: str, table: str) -> None:
    """``DROP TABLE IF EXISTS table``, and the peers' ``table_members`` beside it; the
    names are quoted as identifiers."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
        for name in (table, f"{table}_members"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def pg_dsn() -> str:
    """The test server's DSN; skips the test when the server is unreachable."""
    return require_postgres()


@pytest.fixture
def pg_table(pg_dsn: str) -> Iterator[str]:
    """A fresh table name for this test, dropped afterwards (the peer creates it)."""
    table = unique_table()
    yield table
    # If the server is gone (a restart test that failed), a leftover table is harmless.
    with contextlib.suppress(Exception):
        drop_table(pg_dsn, table)
