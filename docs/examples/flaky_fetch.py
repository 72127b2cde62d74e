"""Retrying a flaky HTTP call within its tick: three tries, 2 s then 4 s apart."""

import logging

import trio

from periodic import Periodic, Retry, current_run


class Unavailable(Exception):
    """What the (pretend) HTTP client raises on a 503."""


responses = iter([Unavailable("503"), Unavailable("503"), {"eur_usd": 1.08}])


async def fetch_rates() -> dict[str, float]:
    run = current_run()
    print(f"run {run.run_id}, try {run.attempt}")
    await trio.sleep(0.1)  # the request
    response = next(responses)
    if isinstance(response, Exception):
        raise response
    return response


rates = Periodic(
    run=fetch_rates,
    every=60,
    timeout=10,  # for each try
    retry=Retry(attempts=3, delay=2, backoff=2),
    name="fetch-rates",
)


async def main(seconds: float = 70) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(rates.serve)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    trio.run(main)
