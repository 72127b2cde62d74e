"""The ``periodic`` command for the tests: running it in a subprocess, and the stores it
looks at, an SQLite file or tables of their own in the PostgreSQL test server.

Import the fixture into a test module (pytest finds fixtures by name in the module)::

    from cli_support import Backend, backend, cli
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pg_support import query, require_postgres, unique_table

from periodic.peers import Peer
from periodic.stores import Store

__all__ = ["ROOT", "Backend", "backend", "cli", "env", "match_lines", "serve_store"]

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a command may take: a real store, a fresh interpreter, a loaded machine.
TIMEOUT = 60


def env(*paths: Path | str) -> dict[str, str]:
    """The environment of a subprocess: this checkout's ``periodic`` (after ``paths``)."""
    path = os.pathsep.join([*map(str, paths), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path}


def cli(*args: str, cwd: Path | None = None, paths: tuple[Path, ...] = ()) -> Any:
    """``python -m periodic *args``, finished; its ``CompletedProcess`` (text)."""
    return subprocess.run(
        [sys.executable, "-m", "periodic", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=env(*paths),
        check=False,
    )


def match_lines(text: str, templates: list[str]) -> None:
    """Assert that ``text`` is exactly these lines, where ``<span>`` stands for a span of
    time as the command writes one, ``<ago>`` for ``<span> ago``, ``<in>`` for ``in
    <span>`` and ``<time>`` for a time."""
    holes = {
        re.escape("<ago>"): r"\d+[smhd](\d\d[smh])? ago",
        re.escape("<in>"): r"in \d+[smhd](\d\d[smh])?",
        re.escape("<span>"): r"\d+[smhd](\d\d[smh])?",
        re.escape("<time>"): r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{3})?Z",
    }
    lines = text.splitlines()
    assert len(lines) == len(templates), text
    for line, template in zip(lines, templates, strict=True):
        pattern = re.escape(template)
        for hole, fill in holes.items():
            pattern = pattern.replace(hole, fill)
        assert re.fullmatch(pattern, line), f"{line!r} does not match {template!r}"


class Backend:
    """A store for the command to look at: ``args`` name it on the command line."""

    def __init__(self, kind: str, target: str, prefix: str) -> None:
        self.kind = kind
        self.target = target
        self.prefix = prefix

    @property
    def args(self) -> list[str]:
        """``STORE --table-prefix P``."""
        return [self.target, "--table-prefix", self.prefix]

    @property
    def where(self) -> str:
        """How the command names the store."""
        if self.prefix == "periodic_":
            return self.target
        return f"{self.target} (table prefix {self.prefix})"

    def store(self, **options: Any) -> Store:
        """A store on the same tables, made if missing."""
        if self.kind == "sqlite":
            from periodic.stores.sqlite import SQLiteStore

            return SQLiteStore(self.target, table_prefix=self.prefix, **options)
        from periodic.stores.postgres import PostgresStore

        return PostgresStore(self.target, table_prefix=self.prefix, **options)

    def peer(self, name: str, **options: Any) -> Peer:
        """A lease peer whose leases are in the table ``status`` reads."""
        table = self.prefix + "peers"
        if self.kind == "sqlite":
            from periodic.peers.sqlite import SQLitePeer

            return SQLitePeer(self.target, name=name, table=table, **options)
        from periodic.peers.postgres import PostgresPeer

        return PostgresPeer(self.target, name=name, table=table, **options)


def serve_store(backend: Backend, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    """Serve the backend's store in this process, and return ``await fn(store)``."""

    async def main() -> Any:
        store = backend.store()
        async with trio.open_nursery() as nursery:
            with trio.fail_after(TIMEOUT):
                await nursery.start(store.serve)
            result = await fn(store)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An SQLite file (default table prefix), or tables of a prefix of this test's own in
    the PostgreSQL test server, dropped afterwards."""
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "store.db"), "periodic_")
        return
    dsn = require_postgres()
    prefix = unique_table("periodic_cli") + "_"
    yield Backend("postgres", dsn, prefix)
    tables = ", ".join(prefix + t for t in ("jobs", "runs", "reminders", "peers", "peers_members"))
    with contextlib.suppress(Exception):
        query(dsn, f"DROP TABLE IF EXISTS {tables} CASCADE")
        query(dsn, f"DROP SEQUENCE IF EXISTS {prefix}reminder_fences")
