"""What every database backend shares: finding and checking its table or file, connecting
with time-outs, keeping a DSN's password out of sight, and telling lasting errors from
passing ones.

The peers of :mod:`periodic.peers` use it, and so will any other backend kept in a
database: a rule about how a table is found or an error is judged lives here, once. This
module holds what does not depend on a driver; :mod:`._db.postgres` (psycopg) and
:mod:`._db.sqlite` (sqlite3) hold the rest, each importing its driver at the top, so
nobody pays for a driver they do not use. The backends' own statements stay in their
modules.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
from collections.abc import Collection, Mapping, Sequence

import attrs

from ..exceptions import PeriodicError

# -- errors -----------------------------------------------------------------------------------


class DatabaseConfigError(PeriodicError):
    """A database backend cannot work as configured, and retrying will not change that.

    A peer's ``serve`` raises it when its first attempts meet an error that only a change
    of configuration can fix: authentication failed, an unknown database or role, a
    malformed connection option, an SQLite file whose directory does not exist, or a table
    of the wrong shape. The message names the cause; a password never appears in it.
    """


class Fault(enum.Enum):
    """How lasting an error of a database call is, which decides what a peer does next."""

    #: It can heal by itself (a refused connection, a time-out, a server restarting):
    #: retry with backoff, warn.
    TRANSIENT = "transient"
    #: It needs someone to act (a missing grant or table, a read-only file): retry with
    #: backoff, and report it at ERROR, again and again while it lasts.
    PERSISTENT = "persistent"
    #: The configuration can never work (:class:`DatabaseConfigError`, a failed
    #: authentication): ``serve`` fails at once, unless it has worked before.
    FATAL = "fatal"


@attrs.define
class FailureStreak:
    """Consecutive failed calls, and when to report them: the first failure, then at
    growing intervals (``first_repeat`` seconds, doubling, at most ``longest``) while they
    last, and at once when the kind of fault changes."""

    first_repeat: float = 10.0
    longest: float = 3600.0
    #: Failures so far in this streak, and when its first one was.
    attempts: int = attrs.field(default=0, init=False)
    began: float = attrs.field(default=0.0, init=False)
    _fault: Fault | None = attrs.field(default=None, init=False)
    _next_report: float = attrs.field(default=-math.inf, init=False)
    _interval: float = attrs.field(default=0.0, init=False)

    def failed(self, now: float, fault: Fault) -> bool:
        """Count one failure at ``now``; whether to report it."""
        if not self.attempts:
            self.began = now
        self.attempts += 1
        if fault is not self._fault:
            self._fault = fault
            self._interval = self.first_repeat
            self._next_report = now + self._interval
            return True
        if now < self._next_report:
            return False
        self._interval = min(self._interval * 2, self.longest)
        self._next_report = now + self._interval
        return True

    def succeeded(self) -> int:
        """End the streak; the number of failures it had."""
        attempts, self.attempts, self._fault = self.attempts, 0, None
        return attempts


# -- names ------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@attrs.frozen
class TableName:
    """A table, as the user named it: ``schema`` is ``None`` when it was not qualified."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


def table_name(value: object, *, qualified: bool) -> TableName:
    """Check the ``table`` option: a plain identifier, or ``schema.table`` if ``qualified``.

    Raises:
        TypeError: ``value`` is not a str.
        ValueError: It is not an identifier (or two, joined by a dot).
    """
    if not isinstance(value, str):
        raise TypeError(f"table must be a str, got {value!r}")
    parts = value.split(".")
    if len(parts) > (2 if qualified else 1) or not all(map(_IDENTIFIER.fullmatch, parts)):
        form = " or schema.table, each" if qualified else ""
        raise ValueError(
            f"table must be a plain SQL identifier{form} (letters, digits, _; not starting "
            f"with a digit; at most 63 characters), got {value!r}"
        )
    return TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0])


def table_prefix(value: object, *, qualified: bool, suffixes: Collection[str]) -> TableName:
    """Check the ``table_prefix`` option of a backend with several tables, each named
    ``prefix + suffix``: the prefix (``schema.prefix`` if ``qualified``) with every
    suffix must make a plain identifier. ``name`` of the result is the prefix.

    Raises:
        TypeError: ``value`` is not a str.
        ValueError: A table it names would not be an identifier.
    """
    if not isinstance(value, str):
        raise TypeError(f"table_prefix must be a str, got {value!r}")
    schema, dot, prefix = value.rpartition(".") if qualified else ("", "", value)
    if (
        (dot and not _IDENTIFIER.fullmatch(schema))
        or "." in prefix
        or not all(_IDENTIFIER.fullmatch(prefix + suffix) for suffix in suffixes)
    ):
        form = " (or schema.prefix)" if qualified else ""
        tables = " and ".join(prefix + suffix for suffix in suffixes)
        raise ValueError(
            f"table_prefix{form} must make plain SQL identifiers of the tables {tables} "
            f"(letters, digits, _; not starting with a digit; at most 63 characters), "
            f"got {value!r}"
        )
    return TableName(schema if dot else None, prefix)


# -- values -----------------------------------------------------------------------------------


def utc(value: datetime.datetime, what: str) -> datetime.datetime:
    """A time given to a backend, in UTC; a naive one is refused rather than guessed at.

    Raises:
        ValueError: ``value`` has no time zone.
    """
    if value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(datetime.timezone.utc)


# -- shapes -----------------------------------------------------------------------------------


def check_shape(
    shown: str,
    have: Mapping[str, str],
    columns: Mapping[str, Collection[str]],
    key: str | Sequence[str],
    keyed: bool,
    *,
    option: str = "table",
) -> None:
    """Compare a table's columns with what a backend needs.

    Args:
        shown: The table's name, for the message.
        have: Each column the table has, with its type (or SQLite affinity).
        columns: Each column the backend needs, with the types it accepts.
        key: The column that must be unique by itself, or the columns that must be
            unique together.
        keyed: Whether it is (they are).
        option: The backend's option that names the table, for the message.

    Raises:
        DatabaseConfigError: A column is missing or of another type, or ``key`` is not
            unique: the message names each difference.
    """
    wrong = [
        f"{name} is {have[name]}" if name in have else f"{name} is missing"
        for name, accepted in columns.items()
        if have.get(name) not in accepted
    ]
    unique = key if isinstance(key, str) else f"({', '.join(key)})"
    if not keyed:
        wrong.append(f"{unique} has no unique index of its own")
    if wrong:
        expected = ", ".join(f"{name} {' or '.join(kinds)}" for name, kinds in columns.items())
        raise DatabaseConfigError(
            f"table {shown} has the wrong shape ({'; '.join(wrong)}); expected {expected}, "
            f"unique on {unique}: drop it, or give another {option}="
        )
