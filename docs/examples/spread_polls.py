"""500 workers poll one queue every 10 s, spread over the first 5 s of each period."""

import logging

import trio

from periodic import Periodic

polls: list[tuple[int, float]] = []


def make_worker(number: int) -> Periodic:
    async def poll() -> None:
        polls.append((number, trio.current_time()))  # stands for: ask the queue for work

    return Periodic(run=poll, every=10, jitter=5, name=f"poller-{number}")


async def main(seconds: float = 25) -> None:
    workers = [make_worker(n) for n in range(500)]
    async with trio.open_nursery() as nursery:
        for worker in workers:
            await nursery.start(worker.serve)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    trio.run(main)
