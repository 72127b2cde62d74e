"""How the ``periodic`` command opens a store, in virtual time: it gives up at the first
failed attempt, or after ``OPEN_TIMEOUT``, and turns the errors of the store's calls into
one line. (The subprocess tests in test_cli.py open real ones.)"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest
import trio

from periodic._cli import main
from periodic._cli.target import OPEN_TIMEOUT, Target, with_store
from periodic._cli.text import CommandError
from periodic._db import Fault
from periodic._db.calls import open_retrying
from periodic.stores import MemoryStore, Store


class NeverOpens(MemoryStore):
    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await trio.sleep_forever()


class Refused(MemoryStore):
    """Opens as a database backend does, and is refused: it would retry forever."""

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def attempt() -> None:
            raise ConnectionRefusedError("connection refused\n\tIs the server running?")

        await open_retrying(self, attempt, lambda exc: Fault.TRANSIENT)


def target(monkeypatch: pytest.MonkeyPatch, store: Store) -> Target:
    found = Target("x.db", table_prefix="periodic_")
    monkeypatch.setattr(found, "store", lambda *, create_tables: store)
    return found


async def jobs(store: Store) -> int:
    return len(await store.jobs())


async def test_a_store_is_served_for_the_call(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    assert await with_store(target(monkeypatch, store), jobs) == 0
    assert not store.serving


async def test_the_first_failed_attempt_ends_the_opening(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CommandError) as info:
        await with_store(target(monkeypatch, Refused()), jobs)
    where = os.path.abspath("x.db")
    assert str(info.value) == (
        f"cannot open the store {where}: ConnectionRefusedError: connection refused "
        "Is the server running?"
    )
    assert info.value.status == 2
    assert trio.current_time() == 0


async def test_a_store_that_never_opens_is_given_up(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CommandError, match=r"it did not open within 20 s$"):
        await with_store(target(monkeypatch, NeverOpens()), jobs)
    assert trio.current_time() == OPEN_TIMEOUT == 20


async def test_a_failing_call_is_one_line_and_other_errors_pass(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def locked(store: Store) -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(CommandError) as info:
        await with_store(target(monkeypatch, MemoryStore()), locked)
    assert str(info.value) == f"{os.path.abspath('x.db')}: OperationalError: database is locked"

    async def unknown(store: Store) -> None:
        raise LookupError("job 'x' is not registered")

    with pytest.raises(LookupError):
        await with_store(target(monkeypatch, MemoryStore()), unknown)


async def test_other_warnings_go_to_stderr(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def warn(store: Store) -> None:
        logging.getLogger("periodic").warning("closing %s\nfailed", "it")

    await with_store(target(monkeypatch, MemoryStore()), warn)
    assert capsys.readouterr().err == "periodic: closing it failed\n"


def test_a_dsn_password_is_hidden() -> None:
    pytest.importorskip("psycopg")
    found = Target("postgresql://app:pw%21x@db/app", table_prefix="app.periodic_")
    assert found.postgres
    assert found.where == "postgresql://app:***@db/app (table prefix app.periodic_)"
    assert found.hide("failed for pw!x and pw%21x") == "failed for *** and ***"


def test_a_missing_sqlite_file_is_not_made(tmp_path: Path) -> None:
    found = Target(str(tmp_path / "nope.db"), table_prefix="periodic_")
    with pytest.raises(CommandError, match="no SQLite database at"):
        found.store(create_tables=False)
    found.store(create_tables=True)  # for periodic run --store: made when served
    assert not (tmp_path / "nope.db").exists()


class Steerable(MemoryStore):
    """Records pause, resume and trigger, as a store of issue 15 takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    def _known(self, name: str) -> None:
        if name != "known":
            raise LookupError(f"job {name!r} is not registered")

    async def pause(self, name: str, *, note: str | None = None) -> None:
        self._known(name)
        self.calls.append(("pause", name, str(note)))

    async def resume(self, name: str) -> None:
        self._known(name)
        self.calls.append(("resume", name))

    async def trigger(self, name: str) -> None:
        self._known(name)
        self.calls.append(("trigger", name))


def test_steering_a_job_through_the_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Steerable()
    monkeypatch.setattr(Target, "store", lambda self, *, create_tables: store)
    assert main(["pause", "x.db", "known", "--note", "disk full"]) == 0
    assert main(["pause", "x.db", "known"]) == 0
    assert main(["resume", "x.db", "known"]) == 0
    assert main(["trigger", "x.db", "known"]) == 0
    assert capsys.readouterr().out == (
        "paused known: disk full\n"
        "paused known\n"
        "resumed known\n"
        "triggered known: a process serving it starts one run\n"
    )
    assert store.calls == [
        ("pause", "known", "disk full"),
        ("pause", "known", "None"),
        ("resume", "known"),
        ("trigger", "known"),
    ]
    for command in ("pause", "resume", "trigger"):
        assert main([command, "x.db", "nope", "--table-prefix", "app_"]) == 1
        where = os.path.abspath("x.db")
        assert capsys.readouterr() == (
            "",
            f"periodic {command}: no job 'nope' in {where} (table prefix app_)\n",
        )
