"""SQLite for every backend: where the file is, connecting, how lasting an error is, and
how a table is found and checked."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Collection, Mapping, Sequence

from . import DatabaseConfigError, Fault, check_shape


def absolute_path(path: object) -> str:
    """Check the ``path`` option of an SQLite backend; return it absolute.

    Made absolute at once, so processes started in different directories name the same
    file; an in-memory or temporary database would give each connection its own.

    Raises:
        TypeError: ``path`` is not a str or an ``os.PathLike`` of str.
        ValueError: It is empty, ``":memory:"``, or holds a NUL character.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"path must be a str or os.PathLike of str, got {path!r}")
    if not text.strip() or text == ":memory:":
        raise ValueError(
            f"path must name a file that every process opens (an in-memory or temporary "
            f"database is one per connection), got {text!r}"
        )
    if "\0" in text:
        raise ValueError(f"path must not contain a NUL character, got {text!r}")
    return os.path.abspath(text)


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode, waiting ``timeout`` for locks.

    Raises:
        DatabaseConfigError: The file's directory does not exist.
        sqlite3.Error: SQLite failed.
    """
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise DatabaseConfigError(
            f"SQLite database {path!r}: the directory {directory!r} does not exist"
        )
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except BaseException:
        conn.close()
        raise
    return conn


_SQLITE_TRANSIENT_CODES = {5, 6, 10, 13}  # BUSY, LOCKED, IOERR, FULL
_SQLITE_TRANSIENT_WORDS = re.compile(r"locked|busy|disk I/O|disk is full", re.IGNORECASE)


def fault(exc: BaseException) -> Fault:
    """How lasting an error of an SQLite call is.

    A busy or locked database, an I/O error or a full disk may pass. A read-only file,
    one that is not a database, a missing table or a missing grant of the file system
    need someone to act.
    """
    if isinstance(exc, DatabaseConfigError):
        return Fault.FATAL
    if not isinstance(exc, sqlite3.Error):
        return Fault.TRANSIENT
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return Fault.TRANSIENT if code & 0xFF in _SQLITE_TRANSIENT_CODES else Fault.PERSISTENT
    return Fault.TRANSIENT if _SQLITE_TRANSIENT_WORDS.search(str(exc)) else Fault.PERSISTENT


def affinity(declared: str) -> str:
    """The column affinity SQLite gives a declared type (its documented rules, in order)."""
    kind = declared.upper()
    if "INT" in kind:
        return "INTEGER"
    if any(word in kind for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not kind or "BLOB" in kind:
        return "BLOB"
    if any(word in kind for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def find_table(
    conn: sqlite3.Connection,
    table: str,
    *,
    columns: Mapping[str, Collection[str]],
    key: str | Sequence[str],
    create: str | None,
    name_option: str = "table",
    create_option: str = "create_table",
) -> None:
    """Create the table if asked and missing, and check its shape.

    Args:
        columns: Each column the backend needs, with the affinities it accepts.
        key: The column that must have a unique index of its own (or be the table's
            ``INTEGER PRIMARY KEY``, the rowid), or the columns that must have one
            together (in any order).
        create: ``CREATE TABLE IF NOT EXISTS {table} (...)`` with ``{table}`` to fill in,
            or ``None`` to require an existing table.
        name_option, create_option: The backend's options that name the table and
            allow its creation, for the messages.

    Raises:
        DatabaseConfigError: The table exists with the wrong shape.
        sqlite3.OperationalError: It does not exist and ``create`` is ``None``.
        sqlite3.Error: SQLite failed.
    """
    quoted = f'"{table}"'  # a valid identifier may still be a keyword ("order")
    info = conn.execute(f"PRAGMA table_info({quoted})").fetchall()
    if not info:
        if create is None:
            raise sqlite3.OperationalError(
                f"no such table: {table} ({create_option}=False: create it first)"
            )
        conn.execute(create.format(table=quoted))
        info = conn.execute(f"PRAGMA table_info({quoted})").fetchall()
    have = {str(row[1]): affinity(str(row[2])) for row in info}
    keys = sorted([key] if isinstance(key, str) else key)
    # An INTEGER PRIMARY KEY is the rowid itself, unique without an index of its own.
    primary = [(str(row[1]), str(row[2]).upper()) for row in info if row[5]]
    keyed = primary == [(keys[0], "INTEGER")] and len(keys) == 1
    for index in conn.execute(f"PRAGMA index_list({quoted})").fetchall():
        unique, partial = index[2], index[4]
        if unique and not partial:
            names = [row[2] for row in conn.execute(f'PRAGMA index_info("{index[1]}")')]
            keyed = keyed or sorted(names) == keys
    check_shape(table, have, columns, key, keyed, option=name_option)
