"""PostgresStore: what only it has. Its options and DSN (whose password never shows),
its tables and schema, its time-outs, connections the server drops, and processes
SIGKILLed while they claim (``store_worker.py``). The contract it shares with the other
stores is in test_stores_contract.py.

Needs the test server (see pg_support.py); each test uses tables of a prefix no other
test uses, dropped afterwards. Real time, every wait bounded.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pg_support import query, require_postgres, unique_table
from psycopg.conninfo import make_conninfo
from store_worker import Zygote, chaos, check

import periodic.stores
from periodic.peers import DatabaseConfigError
from periodic.stores.postgres import PostgresStore

pytestmark = pytest.mark.postgres

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 5, 1, tzinfo=UTC)
SECRET = "s3cr%t-p@ss"


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


@pytest.fixture
def pg() -> str:
    return require_postgres()


@pytest.fixture
def prefix(pg: str) -> Iterator[str]:
    """A table prefix of this test's own; its tables are dropped afterwards."""
    made = unique_table("periodic_t") + "_"
    yield made
    with contextlib.suppress(Exception):
        query(pg, f"DROP TABLE IF EXISTS {made}jobs, {made}runs")


@contextlib.asynccontextmanager
async def served(store: PostgresStore) -> AsyncIterator[PostgresStore]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(store.serve)
        yield store
        nursery.cancel_scope.cancel()


async def fails_at_once(store: PostgresStore) -> DatabaseConfigError:
    with trio.fail_after(5), pytest.raises(DatabaseConfigError) as info:
        await store.serve()
    assert not store.serving
    return info.value


def connections(dsn: str, app: str) -> set[int]:
    rows = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
        "AND datname = current_database()",
        (app,),
    )
    return {int(row[0]) for row in rows}


def kill(dsn: str, pids: set[int]) -> None:
    query(dsn, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),))


# -- options and the DSN ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"dsn": b"host=x"}, TypeError, "dsn must be a str"),
        ({"dsn": "host=x nonsense"}, ValueError, "dsn is not a valid connection string"),
        ({"table_prefix": "a.b.c_"}, ValueError, r"table_prefix \(or schema.prefix\) must"),
        ({"table_prefix": "1app.p_"}, ValueError, "table_prefix"),
        ({"table_prefix": 7}, TypeError, "table_prefix must be a str"),
        ({"create_tables": "yes"}, TypeError, "create_tables must be a bool"),
        ({"call_timeout": -1}, ValueError, "call_timeout must be a positive, finite"),
        ({"call_timeout": None}, TypeError, "call_timeout must be a number"),
        ({"history": -3}, ValueError, "history must be an int >= 1"),
        ({"history": "3"}, TypeError, "history must be an int >= 1"),
    ],
)
def test_bad_options_are_refused_by_name(
    options: dict[str, Any], error: type[Exception], text: str
) -> None:
    kwargs: dict[str, Any] = {"dsn": "postgresql://app@db/app", **options}
    with pytest.raises(error, match=text):
        PostgresStore(**kwargs)


