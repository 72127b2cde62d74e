"""One process of a test cluster that shares a job through a store, run by
``test_stores_cluster.py``.

It serves a :class:`SQLiteStore` or :class:`PostgresStore` and an interval job on it
(``--every``), with no peer, with a :class:`LocalPeer` that always leads (every process
believes it leads: a split brain), or with a real lease peer on the same database. It
reports on stdout, one JSON object a line written with a single ``write`` (a SIGKILL never
leaves half a line): ``ready`` once served, ``run`` for each run (its slot, its fence, its
wall-clock start), ``skip`` for each skipped tick. SIGTERM stops it gracefully (``bye``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import trio

import periodic
from periodic import Periodic, current_run
from periodic.events import Event, Skipped
from periodic.peers import LocalPeer, Peer
from periodic.stores import Store


def say(kind: str, **fields: Any) -> None:
    line = json.dumps({"e": kind, "t": time.time(), "pid": os.getpid(), **fields}) + "\n"
    os.write(sys.stdout.fileno(), line.encode())


def make_store(args: argparse.Namespace) -> Store:
    options: dict[str, Any] = {"table_prefix": args.prefix, "call_timeout": 2.0}
    if args.backend == "sqlite":
        from periodic.stores.sqlite import SQLiteStore

        return SQLiteStore(args.target, **options)
    from periodic.stores.postgres import PostgresStore

    return PostgresStore(args.target, **options)


def make_peer(args: argparse.Namespace) -> Peer | None:
    if args.peer == "none":
        return None
    if args.peer == "local":
        return LocalPeer(node=f"node-{os.getpid()}")
    options: dict[str, Any] = {"name": args.prefix, "ttl": args.ttl, "node": f"node-{os.getpid()}"}
    if args.backend == "sqlite":
        from periodic.peers.sqlite import SQLitePeer

        return SQLitePeer(args.target + ".peers", **options)
    from periodic.peers.postgres import PostgresPeer

    return PostgresPeer(args.target, table=args.prefix + "peers", **options)


async def main(args: argparse.Namespace) -> None:
    store = make_store(args)
    peer = make_peer(args)

    async def work() -> None:
        info = current_run()
        assert info.fire_time is not None
        say("run", slot=info.fire_time.isoformat(), fence=info.fence)
        await trio.sleep(args.work)

    job = Periodic(
        run=work,
        every=args.every,
        name="shared",
        store=store,
        peer=peer,
        catch_up=args.catch_up,
        catch_up_window=args.window or None,
    )

    def on_event(event: Event) -> None:
        if isinstance(event, Skipped):
            say("skip", reason=str(event.reason), count=event.count)

    with (
        periodic.subscribe(on_event, job=job),
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)
            if peer is not None:
                await nursery.start(peer.serve)
            await nursery.start(job.serve)
            say("ready")
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    say("bye")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--target", required=True, help="SQLite path or PostgreSQL DSN")
    parser.add_argument("--prefix", default="periodic_")
    parser.add_argument("--peer", choices=["none", "local", "lease"], default="none")
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--work", type=float, default=0.02)
    parser.add_argument("--catch-up", default="latest")
    parser.add_argument("--window", type=float, default=0.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(created).3f %(levelname)s %(message)s"
    )
    trio.run(main, parse(sys.argv[1:]))
