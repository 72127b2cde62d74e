import logging

import trio

from periodic import Periodic


async def cleanup() -> None:
    print("cleaning up")


async def main() -> None:
    job = Periodic(run=cleanup, every=3600)  # every hour, the first an hour from now
    async with trio.open_nursery() as nursery:
        await nursery.start(job.serve)  # returns once the scheduler is armed


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # see each run, and any run that fails
    trio.run(main)
