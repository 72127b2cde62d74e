"""A job on a PostgresStore through database outages: its connections killed, and the server
stopped and started again. Runs are skipped with ``store_error`` (never run unclaimed), nothing
crashes, and the job runs again once the database is back. Real time, short periods.

The restart test stops the local server: it runs only when asked for (``pytest -m
pg_restart``), alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest
import trio
from pg_support import drop_table, pg_ctlcluster, query, require_postgres, unique_table

from periodic import Periodic
from periodic.events import Event, Finished, Skipped, SkipReason, Started
from periodic.testing import capture_events

pytestmark = pytest.mark.postgres


@pytest.fixture
def prefix() -> Iterator[str]:
    dsn = require_postgres()
    prefix = unique_table("periodic_so") + "_"
    yield prefix
    for table in ("jobs", "runs"):
        with contextlib.suppress(Exception):
            drop_table(dsn, prefix + table)


def kill_connections(dsn: str) -> int:
    rows = query(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND application_name LIKE 'periodic-store%%'",
    )
    return len(rows)


def kinds(events: list[Event]) -> list[str]:
    out = []
    for e in events:
        if isinstance(e, Started):
            out.append("run")
        elif isinstance(e, Skipped):
            out.append(str(e.reason))
    return out


async def test_killed_connections_cost_at_most_a_tick(prefix: str) -> None:
    from periodic.stores.postgres import PostgresStore

    dsn = require_postgres()
    store = PostgresStore(dsn, table_prefix=prefix, call_timeout=2.0)

    async def work() -> None:
        await trio.sleep(0.01)

    job = Periodic(run=work, every=0.3, name="outage", store=store)
    with capture_events(job) as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)
            await nursery.start(job.serve)
            with trio.fail_after(10):
                await events.wait_for(Finished, run_id=2)
            killed = await trio.to_thread.run_sync(kill_connections, dsn)
            before = len(events.of(Started))
            with trio.fail_after(10):
                await events.wait_for(Finished, run_id=before + 3)
            nursery.cancel_scope.cancel()
    assert killed >= 1
    # Three more runs came after the kill; at most one tick in between went wrong.
    assert len(events.find(Skipped, reason=SkipReason.STORE_ERROR)) <= 1
    assert [r.outcome for r in (await _runs(dsn, prefix))][:3] == ["ok", "ok", "ok"]


async def _runs(dsn: str, prefix: str) -> list[object]:
    from periodic.stores.postgres import PostgresStore

    store = PostgresStore(dsn, table_prefix=prefix)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        runs = await store.runs("outage", limit=100)
        nursery.cancel_scope.cancel()
    return list(runs)


@pytest.fixture
def restartable(request: pytest.FixtureRequest) -> str:
    dsn = require_postgres()
    if "pg_restart" not in (request.config.option.markexpr or ""):
        pytest.skip("stops the server under the other tests: run alone, with -m pg_restart")
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        pytest.skip("needs a local Debian cluster (pg_ctlcluster)")
    return dsn


@pytest.mark.pg_restart
async def test_a_server_restart_skips_ticks_and_the_job_recovers(
    restartable: str, prefix: str
) -> None:
    from periodic.stores.postgres import PostgresStore

    store = PostgresStore(restartable, table_prefix=prefix, call_timeout=1.0)

    async def work() -> None:
        await trio.sleep(0.01)

    job = Periodic(run=work, every=0.3, name="outage", store=store)
    with capture_events(job) as events:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.serve)
                await nursery.start(job.serve)
                with trio.fail_after(10):
                    await events.wait_for(Finished, run_id=2)
                await trio.to_thread.run_sync(pg_ctlcluster, "stop")
                with trio.fail_after(10):
                    await events.wait_for(Skipped, reason=SkipReason.STORE_ERROR)
                await trio.sleep(2)
                await trio.to_thread.run_sync(pg_ctlcluster, "start")
                started = len(events.of(Started))
                with trio.fail_after(20):
                    await events.wait_for(Started, run_id=started + 2)
                nursery.cancel_scope.cancel()
        finally:
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(pg_ctlcluster, "start")
    sequence = kinds(list(events))
    first_error = sequence.index("store_error")
    assert sequence[:first_error] == ["run"] * first_error
    assert "run" in sequence[first_error:]
    # Each failed claim took up to call_timeout (the missed-tick rule covers the ticks
    # meanwhile); every one of them started no run.
    errors = [e for e in events.of(Skipped) if e.reason is SkipReason.STORE_ERROR]
    assert errors
    assert not [e for e in events.of(Finished) if e.outcome == "error"]
