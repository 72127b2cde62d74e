"""OS processes serving one name of reminders on a real store, one of them SIGKILLed in
the middle of a delivery: every reminder is delivered, the killed one's again only once
its claim expired, and none twice otherwise."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pg_support import query, require_postgres, unique_table

WORKER = Path(__file__).with_name("reminder_worker.py")
UTC = datetime.timezone.utc
CLAIM_TTL = 2.0
HOLD = 0.4
COUNT = 40


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "r.db"), "periodic_"
        return
    dsn = require_postgres()
    prefix = unique_table("periodic_rk") + "_"
    yield "postgres", dsn, prefix
    with contextlib.suppress(Exception):
        query(dsn, f'DROP TABLE IF EXISTS "{prefix}jobs", "{prefix}runs", "{prefix}reminders"')
        query(dsn, f'DROP SEQUENCE IF EXISTS "{prefix}reminder_fences"')


def store_of(backend: str, path: str, prefix: str) -> Any:
    if backend == "sqlite":
        from periodic.stores.sqlite import SQLiteStore

        return SQLiteStore(path, table_prefix=prefix)
    from periodic.stores.postgres import PostgresStore

    return PostgresStore(path, table_prefix=prefix)


async def set_reminders(store: Any, first_at: datetime.datetime) -> list[int]:
    from periodic.reminders import Reminders

    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        reminders = Reminders(store, lambda r: None, name="race")
        fences = []
        for i in range(COUNT):
            at = first_at + datetime.timedelta(seconds=0.05 * i)
            fences.append((await reminders.remind(f"k{i}", at=at, payload=i)).fence)
        nursery.cancel_scope.cancel()
    return fences


async def pending(store: Any) -> int:
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        count = int(await store.count_reminders("race"))
        nursery.cancel_scope.cancel()
    return count


def lines(out: Path) -> list[dict[str, Any]]:
    found = []
    for line in out.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            found.append(json.loads(line))
    return found


def test_a_killed_deliverer_loses_nothing(target: tuple[str, str, str], tmp_path: Path) -> None:
    backend, path, prefix = target
    first_at = datetime.datetime.now(UTC) + datetime.timedelta(seconds=3)
    fences = trio.run(set_reminders, store_of(backend, path, prefix), first_at)
    args = ["--backend", backend, "--target", path, "--prefix", prefix]
    args += ["--hold", str(HOLD), "--claim-ttl", str(CLAIM_TTL)]
    outs = [tmp_path / f"w{i}.jsonl" for i in range(3)]
    procs = []
    for out in outs:
        with out.open("wb") as stdout:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], stdout=stdout))
    try:
        deadline = time.monotonic() + 30
        killed = None
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if killed is None:
                for proc, out in zip(procs, outs, strict=True):
                    if any(line["e"] == "begin" for line in lines(out)):
                        os.kill(proc.pid, signal.SIGKILL)  # mid-delivery
                        proc.wait()
                        killed = out
                        break
            seen = {line["key"] for out in outs for line in lines(out) if line["e"] == "done"}
            if len(seen) == COUNT:
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert killed is not None
    everything = [line for out in outs for line in lines(out)]
    done = Counter(line["key"] for line in everything if line["e"] == "done")
    assert set(done) == {f"k{i}" for i in range(COUNT)}, "reminders lost"
    assert all(n == 1 for n in done.values()), f"delivered twice: {done}"
    # What the killed process had begun, others delivered again, after the claim.
    cut = [line for line in lines(killed) if line["e"] == "begin"]
    finished = {line["key"] for line in lines(killed) if line["e"] == "done"}
    cut = [line for line in cut if line["key"] not in finished]
    assert cut, "the kill hit no delivery"
    for lost in cut:
        again = [
            line
            for line in everything
            if line["e"] == "begin" and line["key"] == lost["key"] and line["pid"] != lost["pid"]
        ]
        assert again, lost
        assert again[0]["attempt"] == lost["attempt"] + 1
        assert again[0]["fence"] == fences[int(lost["key"][1:])]
        assert again[0]["t"] >= lost["t"] + CLAIM_TTL - 0.2, (lost, again)
    # Nobody else began a reminder twice.
    begun = Counter(line["key"] for line in everything if line["e"] == "begin")
    assert {k for k, n in begun.items() if n > 1} == {line["key"] for line in cut}
    assert trio.run(pending, store_of(backend, path, prefix)) == 0
