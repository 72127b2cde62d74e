"""SQLiteStore: what only it has. Its options, its file and tables, its time-outs, and
processes SIGKILLed while they claim (``store_worker.py``). The contract it shares with
the other stores is in test_stores_contract.py. Real time, every wait bounded.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import store_worker
import trio
from store_worker import Zygote, chaos, check

from periodic._db.calls import Call
from periodic.peers import DatabaseConfigError
from periodic.stores import SQLiteStore
from periodic.stores.sqlite import _Abandoned

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 5, 1, tzinfo=UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


@contextlib.asynccontextmanager
async def served(store: SQLiteStore) -> AsyncIterator[SQLiteStore]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(store.serve)
        yield store
        nursery.cancel_scope.cancel()


def execute(path: Path | str, *statements: str) -> list[Any]:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        rows: list[Any] = []
        for statement in statements:
            rows = conn.execute(statement).fetchall()
        return rows


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"path": ":memory:"}, ValueError, "path must name a file that every process opens"),
        ({"path": ""}, ValueError, "path must name a file"),
        ({"path": 3}, TypeError, "path must be a str or os.PathLike"),
        ({"table_prefix": "main.p_"}, ValueError, "table_prefix must make plain SQL"),
        ({"table_prefix": "1x"}, ValueError, "table_prefix must make plain SQL"),
        ({"table_prefix": "p" * 56}, ValueError, "at most 63 characters"),
        ({"table_prefix": None}, TypeError, "table_prefix must be a str"),
        ({"create_tables": 1}, TypeError, "create_tables must be a bool"),
        ({"call_timeout": 0}, ValueError, "call_timeout must be a positive, finite"),
        ({"call_timeout": float("inf")}, ValueError, "call_timeout must be a positive"),
        ({"call_timeout": float("nan")}, ValueError, "call_timeout must be a positive"),
        ({"call_timeout": "5"}, TypeError, "call_timeout must be a number"),
        ({"call_timeout": True}, TypeError, "call_timeout must be a number"),
        ({"history": 0}, ValueError, "history must be an int >= 1"),
        ({"history": 2.0}, TypeError, "history must be an int >= 1"),
    ],
)
def test_bad_options_are_refused_by_name(
    options: dict[str, Any], error: type[Exception], text: str, tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = {"path": tmp_path / "jobs.db", **options}
    with pytest.raises(error, match=text):
        SQLiteStore(**kwargs)


def test_the_path_is_made_absolute_when_the_store_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("jobs.db", table_prefix="")
    assert store.path == str(tmp_path / "jobs.db")
    assert repr(store) == f"<SQLiteStore path={store.path!r} table_prefix=''>"


# -- the file and its tables ------------------------------------------------------------------


async def test_the_tables_are_made_at_first_serve_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "periodic")
    path = tmp_path / "jobs.db"
    async with served(SQLiteStore(path, table_prefix="app_")) as store:
        await store.register("j", schedule="every 1s", anchor=T0)
    tables = execute(path, "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
    assert {"app_jobs", "app_runs", "app_runs_job"} <= {row[0] for row in tables}
    assert execute(path, "PRAGMA journal_mode") == [("wal",)]
    assert execute(path, "SELECT name, anchor FROM app_jobs") == [("j", 1_777_593_600_000_000)]
    assert f"SQLite store in {path}, tables app_jobs and app_runs" in caplog.text


async def test_a_missing_directory_fails_serve_at_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "nowhere" / "jobs.db")
    with trio.fail_after(2), pytest.raises(DatabaseConfigError, match="does not exist"):
        await store.serve()
    assert not store.serving


@pytest.mark.parametrize(
    ("table", "statement", "wrong"),
    [
        (
            "periodic_jobs",
            "CREATE TABLE periodic_jobs (name TEXT PRIMARY KEY, schedule TEXT, anchor INTEGER, "
            "last_slot TEXT, last_node TEXT, last_fence INTEGER, max_fence INTEGER, "
            "last_outcome TEXT, last_started_at INTEGER, last_finished_at INTEGER, "
            "consecutive_failures INTEGER, paused_at INTEGER, pause_note TEXT, "
            "triggered_at INTEGER, overdue_after REAL, registered_at INTEGER, "
            "resumed_at INTEGER, last_ok_at INTEGER)",
            "last_slot is TEXT",
        ),
        (
            "periodic_runs",
            "CREATE TABLE periodic_runs (id INTEGER, job TEXT, slot INTEGER, node TEXT, "
            "fence INTEGER, started_at INTEGER, finished_at INTEGER, outcome TEXT, "
            "duration REAL)",
            "error is missing; triggered is missing; id has no unique index of its own",
        ),
        (
            # The shape of a development build, before triggered runs were told apart.
            "periodic_runs",
            "CREATE TABLE periodic_runs (id INTEGER PRIMARY KEY, job TEXT, slot INTEGER, "
            "node TEXT, fence INTEGER, started_at INTEGER, finished_at INTEGER, "
            "outcome TEXT, duration REAL, error TEXT)",
            "triggered is missing",
        ),
    ],
)
async def test_a_table_of_the_wrong_shape_fails_serve_at_once(
    tmp_path: Path, table: str, statement: str, wrong: str
) -> None:
    path = tmp_path / "jobs.db"
    execute(path, statement)
    store = SQLiteStore(path)
    with trio.fail_after(2), pytest.raises(DatabaseConfigError) as info:
        await store.serve()
    assert f"table {table} has the wrong shape ({wrong})" in str(info.value)
    assert "give another table_prefix=" in str(info.value)


async def test_without_create_tables_serve_waits_for_the_tables(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, create_tables=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve)
        await trio.sleep(0.5)
        assert not store.serving
        [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert record.levelname == "ERROR"
        assert "no such table: periodic_jobs (create_tables=False: create it first)" in (
            record.getMessage()
        )
        async with served(SQLiteStore(path)):  # another process makes them
            pass
        with trio.fail_after(5):
            while not store.serving:
                await trio.sleep(0.01)
        await store.register("j", schedule="every 1s", anchor=T0)
        nursery.cancel_scope.cancel()


async def test_tables_made_by_hand_with_other_declared_types_are_used(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    execute(
        path,
        "CREATE TABLE periodic_jobs (name VARCHAR(200) PRIMARY KEY, schedule CLOB NOT NULL, "
        "anchor BIGINT NOT NULL, last_slot BIGINT, last_node TEXT, last_fence BIGINT, "
        "max_fence BIGINT, last_outcome TEXT, last_started_at BIGINT, "
        "last_finished_at BIGINT, consecutive_failures INT NOT NULL DEFAULT 0, "
        "paused_at BIGINT, pause_note VARCHAR(200), triggered_at BIGINT, "
        "overdue_after DOUBLE, registered_at BIGINT NOT NULL, resumed_at BIGINT, "
        "last_ok_at BIGINT)",
        "CREATE TABLE periodic_runs (id INTEGER PRIMARY KEY, job TEXT NOT NULL, "
        "slot BIGINT NOT NULL, node TEXT NOT NULL, fence BIGINT, started_at BIGINT NOT NULL, "
        "finished_at BIGINT, outcome TEXT, duration DOUBLE, error TEXT, "
        "triggered BOOLEAN NOT NULL DEFAULT FALSE)",
    )
    async with served(SQLiteStore(path, create_tables=False)) as store:
        await store.register("j", schedule="every 1s", anchor=T0)
        key = await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1))
        assert key is not None
        await store.finish("j", key, outcome="ok", finished_at=at(2), duration=1.0, error=None)
        key = await store.claim(
            "j", slot=at(1), node="a", fence=None, started_at=at(3), trigger="local"
        )
        assert key is not None
        [triggered, run] = await store.runs("j")
        assert (run.outcome, run.duration, run.triggered) == ("ok", 1.0, False)
        assert triggered.triggered is True


async def test_a_file_that_is_not_a_database_is_an_error_until_it_is_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not a database, not at all" * 100)
    store = SQLiteStore(path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve)
        await trio.sleep(0.5)
        assert not store.serving
        assert any(
            r.levelname == "ERROR" and "not a database" in r.getMessage() for r in caplog.records
        )
        path.unlink()
        with trio.fail_after(5):
            while not store.serving:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


# -- time-outs --------------------------------------------------------------------------------


async def test_a_file_locked_by_another_process_times_out_and_the_store_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    async with served(SQLiteStore(path, call_timeout=0.3)) as store:
        await store.register("j", schedule="every 1s", anchor=T0)
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process writes, for long
            begun = time.monotonic()
            with pytest.raises(TimeoutError, match=r"took longer than call_timeout \(0.3 s\)"):
                await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1))
            assert 0.3 <= time.monotonic() - begun < 1.0
            await trio.sleep(0.2)  # the abandoned call gives up in its thread too
            # Readers are not blocked by a writer (WAL).
            state = await store.job("j")
            assert state is not None
            assert state.last_slot is None
            other.execute("COMMIT")
        # The slot was not claimed by the call that timed out: it can be claimed now.
        assert await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1))


async def test_a_call_under_way_when_serve_is_cancelled_ends_before_the_file_closes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, call_timeout=3.0)
    keys: list[int | None] = []

    async def claim() -> None:
        keys.append(await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1)))

    async with trio.open_nursery() as nursery:
        serving = trio.CancelScope()
        nursery.start_soon(serve_in, store, serving)
        with trio.fail_after(5):
            while not store.serving:
                await trio.sleep(0.01)
        await store.register("j", schedule="every 1s", anchor=T0)
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            nursery.start_soon(claim)
            await trio.sleep(0.2)  # the claim waits for the lock
            serving.cancel()
            await trio.sleep(0.2)
            assert store.serving  # it waits for the claim
            other.execute("COMMIT")
        with trio.fail_after(5):
            while store.serving:
                await trio.sleep(0.01)
    assert len(keys) == 1
    assert keys[0] is not None
    with pytest.raises(RuntimeError, match="is not being served"):
        await store.job("j")


async def serve_in(store: SQLiteStore, scope: trio.CancelScope) -> None:
    with scope:
        await store.serve()


def test_a_claim_whose_caller_gave_up_is_rolled_back(tmp_path: Path) -> None:
    # The window (the lock won after the caller's time-out, before SQLite's) is too
    # narrow to hit from outside: the statement is run with a call already abandoned.
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path)
    database = store._db
    database.open(Call(time.monotonic() + 5))
    call = Call(time.monotonic() + 5)
    registered = {
        "name": "j",
        "schedule": "every 1s",
        "anchor": 0,
        "overdue_after": None,
        "now": 0,
    }
    database.run(call, lambda conn: database.register(conn, registered))
    params = {"name": "j", "slot": 1, "node": "a", "fence": None, "started_at": 1, "trigger": None}
    call.abandon()
    with pytest.raises(_Abandoned):
        database.run(call, lambda conn: database.claim(conn, call, 100, params))
    assert execute(path, "SELECT last_slot FROM periodic_jobs") == [(None,)]
    assert execute(path, "SELECT count(*) FROM periodic_runs") == [(0,)]
    database.close(Call(time.monotonic() + 5))


# -- processes killed while they claim --------------------------------------------------------


@pytest.fixture
def report() -> Iterator[list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []
    yield lines
    for line in lines:
        print(f"\n[store-chaos] {json.dumps(line)}")


async def test_claimers_killed_at_random_instants_leave_every_slot_claimed_once(
    tmp_path: Path, report: list[dict[str, Any]]
) -> None:
    path = str(tmp_path / "race.db")
    history = 30
    async with served(SQLiteStore(path, history=history)) as store:
        await store.register("race", schedule="every 1s", anchor=T0)
    seed = int.from_bytes(os.urandom(4), "big")
    async with trio.open_nursery() as nursery:
        zygote = await Zygote.start(
            nursery, tmp_path / "zygote.log", "sqlite", path, "periodic_", history
        )
        try:
            last_kill = await chaos(zygote, claimers=3, kills=20, rng=random.Random(seed))
        finally:
            await zygote.close()
        nursery.cancel_scope.cancel()
    # Times are microseconds since the epoch; the worker counts seconds after its T0.
    start = store_worker.T0.timestamp() * 1_000_000

    def seconds(micros: int) -> int:
        return round((micros - start) / 1_000_000)

    rows = [
        (key, seconds(slot), node, bool(ended), outcome, duration)
        for key, slot, node, ended, outcome, duration in execute(
            path,
            "SELECT id, slot, node, finished_at IS NOT NULL, outcome, duration "
            "FROM periodic_runs WHERE job = 'race' ORDER BY id",
        )
    ]
    [(last_slot, last_node)] = execute(
        path, "SELECT last_slot, last_node FROM periodic_jobs WHERE name = 'race'"
    )
    numbers = check(
        zygote, rows, (seconds(last_slot), last_node), history=history, last_kill=last_kill
    )
    report.append({"backend": "sqlite", "seed": seed, **numbers})
    assert execute(path, "PRAGMA integrity_check") == [("ok",)]


# -- triggers ---------------------------------------------------------------------------------


async def test_the_watchers_are_told_at_each_poll_while_a_trigger_is_pending(
    tmp_path: Path,
) -> None:
    watching, other = SQLiteStore(tmp_path / "jobs.db"), SQLiteStore(tmp_path / "jobs.db")
    assert watching.trigger_poll == 0.5
    watching.trigger_poll = 0.1
    heard: list[float] = []
    async with served(watching), served(other):
        await other.register("j", schedule="every 1s", anchor=T0)
        watching.watch_triggers("j", lambda: heard.append(trio.current_time()))
        await trio.sleep(0.3)
        assert heard == []
        await other.trigger("j")
        # The leader may take it later: it is told again at each poll until then.
        with trio.fail_after(5):
            while len(heard) < 3:
                await trio.sleep(0.01)
        assert heard[2] - heard[1] >= 0.09
        key = await other.claim(
            "j", slot=at(1), node="b", fence=None, started_at=at(1), trigger="store"
        )
        assert key is not None
        await trio.sleep(0.3)  # a poll under way ends
        told = len(heard)
        await trio.sleep(0.5)
        assert len(heard) == told


async def test_a_failed_poll_is_logged_and_polling_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "jobs.db", call_timeout=0.5)
    store.trigger_poll = 0.05
    heard: list[str] = []
    async with served(store):
        await store.register("j", schedule="every 1s", anchor=T0)
        execute(tmp_path / "jobs.db", "UPDATE periodic_jobs SET triggered_at = 1")
        # The table gone for a moment (someone at work on the file).
        execute(tmp_path / "jobs.db", "ALTER TABLE periodic_jobs RENAME TO gone")
        with caplog.at_level(logging.INFO, logger="periodic"):
            store.watch_triggers("j", lambda: heard.append("j"))
            with trio.fail_after(5):
                while not any("reading the pending triggers failed" in m for m in caplog.messages):
                    await trio.sleep(0.01)
            assert heard == []
            execute(tmp_path / "jobs.db", "ALTER TABLE gone RENAME TO periodic_jobs")
            with trio.fail_after(5):
                while not heard:
                    await trio.sleep(0.01)
            assert store.serving
            assert any("read the pending triggers after 1 failure" in m for m in caplog.messages)
