"""LeasePeer's hand-over rules, in real time: shared node names, draining, bounded stops."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from pg_support import drop_table, pg_dsn, query, unique_table

import periodic
from periodic import Periodic
from periodic.events import Event, Finished, LeadershipChanged, Outcome
from periodic.peers import LeaseBackend, LeasePeer, SQLitePeer
from periodic.peers import _lease as lease_module
from periodic.testing import tick

_ = pg_dsn  # a fixture


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


async def test_processes_sharing_a_node_name_never_share_the_lease(tmp_path: Path) -> None:
    # As after a fork, or with one node= in every worker's config.
    peers = [SQLitePeer(tmp_path / "p.db", name="e", ttl=1.0, node="web-1") for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await nursery.start(peer.serve)
        await wait_until(lambda: any(p.is_leader() for p in peers))
        for _ in range(10):  # over more than a whole lease
            assert sum(p.is_leader() for p in peers) == 1
            await trio.sleep(0.15)
        assert {p.leader() for p in peers} == {"web-1"}
        nursery.cancel_scope.cancel()


async def test_a_stopping_leader_hands_over_only_once_its_runs_are_over(
    tmp_path: Path,
) -> None:
    seen: list[tuple[float, Event]] = []
    first = SQLitePeer(tmp_path / "p.db", name="e", ttl=3.0, node="a")
    second = SQLitePeer(tmp_path / "p.db", name="e", ttl=3.0, node="b")
    job = Periodic(run=functools.partial(trio.sleep, 0.8), every=1000, peer=first, mode="manual")
    with periodic.subscribe(lambda e: seen.append((trio.current_time(), e))):
        async with trio.open_nursery() as nursery:
            first_scope = trio.CancelScope()

            async def serve_first(task_status: trio.TaskStatus[None]) -> None:
                with first_scope:
                    await first.serve(task_status=task_status)

            await nursery.start(serve_first)
            await wait_until(first.is_leader)
            await nursery.start(second.serve)
            await nursery.start(job.serve)
            assert await tick(job) == 1
            await trio.sleep(0.1)
            first_scope.cancel()  # the run goes on for 0.7 s: no new leader before its end
            await wait_until(second.is_leader, timeout=5)
            nursery.cancel_scope.cancel()
    [(run_end, finished)] = [(t, e) for t, e in seen if isinstance(e, Finished)]
    assert isinstance(finished, Finished)
    assert finished.outcome is Outcome.OK
    gained_b = [
        t for t, e in seen if isinstance(e, LeadershipChanged) and e.node == "b" and e.gained
    ]
    assert gained_b[0] >= run_end


class HangingRelease(LeaseBackend):
    """Leads at once; its release hangs longer than the call timeout."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closed = threading.Event()

    def acquire(self, name: str, node: str, ttl: float) -> tuple[str, int] | None:
        self.calls.append("acquire")
        return node, 1

    def release(self, name: str, node: str) -> None:
        self.calls.append("release")
        time.sleep(1.0)

    def close(self) -> None:
        self.calls.append("close")
        self.closed.set()


async def test_a_hanging_release_is_abandoned_and_the_backend_still_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = HangingRelease()
    peer = LeasePeer(backend, name="e", ttl=1.0)
    with caplog.at_level(logging.WARNING, logger="periodic"):
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await wait_until(peer.is_leader)
            started = trio.current_time()
            nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 1.0  # the release's call_timeout is 0.25 s
    # The abandoned release holds the backend's one thread slot until it returns; close
    # comes after it, still within the stop's bounds or right after.
    assert backend.calls[:2] == ["acquire", "release"]
    assert any("could not release" in r.getMessage() for r in caplog.records)


async def test_a_suspend_ends_the_lease_even_though_trios_clock_stood_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = SQLitePeer(tmp_path / "p.db", name="e", ttl=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer.is_leader)
        real = lease_module._boot_clock
        # The machine slept for a minute: the boot clock moved on, the monotonic one not.
        monkeypatch.setattr(lease_module, "_boot_clock", lambda: real() + 60)
        assert not peer.is_leader()
        changes: list[Event] = []
        with periodic.subscribe(changes.append):
            await wait_until(lambda: bool(changes), timeout=2)  # the watchdog notices
        assert isinstance(changes[0], LeadershipChanged)
        assert not changes[0].gained
        nursery.cancel_scope.cancel()


async def test_an_sql_keyword_is_a_fine_table_name(tmp_path: Path) -> None:
    peer = SQLitePeer(tmp_path / "p.db", name="e", ttl=1.0, table="order")
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        await wait_until(peer.is_leader)
        nursery.cancel_scope.cancel()


def test_call_timeout_must_leave_room_for_the_lease() -> None:
    with pytest.raises(ValueError, match="call_timeout must be shorter than ttl - margin"):
        LeasePeer(HangingRelease(), name="e", ttl=1.0, call_timeout=0.95)


async def test_a_role_that_may_only_use_the_table_leads(pg_dsn: str) -> None:
    from periodic.peers import PostgresPeer

    if "://postgres@" not in pg_dsn:
        pytest.skip("needs the default superuser DSN to create a role")
    table = unique_table()
    role = f"periodic_user_{table[-12:]}"
    PostgresPeer(pg_dsn, name="setup", table=table)  # (validates the name)
    query(
        pg_dsn,
        f'CREATE TABLE "{table}" (name text PRIMARY KEY, node text NOT NULL, '
        "epoch bigint NOT NULL, expires_at timestamptz NOT NULL)",
    )
    query(pg_dsn, f'CREATE ROLE "{role}" LOGIN')
    try:
        query(pg_dsn, f'GRANT SELECT, INSERT, UPDATE ON "{table}" TO "{role}"')
        query(pg_dsn, f'REVOKE CREATE ON SCHEMA public FROM "{role}"')
        limited = pg_dsn.replace("postgres@", f"{role}@", 1)
        peer = PostgresPeer(limited, name="e", ttl=1.0, table=table)
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            await wait_until(peer.is_leader)
            nursery.cancel_scope.cancel()
    finally:
        drop_table(pg_dsn, table)
        query(pg_dsn, f'DROP ROLE IF EXISTS "{role}"')
