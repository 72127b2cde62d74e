"""A periodic job you can watch: it prints each tick, then the demo stops by itself.

Run it with ``python docs/examples/demo.py`` (add ``--ticks N`` for more or fewer ticks).
The ``periodic`` logger's records go to stderr, the job's own lines to stdout.
"""

from __future__ import annotations

import argparse
import logging

import trio

import periodic
from periodic import Periodic


async def main(ticks: int) -> None:
    """Serve a job every 0.5 s until it has run ``ticks`` times, then shut down."""
    start = trio.current_time()
    enough = trio.Event()

    async def tick() -> None:
        run = periodic.current_run()
        elapsed = trio.current_time() - start
        print(f"tick {run.run_id} at {elapsed:.3f}s", flush=True)
        if run.run_id >= ticks:
            enough.set()

    job = Periodic(run=tick, every=0.5, name="demo")
    async with trio.open_nursery() as nursery:
        await nursery.start(job.serve)
        await enough.wait()
        nursery.cancel_scope.cancel()  # shuts the scheduler down; serve returns


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ticks", type=_positive_int, default=6, help="how many ticks to run (default: 6)"
    )
    args = parser.parse_args()
    trio.run(main, args.ticks)
