"""The ``STORE`` argument: an SQLite file or a PostgreSQL DSN. Making its store, serving it
for one command (failing at once when it cannot be opened), and reading the elections of
the same database."""

from __future__ import annotations

import datetime
import logging
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from .. import peers
from .._db import DatabaseConfigError
from ..stores import Store
from .text import CommandError, one_line

T = TypeVar("T")

#: Seconds a command waits for its store to open before it gives up. Each attempt is
#: bounded by the store's ``call_timeout`` (5 s), and the first failed one ends the wait.
OPEN_TIMEOUT = 20.0

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@attrs.frozen(kw_only=True)
class ElectionView:
    """An election of the store's database, as ``status`` shows it."""

    name: str
    leader: str | None
    fence: int | None
    expires_at: datetime.datetime | None
    members: tuple[str, ...]


class Target:
    """A ``STORE`` as given on the command line.

    Raises:
        CommandError: A PostgreSQL DSN without psycopg installed.
    """

    def __init__(self, text: str, *, table_prefix: str) -> None:
        self.text = text
        self.table_prefix = table_prefix
        self.postgres = text.lower().startswith(_POSTGRES_SCHEMES)
        self._secrets: Callable[[str], str] = str
        if self.postgres:
            try:
                from .._db.postgres import Scrubber
            except ImportError:
                raise CommandError(
                    "a postgresql:// STORE needs psycopg: pip install 'trio-periodic[postgres]'"
                ) from None
            self._secrets = Scrubber(text).text
            self.shown = self._secrets(text)
        else:
            self.shown = os.path.abspath(text)

    def hide(self, text: str) -> str:
        """``text`` without the DSN's password."""
        return self._secrets(text)

    def describe(self, exc: BaseException) -> str:
        """An error on one line, its type first, without the password."""
        return one_line(self.hide(f"{type(exc).__name__}: {exc}"))

    @property
    def where(self) -> str:
        """The database, and the table prefix when it is not the default one."""
        if self.table_prefix == "periodic_":
            return self.shown
        return f"{self.shown} (table prefix {self.table_prefix})"

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """What a store's call raises when the database fails."""
        found: tuple[type[Exception], ...] = (OSError, sqlite3.Error, DatabaseConfigError)
        if self.postgres:
            import psycopg

            found += (psycopg.Error,)
        return found

    def store(self, *, create_tables: bool) -> Store:
        """The store, not served yet. Without ``create_tables``, an SQLite file must exist
        (a mere look at a mistyped path would make an empty database there).

        Raises:
            CommandError: The file is missing, or the DSN or the table prefix is bad.
        """
        try:
            if self.postgres:
                from ..stores.postgres import PostgresStore

                return PostgresStore(
                    self.text, table_prefix=self.table_prefix, create_tables=create_tables
                )
            if not create_tables and not os.path.isfile(self.shown):
                raise CommandError(f"no SQLite database at {self.shown}")
            from ..stores.sqlite import SQLiteStore

            return SQLiteStore(
                self.shown, table_prefix=self.table_prefix, create_tables=create_tables
            )
        except (TypeError, ValueError) as exc:
            raise CommandError(f"{self.where}: {one_line(self.hide(str(exc)))}") from None

    async def elections(self) -> list[ElectionView]:
        """The elections whose leases are in the table ``<table prefix>peers`` of the same
        database (the peers' default table, with the default prefix)."""
        return [_election_view(found) for found in await self._read_elections()]

    async def _read_elections(self) -> list[peers.Election]:
        table = f"{self.table_prefix}peers"
        if self.postgres:
            from ..peers import postgres as pg_peers

            return list(await pg_peers.read_elections(self.text, table=table))
        from ..peers import sqlite as sqlite_peers

        return list(await sqlite_peers.read_elections(self.shown, table=table))


def _election_view(election: peers.Election) -> ElectionView:
    return ElectionView(
        name=election.name,
        leader=election.leader,
        fence=election.fence,
        expires_at=election.expires_at,
        members=tuple(election.members),
    )


class _OpenWatch(logging.Handler):
    """Ends the opening of a store at its first failed attempt, which its ``serve`` logs
    (with a ``periodic_fault``) before it would retry: a command reports it rather than
    wait. Other warnings of the ``periodic`` logger go to stderr."""

    def __init__(self, target: Target) -> None:
        super().__init__(logging.WARNING)
        self._target = target
        self.opening: trio.CancelScope | None = None
        self.failure: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.opening is not None and hasattr(record, "periodic_fault"):
            cause = record.args[-1] if isinstance(record.args, tuple) and record.args else None
            if isinstance(cause, BaseException):
                self.failure = self._target.describe(cause)
            else:
                self.failure = one_line(self._target.hide(record.getMessage()))
            self.opening.cancel()
            return
        sys.stderr.write(f"periodic: {one_line(self._target.hide(record.getMessage()))}\n")


async def with_store(target: Target, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Serve the target's store (``create_tables=False``), return ``await fn(store)``,
    and close the store.

    Raises:
        CommandError: The store cannot be opened (the message names it, without the
            password, and says why).
        Exception: Whatever ``fn`` raised.
    """
    store = target.store(create_tables=False)
    watch = _OpenWatch(target)
    logger = logging.getLogger("periodic")
    logger.addHandler(watch)
    failure: str | None = None
    result: list[T] = []
    error: Exception | None = None
    try:
        # Outcomes are kept and raised after the nursery: raised inside, they would come
        # out wrapped in an ExceptionGroup.
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(OPEN_TIMEOUT) as opening:
                watch.opening = opening
                try:
                    await nursery.start(store.serve)
                except DatabaseConfigError as exc:
                    failure = target.describe(exc)
            watch.opening = None
            if failure is None and opening.cancelled_caught:
                failure = watch.failure or f"it did not open within {OPEN_TIMEOUT:g} s"
            if failure is None:
                try:
                    result.append(await fn(store))
                except Exception as exc:
                    error = exc
            nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(watch)
    if failure is not None:
        raise CommandError(f"cannot open the store {target.where}: {failure}")
    if isinstance(error, target.errors):
        raise CommandError(f"{target.where}: {target.describe(error)}") from None
    if error is not None:
        raise error
    return result[0]
