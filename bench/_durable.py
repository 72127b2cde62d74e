"""Scenario 8: jobs with a store. What a claim adds to a run's start, and whether 1 000 jobs
at 1 Hz sharing one store start their runs on time.

The store is made in the worker: a MemoryStore, an SQLiteStore on a file in a temporary
directory, or a PostgresStore on ``$PERIODIC_TEST_POSTGRES_DSN`` (default the local test
server) with tables of a fresh prefix, dropped afterwards.
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


@contextlib.contextmanager
def _store(kind: str) -> Iterator[Any]:
    from periodic.stores import MemoryStore

    if kind == "memory":
        yield MemoryStore(history=10)
        return
    if kind == "sqlite":
        from periodic.stores.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory() as tmp:
            yield SQLiteStore(os.path.join(tmp, "bench.db"), history=10)
        return
    from periodic.stores.postgres import PostgresStore

    dsn = os.environ.get("PERIODIC_TEST_POSTGRES_DSN") or DEFAULT_DSN
    prefix = f"periodic_bench_{secrets.token_hex(4)}_"
    try:
        yield PostgresStore(dsn, table_prefix=prefix, history=10)
    finally:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in ("jobs", "runs"):
                conn.execute(f"DROP TABLE IF EXISTS {prefix}{table}")


def durable(
    contender: str, store: str, n: int, every: float, periods: int, claims: int
) -> dict[str, Any]:
    """Claim latency (``claims`` claims in a row) and ``n`` jobs sharing the store."""
    from periodic import Periodic, current_run

    lateness: list[float] = []

    async def job() -> None:
        fire = current_run().fire_time
        assert fire is not None
        lateness.append((datetime.datetime.now(UTC) - fire).total_seconds())

    out: dict[str, Any] = {}

    async def main(kind: Any) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(kind.serve)
            # 1. A claim's latency, alone.
            await kind.register(
                "bench-claims", schedule="bench", anchor=datetime.datetime.now(UTC)
            )
            base = datetime.datetime.now(UTC)
            samples = []
            for k in range(claims):
                t = time.perf_counter()
                key = await kind.claim(
                    "bench-claims",
                    slot=base + datetime.timedelta(milliseconds=k),
                    node="bench",
                    fence=None,
                    started_at=base,
                )
                samples.append(time.perf_counter() - t)
                assert key is not None
            samples.sort()
            out["claim_median_ms"] = statistics.median(samples) * 1e3
            out["claim_p99_ms"] = samples[int(len(samples) * 0.99) - 1] * 1e3
            # 2. n jobs at 1/every Hz on the same store.
            t = trio.current_time()
            for i in range(n):
                await nursery.start(
                    Periodic(run=job, every=every, name=f"bench-{i}", store=kind).serve
                )
            out["startup_s"] = trio.current_time() - t
            await trio.sleep(every)  # every job has its grid; then measure
            lateness.clear()
            cpu = time.process_time()
            await trio.sleep(periods * every)
            cpu = time.process_time() - cpu
            runs = len(lateness)
            out["runs"] = runs
            out["cpu_per_run_us"] = cpu / max(runs, 1) * 1e6
            out["within_100ms_pct"] = sum(1 for x in lateness if x <= 0.1) / max(runs, 1) * 100
            ordered = sorted(lateness)
            out["p99_lateness_ms"] = (
                ordered[int(len(ordered) * 0.99) - 1] * 1e3 if ordered else None
            )
            nursery.cancel_scope.cancel()

    with _store(store) as kind:
        trio.run(main, kind)
    return out
