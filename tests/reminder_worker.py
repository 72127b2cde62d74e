"""A process that serves the reminders of one name, to be SIGKILLed by the tests.

Each delivery is reported on stdout as one JSON line written with a single ``write``:
``begin`` (``key``, ``fence``, ``attempt``) when the handler starts, ``done`` when it is
about to return (after ``--hold`` seconds); ``ready`` once serving.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

from periodic.reminders import Reminder, Reminders


def say(kind: str, **fields: Any) -> None:
    line = json.dumps({"e": kind, "t": time.time(), "pid": os.getpid(), **fields}) + "\n"
    os.write(sys.stdout.fileno(), line.encode())


def make_store(backend: str, target: str, prefix: str) -> Any:
    if backend == "sqlite":
        from periodic.stores.sqlite import SQLiteStore

        return SQLiteStore(target, table_prefix=prefix)
    from periodic.stores.postgres import PostgresStore

    return PostgresStore(target, table_prefix=prefix)


async def main(args: argparse.Namespace) -> None:
    store = make_store(args.backend, args.target, args.prefix)

    async def handler(r: Reminder) -> None:
        say("begin", key=r.key, fence=r.fence, attempt=r.attempt)
        await trio.sleep(args.hold)
        say("done", key=r.key, fence=r.fence, attempt=r.attempt)

    reminders = Reminders(store, handler, name="race", claim_ttl=args.claim_ttl)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        await nursery.start(reminders.serve)
        say("ready")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--prefix", default="periodic_")
    parser.add_argument("--hold", type=float, default=0.3)
    parser.add_argument("--claim-ttl", type=float, default=2.0)
    trio.run(main, parser.parse_args())
