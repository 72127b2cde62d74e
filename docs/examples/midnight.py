"""Parent's midnight cleanup, done both ways: a when-guard, and a cron spec."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import trio

from periodic import Periodic

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def cleanup() -> None:
    """Delete yesterday's temporary files, say."""


def with_guard(now: Clock = utc_now) -> Periodic:
    """Parent's way: tick every minute, run only when it is midnight."""

    def is_midnight() -> bool:
        t = now()
        return (t.hour, t.minute) == (0, 0)

    return Periodic(run=cleanup, every=60, when=is_midnight, name="cleanup")


def with_cron(now: Clock = utc_now) -> Periodic:
    """periodic's way: one run at midnight, on the wall clock, whatever the drift."""
    return Periodic(run=cleanup, cron="@midnight", tz="UTC", wall_clock=now, name="cleanup")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(with_cron().serve)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # see each run, and any run that fails
    trio.run(main)
