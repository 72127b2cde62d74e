"""One member of a test cluster, run as its own OS process by ``test_peers_cluster.py``.

It serves a :class:`SQLitePeer` or :class:`PostgresPeer` and reports on stdout, one JSON
object a line (each written with a single ``write``, so a SIGKILL never leaves half a
line behind another): ``ready`` once served, ``change`` for each of its peer's
:class:`LeadershipChanged` events, ``status`` now and then, and with ``--job-every`` the
``run`` records of a leader-guarded :class:`Periodic` job. ``t``, ``start`` and ``end``
are wall-clock ``time.time()``. SIGTERM or SIGINT stops it gracefully (``bye``).

A run record is ``confirmed`` when, after its ``end`` was read, the peer still led under
the fence the run started with: then the whole run lay inside that leadership's lease.
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
from periodic.events import Event, Finished, LeadershipChanged, Outcome
from periodic.peers import Peer


def say(kind: str, **fields: Any) -> None:
    line = json.dumps({"e": kind, "t": time.time(), **fields}) + "\n"
    os.write(sys.stdout.fileno(), line.encode())


def make_peer(args: argparse.Namespace) -> Peer:
    options: dict[str, Any] = {"name": args.name, "ttl": args.ttl, "node": args.node}
    if args.table:
        options["table"] = args.table
    if args.quorum != 1:
        options["quorum"] = args.quorum
    if args.backend == "sqlite":
        from periodic.peers.sqlite import SQLitePeer

        return SQLitePeer(args.target, **options)
    from periodic.peers.postgres import PostgresPeer

    return PostgresPeer(args.target, **options)


def status(peer: Peer) -> None:
    say("status", leading=peer.is_leader(), fence=peer.fence, leader=peer.leader())


def make_job(peer: Peer, every: float, work: float) -> Periodic:
    async def guarded() -> None:
        fence = current_run().fence
        start = time.time()
        await trio.sleep(work)
        end = time.time()
        # Read after `end`, with no checkpoint in between: if the peer still leads under
        # the run's fence now, it led without a break since the tick, so [start, end]
        # lies inside one lease.
        confirmed = peer.is_leader() and peer.fence == fence
        say("run", fence=fence, start=start, end=end, confirmed=confirmed)

    return Periodic(run=guarded, every=every, initial_delay=0, peer=peer, on_overlap="ignore")


async def main(args: argparse.Namespace) -> None:
    peer = make_peer(args)

    def on_event(event: Event) -> None:
        if isinstance(event, LeadershipChanged) and event.node == peer.node:
            say(
                "change",
                gained=event.gained,
                fence=event.fence,
                leader=event.leader,
                reason=event.reason,
            )
        elif isinstance(event, Finished) and event.outcome is not Outcome.OK:
            say("finished", outcome=str(event.outcome), cancel_reason=str(event.cancel_reason))

    with (
        periodic.subscribe(on_event),
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.serve)
            if args.job_every:
                await nursery.start(make_job(peer, args.job_every, args.job_work).serve)
            say("ready", node=peer.node, pid=os.getpid())

            async def report() -> None:
                while True:
                    status(peer)
                    with trio.move_on_after(args.status_every):
                        await peer.wait_change()

            nursery.start_soon(report)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    status(peer)
    say("bye")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--target", required=True, help="SQLite path or PostgreSQL DSN")
    parser.add_argument("--table", default="")
    parser.add_argument("--name", default="cluster")
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--quorum", type=int, default=1)
    parser.add_argument("--status-every", type=float, default=0.25)
    parser.add_argument("--job-every", type=float, default=0.0)
    parser.add_argument("--job-work", type=float, default=0.05)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(created).3f %(levelname)s %(message)s"
    )
    trio.run(main, parse(sys.argv[1:]))
