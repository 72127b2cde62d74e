"""OS processes sharing a job through a real store: every slot runs exactly once.

Three processes serve the same interval job (``every=0.2``) on one SQLite file, or on one
PostgreSQL database, for a few seconds of real time: with no peer at all, with every process
believing it leads (a split brain of ``LocalPeer`` leaders), and with a lease peer whose
leader is killed with SIGKILL again and again. The job's runs are reported by the processes
themselves (``tests/store_job_worker.py``), not read back from the store, and checked: no
slot ran twice, and no slot in the window went missing.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
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
from pg_support import drop_table, require_postgres, unique_table

WORKER = Path(__file__).with_name("store_job_worker.py")
EVERY = 0.2


class Process:
    def __init__(self, args: list[str], out: Path) -> None:
        self.out = out
        self.err = out.with_suffix(".err")
        with out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, str(WORKER), *args], stdout=stdout, stderr=stderr
            )

    def lines(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
        return found

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["e"] == kind]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    if request.param == "sqlite":
        yield ["--backend", "sqlite", "--target", str(tmp_path / "store.db")]
        return
    dsn = require_postgres()
    prefix = unique_table("periodic_st") + "_"
    yield ["--backend", "postgres", "--target", dsn, "--prefix", prefix]
    for table in ("jobs", "runs", "peers"):
        with contextlib.suppress(Exception):
            drop_table(dsn, prefix + table)


@contextlib.contextmanager
def processes(n: int, args: list[str], tmp_path: Path) -> Iterator[list[Process]]:
    started = [Process(args, tmp_path / f"worker-{i}.jsonl") for i in range(n)]
    try:
        deadline = time.monotonic() + 20
        while not all(p.of("ready") for p in started):
            failed = [p for p in started if p.popen.poll() is not None]
            assert not failed, failed[0].err.read_text()[-2000:]
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        yield started
    finally:
        for p in started:
            p.stop()
        for p in started:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()


def slots_run(started: list[Process]) -> list[datetime.datetime]:
    return [datetime.datetime.fromisoformat(line["slot"]) for p in started for line in p.of("run")]


def assert_each_slot_once(runs: list[datetime.datetime], at_least: int) -> None:
    twice = [slot for slot, n in Counter(runs).items() if n > 1]
    assert not twice, f"slots run twice: {twice}"
    ordered = sorted(runs)
    assert len(ordered) >= at_least, ordered
    gaps = {b - a for a, b in itertools.pairwise(ordered)}
    assert gaps == {datetime.timedelta(seconds=EVERY)}, sorted(gaps)


@pytest.mark.parametrize("peer", ["none", "local"])
def test_three_processes_run_every_slot_exactly_once(
    target: list[str], peer: str, tmp_path: Path
) -> None:
    with processes(3, [*target, "--peer", peer, "--every", str(EVERY)], tmp_path) as started:
        time.sleep(5)
    runs = slots_run(started)
    assert_each_slot_once(runs, at_least=20)
    # Every process took part: each won some slots and was refused others.
    assert all(p.of("run") for p in started)
    refused = [s for p in started for s in p.of("skip") if s["reason"] == "claimed"]
    assert len(refused) >= len(runs)


def test_killed_leaders_never_make_a_slot_run_twice(target: list[str], tmp_path: Path) -> None:
    args = [*target, "--peer", "lease", "--ttl", "1.0", "--every", str(EVERY)]
    kills = 0
    with processes(3, args, tmp_path) as started:
        live = list(started)
        end = time.monotonic() + 6
        while time.monotonic() < end:
            time.sleep(1.2)
            # Kill whichever process ran the latest slot (the leader), and start another.
            latest = max(
                (p for p in live if p.of("run")),
                key=lambda p: p.of("run")[-1]["t"],
                default=None,
            )
            if latest is None:
                continue
            os.kill(latest.popen.pid, signal.SIGKILL)
            latest.popen.wait()
            live.remove(latest)
            kills += 1
            fresh = Process(args, tmp_path / f"worker-{len(started)}.jsonl")
            started.append(fresh)
            live.append(fresh)
        time.sleep(2.5)  # the last leader's successor takes over, and catches up
    assert kills >= 3
    runs = slots_run(started)
    twice = [slot for slot, n in Counter(runs).items() if n > 1]
    assert not twice, f"slots run twice: {twice}"
    assert len(runs) >= 10
    # Each successor caught up (catch_up="latest"): it reported the slots the cluster
    # missed while nobody led (and ran the latest of them at once).
    missed = [s for p in started for s in p.of("skip") if s["reason"] == "missed"]
    assert len(missed) >= kills - 1, missed


def trigger_from_outside(target: list[str]) -> float:
    """``store.trigger("shared")`` from this process, as ``periodic trigger`` would;
    the wall time it was committed."""
    import trio

    args = dict(zip(target[::2], target[1::2], strict=True))

    async def main() -> float:
        store: Any
        if args["--backend"] == "sqlite":
            from periodic.stores.sqlite import SQLiteStore

            store = SQLiteStore(args["--target"])
        else:
            from periodic.stores.postgres import PostgresStore

            store = PostgresStore(args["--target"], table_prefix=args["--prefix"])
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)
            await store.trigger("shared")
            done = time.time()
            nursery.cancel_scope.cancel()
        return done

    return trio.run(main)


def test_a_trigger_from_outside_runs_once_within_a_second(
    target: list[str], tmp_path: Path
) -> None:
    # An hourly job: nothing runs but what is triggered.
    args = [*target, "--peer", "none", "--every", "3600"]
    with processes(3, args, tmp_path) as started:
        asked = []
        for _ in range(3):
            asked.append(trigger_from_outside(target))
            deadline = time.monotonic() + 5
            while len(slots_run(started)) < len(asked) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)  # (time for a second run, if there were one)
    runs = sorted(line["t"] for p in started for line in p.of("run"))
    assert len(runs) == len(asked)  # each trigger ran once, on one process
    late = [round(ran - at, 3) for ran, at in zip(runs, asked, strict=True)]
    assert all(0 <= lateness < 1.0 for lateness in late), late