def test_the_store_is_importable_from_periodic_stores() -> None:
    assert periodic.stores.PostgresStore is PostgresStore


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET.replace('%', '%25').replace('@', '%40')}@127.0.0.1:1/test",
        f"host=127.0.0.1 port=1 dbname=test user=app password='{SECRET}'",
    ],
)
async def test_a_server_that_cannot_be_reached_is_retried_and_no_password_shows(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # psycopg's own records too
    store = PostgresStore(dsn, call_timeout=1.0)
    assert "127.0.0.1" in repr(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve)  # does not raise: the server may come
        await trio.sleep(0.8)
        assert not store.serving
        nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings
    assert warnings[0].levelname == "WARNING"
    assert "could not open its database (retrying)" in warnings[0].getMessage()
    text = caplog.text + repr(store)
    assert "Connection refused" in text
    for shown in (SECRET, SECRET.replace("%", "%25"), "p@ss", "p%40ss"):
        assert shown not in text


async def test_an_unknown_role_fails_serve_at_once_without_the_password(pg: str) -> None:
    password = SECRET.replace("%", "%25").replace("@", "%40")
    dsn = pg.replace("postgres@", f"no_such_role_x:{password}@", 1)
    assert dsn != pg
    error = await fails_at_once(PostgresStore(dsn))
    assert 'role "no_such_role_x" does not exist' in str(error)
    text = str(error) + repr(error) + str(error.__cause__) + repr(error.__cause__)
    assert "s3cr" not in text
    assert getattr(error.__cause__, "pgconn", None) is None


async def test_an_unknown_database_fails_serve_at_once(pg: str) -> None:
    dsn = make_conninfo(pg, dbname="no_such_database_x")
    error = await fails_at_once(PostgresStore(dsn))
    assert 'database "no_such_database_x" does not exist' in str(error)


async def test_a_bad_connection_option_fails_serve_at_once(pg: str) -> None:
    dsn = pg.replace("127.0.0.1:5432", "127.0.0.1:notaport", 1)
    assert dsn != pg
    error = await fails_at_once(PostgresStore(dsn))
    assert 'invalid integer value "notaport"' in str(error)


# -- tables -----------------------------------------------------------------------------------


async def test_a_table_of_the_wrong_shape_fails_serve_at_once(pg: str, prefix: str) -> None:
    query(
        pg,
        f"CREATE TABLE {prefix}jobs (name text PRIMARY KEY, schedule text, "
        "anchor timestamptz, last_slot timestamp, last_node text, last_fence bigint, "
        "max_fence bigint, last_outcome text, last_started_at timestamptz, "
        "last_finished_at timestamptz, consecutive_failures integer, paused_at timestamptz, "
        "pause_note text, triggered_at timestamptz, overdue_after double precision, "
        "registered_at timestamptz, resumed_at timestamptz, last_ok_at timestamptz)",
    )
    error = await fails_at_once(PostgresStore(pg, table_prefix=prefix))
    assert f"{prefix}jobs has the wrong shape (last_slot is timestamp without time zone)" in (
        str(error)
    )
    assert "give another table_prefix=" in str(error)


async def test_a_runs_table_without_triggered_fails_serve_at_once(pg: str, prefix: str) -> None:
    # The shape of a development build, before triggered runs were told apart.
    query(
        pg,
        f"CREATE TABLE {prefix}runs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "job text NOT NULL, slot timestamptz NOT NULL, node text NOT NULL, fence bigint, "
        "started_at timestamptz NOT NULL, finished_at timestamptz, outcome text, "
        "duration double precision, error text)",
    )
    error = await fails_at_once(PostgresStore(pg, table_prefix=prefix))
    assert f"{prefix}runs has the wrong shape (triggered is missing)" in str(error)


async def test_without_create_tables_serve_waits_for_the_tables(
    pg: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(pg, table_prefix=prefix, create_tables=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve)
        await trio.sleep(0.5)
        assert not store.serving
        [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert record.levelname == "ERROR"
        assert f"{prefix}jobs" in record.getMessage()
        assert "create_tables=False: create it first" in record.getMessage()
        async with served(PostgresStore(pg, table_prefix=prefix)):  # another process
            pass
        with trio.fail_after(5):
            while not store.serving:
                await trio.sleep(0.01)
        await store.register("j", schedule="every 1s", anchor=T0)
        nursery.cancel_scope.cancel()


async def test_a_schema_qualified_prefix_puts_both_tables_in_the_schema(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "periodic")
    schema = f"s_{secrets.token_hex(4)}"
    query(pg, f"CREATE SCHEMA {schema}")
    try:
        store = PostgresStore(pg, table_prefix=f"{schema}.jobs_")
        async with served(store):
            await store.register("j", schedule="every 1s", anchor=T0)
            assert await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1))
        rows = query(
            pg,
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename",
            (schema,),
        )
        assert rows == [("jobs_jobs",), ("jobs_runs",)]
        assert query(pg, f"SELECT name, last_slot FROM {schema}.jobs_jobs") == [("j", at(1))]
        assert f"is in tables {schema}.jobs_jobs and {schema}.jobs_runs\n" in caplog.text + "\n"
    finally:
        query(pg, f"DROP SCHEMA {schema} CASCADE")


async def test_an_unqualified_prefix_is_found_once_and_named(
    pg: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "periodic")
    async with served(PostgresStore(pg, table_prefix=prefix)):
        pass
    assert f"is in tables public.{prefix}jobs and public.{prefix}runs" in caplog.text
    assert f"give table_prefix='public.{prefix}'" in caplog.text


# -- time-outs and dropped connections --------------------------------------------------------


async def test_a_locked_row_times_out_and_the_store_recovers(pg: str, prefix: str) -> None:
    import psycopg

    async with served(PostgresStore(pg, table_prefix=prefix, call_timeout=0.5)) as store:
        await store.register("j", schedule="every 1s", anchor=T0)
        with psycopg.connect(pg) as blocker:  # holds the job's row in an open transaction
            blocker.execute(f"SELECT * FROM {prefix}jobs WHERE name = 'j' FOR UPDATE")
            begun = trio.current_time()
            with pytest.raises(TimeoutError, match=r"longer than call_timeout \(0.5 s\)"):
                await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1))
            assert 0.5 <= trio.current_time() - begun < 1.5
            state = await store.job("j")  # readers are not blocked
            assert state is not None
            assert state.last_slot is None
            await trio.sleep(0.3)  # the statement_timeout ends the abandoned call too
            blocker.rollback()
        # The claim that timed out did not happen: the slot can be claimed now.
        assert await store.claim("j", slot=at(1), node="a", fence=None, started_at=at(1))


