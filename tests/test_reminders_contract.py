"""The reminders' part of every store (:class:`periodic.stores.ReminderStore`), run against
MemoryStore, SQLiteStore and PostgresStore, in real time (the calls are short). The
stores' clocks are given explicitly where they are used (``now=``); PostgreSQL judges
claims and retries by its own clock, so the times asked of it are around the present."""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pg_support import query, require_postgres, unique_table

from periodic.reminders import Reminder
from periodic.stores import MemoryStore, ReminderStore, Store
from periodic.stores.sqlite import SQLiteStore

UTC = datetime.timezone.utc
KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
N = "app"


def drop_reminders(dsn: str, prefix: str) -> None:
    for table in ("jobs", "runs", "reminders"):
        query(dsn, f'DROP TABLE IF EXISTS "{prefix}{table}"')
    query(dsn, f'DROP SEQUENCE IF EXISTS "{prefix}reminder_fences"')


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Makes handles on one database of the kind."""
    if request.param == "memory":
        one = MemoryStore()
        yield lambda: one
    elif request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "r.db")
    else:
        from periodic.stores.postgres import PostgresStore

        dsn = require_postgres()
        prefix = unique_table("periodic_rc") + "_"
        yield lambda: PostgresStore(dsn, table_prefix=prefix)
        with contextlib.suppress(Exception):
            drop_reminders(dsn, prefix)


@contextlib.asynccontextmanager
async def served(store: Any) -> AsyncIterator[Any]:
    async with trio.open_nursery() as nursery:
        if not store.serving:
            await nursery.start(store.serve)
        yield store
        nursery.cancel_scope.cancel()


@pytest.fixture
async def store(make: Callable[[], Any]) -> AsyncIterator[Any]:
    async with served(make()) as s:
        yield s


def now(seconds: float = 0.0) -> datetime.datetime:
    return datetime.datetime.now(UTC) + datetime.timedelta(seconds=seconds)


def payload(value: object) -> str:
    return json.dumps(value)


async def test_every_store_keeps_reminders(store: Store) -> None:
    assert isinstance(store, ReminderStore)


async def test_set_get_pending_and_cancel(store: ReminderStore) -> None:
    later, sooner = now(3600), now(60)
    a = await store.set_reminder(N, "a", fire_at=later, payload=payload({"x": [1, "y"]}))
    assert a == Reminder(key="a", fire_at=later, payload={"x": [1, "y"]}, fence=a.fence)
    b = await store.set_reminder(N, "b", fire_at=sooner, payload=payload(None))
    assert await store.get_reminder(N, "a") == a
    assert await store.get_reminder("other", "a") is None  # names are namespaces
    assert await store.pending_reminders(N, limit=10) == [b, a]
    assert await store.pending_reminders(N, limit=1) == [b]
    assert await store.count_reminders(N) == 2
    assert await store.next_reminder_due(N) == sooner
    assert await store.cancel_reminder(N, "b") is True
    assert await store.cancel_reminder(N, "b") is False
    assert await store.pending_reminders(N, limit=10) == [a]
    assert await store.next_reminder_due("other") is None


async def test_fences_grow_strictly_across_keys_names_and_versions(
    store: ReminderStore,
) -> None:
    fences = []
    for key, name in [("a", N), ("b", N), ("a", N), ("a", "other"), ("b", N), ("a", N)]:
        fences.append((await store.set_reminder(name, key, fire_at=now(60), payload="1")).fence)
    assert fences == sorted(set(fences)), fences
    # Replacing keeps one row per key, with the latest version.
    latest = await store.get_reminder(N, "a")
    assert latest is not None
    assert latest.fence == fences[-1]
    assert await store.count_reminders(N) == 2


async def test_claims_take_what_is_due_once_until_the_claim_expires(
    store: ReminderStore,
) -> None:
    due = [
        await store.set_reminder(N, k, fire_at=now(-10 + i), payload="0")
        for i, k in enumerate("abc")
    ]
    await store.set_reminder(N, "later", fire_at=now(3600), payload="0")
    first = await store.claim_reminders(N, now=now(), claim_ttl=1.0, limit=2)
    assert [(r.key, r.fence, r.attempt) for r in first] == [
        ("a", due[0].fence, 1),
        ("b", due[1].fence, 1),
    ]
    second = await store.claim_reminders(N, now=now(), claim_ttl=1.0, limit=10)
    assert [r.key for r in second] == ["c"]
    assert await store.claim_reminders(N, now=now(), claim_ttl=1.0, limit=10) == []
    # A claimed reminder is still pending, and due again when its claim ends.
    assert await store.count_reminders(N) == 4
    next_due = await store.next_reminder_due(N)
    assert next_due is not None
    assert now(0.5) < next_due < now(1.5)
    await trio.sleep(1.2)  # the claims expire: a dead deliverer's reminders come back
    again = await store.claim_reminders(N, now=now(), claim_ttl=60.0, limit=10)
    assert [(r.key, r.attempt) for r in again] == [("a", 2), ("b", 2), ("c", 2)]


async def test_completion_deletes_only_the_version_delivered(store: ReminderStore) -> None:
    await store.set_reminder(N, "k", fire_at=now(-1), payload=payload("old"))
    [delivering] = await store.claim_reminders(N, now=now(), claim_ttl=60.0, limit=10)
    newer = await store.set_reminder(N, "k", fire_at=now(-1), payload=payload("new"))
    assert newer.fence > delivering.fence
    # The old version's delivery ends: the new version stays, and is due at once.
    assert await store.complete_reminder(N, "k", delivering.fence) is False
    await store.retry_reminder(N, "k", delivering.fence, now=now(), delay=None, error="x")
    assert await store.failed_reminders(N, limit=10) == []
    [fresh] = await store.claim_reminders(N, now=now(), claim_ttl=60.0, limit=10)
    assert (fresh.fence, fresh.payload, fresh.attempt) == (newer.fence, "new", 1)
    assert await store.complete_reminder(N, "k", fresh.fence) is True
    assert await store.get_reminder(N, "k") is None


async def test_retry_then_failed(store: ReminderStore) -> None:
    made = await store.set_reminder(N, "k", fire_at=now(-5), payload="7")
    [one] = await store.claim_reminders(N, now=now(), claim_ttl=60.0, limit=10)
    await store.retry_reminder(N, "k", one.fence, now=now(), delay=0.3, error="E: one")
    waiting = await store.get_reminder(N, "k")
    assert waiting == Reminder(
        key="k", fire_at=made.fire_at, payload=7, fence=made.fence, attempt=2, error="E: one"
    )
    assert await store.claim_reminders(N, now=now(), claim_ttl=60.0, limit=10) == []
    await trio.sleep(0.4)
    [two] = await store.claim_reminders(N, now=now(), claim_ttl=60.0, limit=10)
    assert two.attempt == 2
    await store.retry_reminder(N, "k", two.fence, now=now(), delay=None, error="E: two")
    assert await store.get_reminder(N, "k") is None
    assert await store.pending_reminders(N, limit=10) == []
    assert await store.count_reminders(N) == 0
    assert await store.next_reminder_due(N) is None
    assert await store.failed_reminders(N, limit=10) == [
        Reminder(
            key="k", fire_at=made.fire_at, payload=7, fence=made.fence, attempt=2, error="E: two"
        )
    ]
    assert await store.claim_reminders(N, now=now(60), claim_ttl=60.0, limit=10) == []
    # Setting the key again makes a fresh version; cancelling removes a failed one too.
    again = await store.set_reminder(N, "k", fire_at=now(60), payload="8")
    assert again.attempt == 1
    assert again.error is None
    assert await store.failed_reminders(N, limit=10) == []
    await store.retry_reminder(N, "k", again.fence, now=now(), delay=None, error="E")
    assert await store.cancel_reminder(N, "k") is True
    assert await store.failed_reminders(N, limit=10) == []


async def test_release_gives_a_claim_back_at_once(store: ReminderStore) -> None:
    await store.set_reminder(N, "k", fire_at=now(-1), payload="0")
    [one] = await store.claim_reminders(N, now=now(), claim_ttl=600.0, limit=10)
    await store.release_reminder(N, "k", one.fence, now=now())
    [again] = await store.claim_reminders(N, now=now(), claim_ttl=600.0, limit=10)
    assert (again.fence, again.attempt) == (one.fence, 1)


async def test_racing_claimers_share_out_each_reminder_once(make: Callable[[], Any]) -> None:
    handles = [make() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for handle in handles:
            await stack.enter_async_context(served(handle))
        for i in range(60):
            await handles[0].set_reminder(N, f"k{i}", fire_at=now(-1), payload="0")
        got: list[str] = []

        async def claimer(store: ReminderStore) -> None:
            while batch := await store.claim_reminders(N, now=now(), claim_ttl=60, limit=7):
                got.extend(r.key for r in batch)

        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(claimer, handle)
    assert sorted(got) == sorted(f"k{i}" for i in range(60))


async def test_listeners_hear_of_reminders_set_here(store: ReminderStore) -> None:
    heard: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.listen_reminders, N, lambda: heard.append("set"))
        await store.set_reminder("other", "k", fire_at=now(60), payload="0")
        assert heard == []
        await store.set_reminder(N, "k", fire_at=now(60), payload="0")
        assert heard[:1] == ["set"]
        nursery.cancel_scope.cancel()
