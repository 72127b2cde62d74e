"""Processes that claim slots of one job in a tight loop, to be SIGKILLed by the tests.

Run as a script, it is a *zygote*: it imports the store's backend once, then forks a
claimer for each ``spawn NODE`` line it reads on stdin (a fork takes milliseconds where
a fresh interpreter takes half a second of CPU, so a test can kill and replace twenty
claimers in a few seconds). It ends at the end of its stdin, and each claimer ends
when it finds its zygote gone. Everything is reported on stdout, one JSON object a
line, each written with a single ``write`` (so a SIGKILL never leaves half a line
behind another):

* ``ready`` (``node``, ``pid``) once a claimer serves its store;
* ``claimed`` (``node``, ``slot``, ``key``) when a claim succeeded, ``slot`` in seconds
  after :data:`T0`; ``finished`` (``node``, ``key``) once its end is recorded;
* ``alive`` (``node``, ``calls``) every 0.1 s, ``calls`` counting the claims tried;
* ``error`` (``node``, ``error``) when a call failed (the claimer goes on).

A claimer reads the job's latest slot and claims the next second, again and again:
claimers race for every slot, and the slots claimed follow each other without a gap.

Imported, it offers the tests' side: :class:`Zygote` starts and kills claimers, and
:func:`check` judges what the database holds after the kills.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 1, 1, tzinfo=UTC)
JOB = "race"
SECOND = datetime.timedelta(seconds=1)


def say(kind: str, **fields: Any) -> None:
    line = json.dumps({"e": kind, "t": time.time(), **fields}) + "\n"
    os.write(sys.stdout.fileno(), line.encode())


# -- the worker side --------------------------------------------------------------------------


def make_store(args: argparse.Namespace) -> Any:
    options = {"table_prefix": args.prefix, "history": args.history, "call_timeout": 5.0}
    if args.backend == "sqlite":
        from periodic.stores.sqlite import SQLiteStore

        return SQLiteStore(args.target, **options)
    from periodic.stores.postgres import PostgresStore

    return PostgresStore(args.target, **options)


async def claim_forever(args: argparse.Namespace, node: str, zygote: int) -> None:
    store = make_store(args)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        say("ready", node=node, pid=os.getpid())
        calls = 0

        async def report() -> None:
            while True:
                say("alive", node=node, calls=calls)
                await trio.sleep(0.1)

        nursery.start_soon(report)
        while os.getppid() == zygote:
            calls += 1
            try:
                state = await store.job(JOB)
                latest = T0 if state is None or state.last_slot is None else state.last_slot
                slot = latest + SECOND
                now = datetime.datetime.now(UTC)
                key = await store.claim(JOB, slot=slot, node=node, fence=None, started_at=now)
                if key is None:
                    continue
                say("claimed", node=node, slot=(slot - T0) // SECOND, key=key)
                await store.finish(
                    JOB,
                    key,
                    outcome="ok",
                    finished_at=datetime.datetime.now(UTC),
                    duration=0.0,
                    error=None,
                )
                say("finished", node=node, key=key)
            except Exception as exc:
                say("error", node=node, error=repr(exc))
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def zygote(args: argparse.Namespace) -> None:
    make_store(args)  # import the backend's driver before any fork
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # claimers are reaped by the kernel
    me = os.getpid()
    say("zygote", pid=me)
    for raw in sys.stdin.buffer:
        command, _, node = raw.decode().strip().partition(" ")
        if command != "spawn":
            continue
        if os.fork() == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                trio.run(claim_forever, args, node, me)
            finally:
                os._exit(0)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--target", required=True, help="SQLite path or PostgreSQL DSN")
    parser.add_argument("--prefix", default="periodic_")
    parser.add_argument("--history", type=int, default=30)
    return parser.parse_args(argv)


# -- the tests' side --------------------------------------------------------------------------


@attrs.define(eq=False)
class Zygote:
    """A zygote process and its claimers, as the tests drive them."""

    process: trio.Process
    lines: list[dict[str, Any]] = attrs.Factory(list)
    pids: dict[str, int] = attrs.Factory(dict)
    killed: list[tuple[float, str]] = attrs.Factory(list)
    #: The claimers still running when :meth:`close` killed them all.
    survivors: list[str] = attrs.Factory(list)
    _news: trio.Event = attrs.Factory(trio.Event)

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, log: Path, backend: str, target: str, prefix: str, history: int
    ) -> Zygote:
        command = [
            sys.executable,
            __file__,
            f"--backend={backend}",
            f"--target={target}",
            f"--prefix={prefix}",
            f"--history={history}",
        ]
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        made = cls(process)
        nursery.start_soon(made._read)
        await made.wait_for(lambda: made.of("zygote"), 20, "the zygote")
        return made

    async def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        pending = b""
        async for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(json.loads(raw) for raw in complete)
            self._news.set()
            self._news = trio.Event()

    def of(self, kind: str, node: str | None = None) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines
            if line["e"] == kind and (node is None or line.get("node") == node)
        ]

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        with trio.move_on_after(timeout):
            while not (result := predicate()):
                await self._news.wait()
            return result
        raise AssertionError(f"waited {timeout} s for {what}; last lines {self.lines[-5:]}")

    async def spawn(self, node: str) -> None:
        """Start a claimer and wait until it serves its store."""
        stdin = self.process.stdin
        assert stdin is not None
        await stdin.send_all(f"spawn {node}\n".encode())
        [ready] = await self.wait_for(lambda: self.of("ready", node), 10, f"{node} to be ready")
        self.pids[node] = ready["pid"]

    def kill(self, node: str) -> None:
        self.killed.append((time.time(), node))
        os.kill(self.pids.pop(node), signal.SIGKILL)

    async def close(self) -> None:
        """Kill every claimer, then end the zygote."""
        self.survivors = sorted(self.pids)
        for node in self.survivors:
            self.kill(node)
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(10):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()


async def chaos(zygote: Zygote, *, claimers: int, kills: int, rng: random.Random) -> float:
    """Keep ``claimers`` running; SIGKILL one at a random instant, ``kills`` times,
    replacing each; then let the survivors run on. Returns when the last kill was."""
    for i in range(claimers):
        await zygote.spawn(f"c{i}.0")
    await trio.sleep(0.3)
    for generation in range(1, kills + 1):
        await trio.sleep(rng.uniform(0.05, 0.25))
        victim = rng.choice(sorted(zygote.pids))
        zygote.kill(victim)
        await zygote.spawn(f"{victim.split('.')[0]}.{generation}")
    last_kill = zygote.killed[-1][0]
    await trio.sleep(0.7)
    return last_kill


def check(
    zygote: Zygote,
    rows: list[tuple[Any, ...]],
    job: tuple[Any, ...],
    *,
    history: int,
    last_kill: float,
) -> dict[str, Any]:
    """Judge the database after the kills.

    Args:
        rows: The job's runs, as ``(id, slot, node, finished, outcome, duration)`` with
            ``slot`` in seconds after :data:`T0` and ``finished`` true when
            ``finished_at`` is set, by id.
        job: ``(last_slot, last_node)`` of the job, ``last_slot`` in seconds.

    Returns:
        Numbers for the report.
    """
    claimed = zygote.of("claimed")
    finished = {line["key"] for line in zygote.of("finished")}
    ids = [row[0] for row in rows]
    slots = [row[1] for row in rows]
    assert ids == sorted(set(ids))
    # The slots claimed follow each other without a gap, each claimed once: the runs
    # kept are the latest `history` of them, the job's latest slot last.
    last_slot, last_node = job
    assert len(rows) == min(history, last_slot), (len(rows), last_slot)
    assert slots == list(range(last_slot - len(rows) + 1, last_slot + 1)), slots
    assert rows[-1][2] == last_node
    # No torn row: a run's end is all there or not at all.
    for row in rows:
        _, _, node, ended, outcome, duration = row
        assert node
        assert (ended, outcome, duration) in ((True, "ok", 0.0), (False, None, None)), row
    # What the claimers were told matches the rows: no slot was claimed twice, and a
    # claim reported is in the database (unless pruned), as reported.
    reported = [line["slot"] for line in claimed]
    assert len(reported) == len(set(reported)), "a slot was claimed twice"
    by_id = {row[0]: row for row in rows}
    for line in claimed:
        row = by_id.get(line["key"])
        if row is None:
            assert line["key"] < ids[0], line  # pruned
            continue
        assert (row[1], row[2]) == (line["slot"], line["node"]), (row, line)
        if line["key"] in finished:
            assert row[3], row
    # A claim is lost from the reports only when its process was killed right after it.
    unreported = last_slot - len(reported)
    assert 0 <= unreported <= len(zygote.killed), (unreported, len(zygote.killed))
    # The claimers alive at the end kept working after the last kill, and claimed.
    after = [line for line in claimed if line["t"] > last_kill]
    assert after, "nothing was claimed after the last kill"
    assert zygote.survivors
    for node in zygote.survivors:
        calls = [line["calls"] for line in zygote.of("alive", node) if line["t"] > last_kill]
        assert calls, node
        assert calls[-1] > calls[0], (node, calls)
    return {
        "sigkills": len(zygote.killed),  # the last claimers' included
        "slots_claimed": last_slot,
        "claims_after_last_kill": len(after),
        "unreported_claims": unreported,
        "errors": len(zygote.of("error")),
    }


if __name__ == "__main__":
    zygote(parse(sys.argv[1:]))
