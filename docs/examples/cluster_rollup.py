"""A rollup that runs on one process of many, and fences its write.

The example of the "Running one instance in a cluster" page. Every process of the
application runs this same code against the same SQLite file; one of them leads and runs
the job. The job writes with its fence, so a run that outlived its leadership (a process
paused for longer than the lease) cannot overwrite the work of the leader after it.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from contextlib import closing

import trio

from periodic import Periodic, current_run
from periodic.peers import Peer
from periodic.peers.sqlite import SQLitePeer


class StaleFence(Exception):
    """A newer leader has written the rollup since this run started."""


def create_tables(path: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (amount INTEGER NOT NULL)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS rollup "
            "(id INTEGER PRIMARY KEY, total INTEGER NOT NULL, fence INTEGER NOT NULL)"
        )
        conn.execute("INSERT OR IGNORE INTO rollup VALUES (1, 0, 0)")


def save_rollup(path: str, fence: int) -> int:
    """Sum the orders into the rollup row, unless a newer fence has written it."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        (total,) = conn.execute("SELECT coalesce(sum(amount), 0) FROM orders").fetchone()
        changed = conn.execute(
            "UPDATE rollup SET total = ?, fence = ? WHERE id = 1 AND fence <= ?",
            (total, fence, fence),
        ).rowcount
    if changed == 0:
        raise StaleFence(f"fence {fence} is older than the rollup's")
    return int(total)


def rollup_job(peer: Peer, path: str, *, every: float = 3600.0) -> Periodic:
    async def rollup() -> int:
        fence = current_run().fence  # never None: a run starts only while the peer leads
        assert fence is not None
        return await trio.to_thread.run_sync(save_rollup, path, fence)

    return Periodic(run=rollup, every=every, peer=peer)


async def main(path: str, *, ttl: float = 30.0, every: float = 3600.0) -> None:
    create_tables(path)
    peer = SQLitePeer(path, name="rollup", ttl=ttl)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)  # one peer can guard many jobs
        await nursery.start(rollup_job(peer, path, every=every).serve)


if __name__ == "__main__":
    # Each process logs when it becomes leader, which process it follows, and its runs.
    logging.basicConfig(level=logging.INFO)
    trio.run(main, sys.argv[1])  # the same absolute path in every process
