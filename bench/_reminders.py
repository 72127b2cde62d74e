"""Scenario 9: durable reminders. With ``pending`` reminders kept in the store (due a day
later), how long ``remind()`` takes, and whether ``due`` reminders all due in the same second
are delivered within 2 s of it.

The store is made in the worker as in scenario 8 (its tables and sequence dropped afterwards).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

UTC = datetime.timezone.utc
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# Reminders set at once while filling the store (PostgresStore has 4 connections).
_FILLERS = 4


@contextlib.contextmanager
def _store(kind: str) -> Iterator[Any]:
    from periodic.stores import MemoryStore

    if kind == "memory":
        yield MemoryStore()
        return
    if kind == "sqlite":
        from periodic.stores.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory() as tmp:
            yield SQLiteStore(os.path.join(tmp, "bench.db"))
        return
    from periodic.stores.postgres import PostgresStore

    dsn = os.environ.get("PERIODIC_TEST_POSTGRES_DSN") or DEFAULT_DSN
    prefix = f"periodic_bench_{secrets.token_hex(4)}_"
    try:
        yield PostgresStore(dsn, table_prefix=prefix)
    finally:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in ("jobs", "runs", "reminders"):
                conn.execute(f"DROP TABLE IF EXISTS {prefix}{table}")
            conn.execute(f"DROP SEQUENCE IF EXISTS {prefix}reminder_fences")


def reminders(
    contender: str, store: str, pending: int, pending_postgres: int, due: int
) -> dict[str, Any]:
    """``pending`` (``pending_postgres`` on PostgreSQL) reminders a day away; then ``due``
    due in the same second."""
    if store == "postgres":
        pending = pending_postgres
    from periodic.reminders import Reminder, Reminders

    lateness: list[float] = []
    delivered = trio.Event()

    async def handler(r: Reminder) -> None:
        lateness.append((datetime.datetime.now(UTC) - r.fire_at).total_seconds())
        if len(lateness) == due:
            delivered.set()

    out: dict[str, Any] = {}

    async def main(kind: Any) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(kind.serve)
            made = Reminders(kind, handler, name="bench")
            # 1. The store filled, and remind()'s latency measured as it fills.
            later = datetime.datetime.now(UTC) + datetime.timedelta(days=1)
            samples: list[float] = []

            async def fill(start: int) -> None:
                for i in range(start, pending, _FILLERS):
                    t = time.perf_counter()
                    await made.remind(f"pending-{i}", at=later, payload={"i": i})
                    samples.append(time.perf_counter() - t)

            t = time.perf_counter()
            async with trio.open_nursery() as fillers:
                for start in range(_FILLERS):
                    fillers.start_soon(fill, start)
            out["fill_s"] = time.perf_counter() - t
            # remind() alone, with the store full.
            alone = []
            for i in range(200):
                t = time.perf_counter()
                await made.remind(f"alone-{i}", at=later)
                alone.append(time.perf_counter() - t)
            alone.sort()
            out["remind_median_ms"] = statistics.median(alone) * 1e3
            out["remind_p99_ms"] = alone[int(len(alone) * 0.99) - 1] * 1e3
            out["remind_filling_median_ms"] = statistics.median(samples) * 1e3
            # 2. due reminders in the same second, a deliverer serving.
            await nursery.start(made.serve)
            fire = datetime.datetime.now(UTC) + datetime.timedelta(seconds=2)
            for i in range(due):
                await made.remind(f"due-{i}", at=fire + datetime.timedelta(microseconds=i))
            cpu = time.process_time()
            with trio.move_on_after(30):
                await delivered.wait()
            out["delivery_cpu_s"] = time.process_time() - cpu
            out["delivered"] = len(lateness)
            ordered = sorted(lateness)
            out["last_delivered_s"] = ordered[-1] if ordered else None
            out["median_lateness_ms"] = statistics.median(ordered) * 1e3 if ordered else None
            out["all_within_2s"] = len(ordered) == due and ordered[-1] <= 2.0
            nursery.cancel_scope.cancel()

    with _store(store) as kind:
        trio.run(main, kind)
    return out