async def test_connections_the_server_drops_are_replaced_within_the_call(
    pg: str, prefix: str
) -> None:
    app = f"periodic-test-{secrets.token_hex(4)}"
    store = PostgresStore(make_conninfo(pg, application_name=app), table_prefix=prefix)
    async with served(store):
        await store.register("j", schedule="every 1s", anchor=T0)
        failed = 0
        for round_ in range(1, 4):
            # Several connections in the pool, all idle, all dropped at once.
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(store.jobs)
            before = connections(pg, app)
            assert before
            kill(pg, before)
            try:
                key = await store.claim(
                    "j", slot=at(round_), node="a", fence=None, started_at=at(round_)
                )
            except Exception:
                failed += 1
                key = None
            assert await store.job("j") is not None
            assert connections(pg, app).isdisjoint(before)
            assert key is not None
        assert failed == 0
        assert [r.slot for r in await store.runs("j")] == [at(3), at(2), at(1)]


# -- processes killed while they claim --------------------------------------------------------


@pytest.fixture
def report() -> Iterator[list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []
    yield lines
    for line in lines:
        print(f"\n[store-chaos] {json.dumps(line)}")


async def test_claimers_killed_at_random_instants_leave_every_slot_claimed_once(
    pg: str, prefix: str, tmp_path: Path, report: list[dict[str, Any]]
) -> None:
    import store_worker

    history = 30
    async with served(PostgresStore(pg, table_prefix=prefix, history=history)) as store:
        await store.register("race", schedule="every 1s", anchor=T0)
    seed = int.from_bytes(os.urandom(4), "big")
    async with trio.open_nursery() as nursery:
        zygote = await Zygote.start(
            nursery, tmp_path / "zygote.log", "postgres", pg, prefix, history
        )
        try:
            last_kill = await chaos(zygote, claimers=3, kills=20, rng=random.Random(seed))
        finally:
            await zygote.close()
        nursery.cancel_scope.cancel()

    def seconds(slot: datetime.datetime) -> int:
        return round((slot - store_worker.T0).total_seconds())

    rows = [
        (key, seconds(slot), node, ended, outcome, duration)
        for key, slot, node, ended, outcome, duration in query(
            pg,
            "SELECT id, slot, node, finished_at IS NOT NULL, outcome, duration "
            f"FROM {prefix}runs WHERE job = 'race' ORDER BY id",
        )
    ]
    [(last_slot, last_node)] = query(
        pg, f"SELECT last_slot, last_node FROM {prefix}jobs WHERE name = 'race'"
    )
    numbers = check(
        zygote, rows, (seconds(last_slot), last_node), history=history, last_kill=last_kill
    )
    report.append({"backend": "postgres", "seed": seed, **numbers})


# -- triggers: NOTIFY, the poll, the listening connection -------------------------------------


@pytest.fixture
def reminder_tables(pg: str, prefix: str) -> Iterator[None]:
    yield
    with contextlib.suppress(Exception):
        query(pg, f"DROP TABLE IF EXISTS {prefix}reminders")
        query(pg, f"DROP SEQUENCE IF EXISTS {prefix}reminder_fences")


async def wait_until(heard: list[str], count: int, *, within: float) -> float:
    """Wait until ``heard`` holds ``count`` entries; the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(within):
        while len(heard) < count:
            await trio.sleep(0.005)
    return trio.current_time() - start


async def test_the_pending_triggers_are_read_in_case_a_notification_was_missed(
    pg: str, prefix: str
) -> None:
    store = PostgresStore(pg, table_prefix=prefix)
    assert store.trigger_poll == 5.0
    store.trigger_poll = 0.2
    heard: list[str] = []
    async with served(store):
        await store.register("j", schedule="every 1s", anchor=T0)
        store.watch_triggers("j", lambda: heard.append("j"))
        await trio.sleep(0.5)
        assert heard == []
        # Pending, but nobody was told (as if the NOTIFY was lost).
        await trio.to_thread.run_sync(
            query, pg, f"UPDATE {prefix}jobs SET triggered_at = now() WHERE name = 'j'"
        )
        await wait_until(heard, 1, within=5)


def listeners(dsn: str) -> set[int]:
    return connections(dsn, "periodic-store-listener")


async def wait_for_listener(dsn: str, other_than: set[int]) -> set[int]:
    with trio.fail_after(10):
        while True:
            found = await trio.to_thread.run_sync(listeners, dsn) - other_than
            if found:
                return found
            await trio.sleep(0.05)


async def test_one_connection_listens_for_triggers_and_reminders_and_survives_a_kill(
    pg: str, prefix: str, reminder_tables: None
) -> None:
    before = listeners(pg)
    watching = PostgresStore(pg, table_prefix=prefix)
    watching.trigger_poll = 600.0  # only a notification can be in time
    other = PostgresStore(pg, table_prefix=prefix)
    triggers: list[str] = []
    reminders: list[str] = []
    async with served(watching), served(other), trio.open_nursery() as nursery:
        await other.register("j", schedule="every 1s", anchor=T0)
        watching.watch_triggers("j", lambda: triggers.append("j"))
        await nursery.start(watching.listen_reminders, "r", lambda: reminders.append("r"))
        [listener] = await wait_for_listener(pg, before)
        await trio.sleep(1.5)  # it listens on both channels by now
        assert listeners(pg) - before == {listener}
        triggers.clear()
        reminders.clear()
        await other.trigger("j")
        assert await wait_until(triggers, 1, within=5) < 0.5
        await other.set_reminder("r", "k", fire_at=T0, payload="0")
        assert await wait_until(reminders, 1, within=5) < 0.5

        kill(pg, {listener})
        [again] = await wait_for_listener(pg, before | {listener})
        await trio.sleep(1.5)
        assert watching.serving
        triggers.clear()
        reminders.clear()
        await other.trigger("j")
        assert await wait_until(triggers, 1, within=5) < 0.5
        await other.cancel_reminder("r", "k")  # or k2, due no sooner, would tell nobody
        await other.set_reminder("r", "k2", fire_at=T0, payload="0")
        assert await wait_until(reminders, 1, within=5) < 0.5
        assert listeners(pg) - before == {again}
        nursery.cancel_scope.cancel()


async def test_a_listener_that_cannot_connect_retries_and_the_poll_goes_on(
    pg: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    watching = PostgresStore(pg, table_prefix=prefix)
    other = PostgresStore(pg, table_prefix=prefix)
    watching.trigger_poll = 0.2
    heard: list[str] = []
    with caplog.at_level(logging.INFO, logger="periodic"):
        async with served(watching), served(other):
            await other.register("j", schedule="every 1s", anchor=T0)
            reachable = watching._listen_conninfo
            watching._listen_conninfo = make_conninfo(pg, port=1, connect_timeout=2)
            watching.watch_triggers("j", lambda: heard.append("j"))
            with trio.fail_after(5):
                while not any("listening for notifications failed" in m for m in caplog.messages):
                    await trio.sleep(0.01)
            # The poll still finds the triggers.
            await other.trigger("j")
            await wait_until(heard, 1, within=5)
            assert await other.claim(
                "j", slot=at(1), node="b", fence=None, started_at=at(1), trigger="store"
            )
            # Reachable again: notified at once again.
            watching._listen_conninfo = reachable
            with trio.fail_after(20):
                while not any("listening for notifications again" in m for m in caplog.messages):
                    await trio.sleep(0.01)
            watching.trigger_poll = 600.0
            await trio.sleep(0.5)  # the poll under way, if any, ends
            told = len(heard)
            await other.trigger("j")
            assert await wait_until(heard, told + 1, within=5) < 0.5
            assert watching.serving
    failures = [r for r in caplog.records if "listening for notifications failed" in r.message]
    assert failures
    assert all(r.levelno == logging.WARNING for r in failures)
    assert not any(SECRET in m for m in caplog.messages)
