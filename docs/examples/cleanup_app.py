"""An application module with a periodic job: auto in production, manual under test."""

from __future__ import annotations

import datetime
import logging

import trio

from periodic import Periodic


class SessionStore:
    """Stands in for the application's database."""

    def __init__(self) -> None:
        self.sessions: dict[str, float] = {}  # session id -> expiry (trio.current_time())

    def delete_expired(self, now: float) -> int:
        expired = [sid for sid, expiry in self.sessions.items() if expiry <= now]
        for sid in expired:
            del self.sessions[sid]
        return len(expired)


def is_midnight() -> bool:
    """Run only in the first minute of the day (local wall-clock time)."""
    now = datetime.datetime.now()
    return now.hour == 0 and now.minute == 0


def cleanup_job(store: SessionStore, *, mode: str = "auto") -> Periodic:
    """The job as production builds it: checked every minute, runs at midnight."""

    async def cleanup() -> int:
        return store.delete_expired(trio.current_time())

    return Periodic(run=cleanup, every=60, when=is_midnight, name="cleanup", mode=mode)


async def main() -> None:
    """Production: serve the job until the program is stopped."""
    async with trio.open_nursery() as nursery:
        await nursery.start(cleanup_job(SessionStore()).serve)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # see each run, and any run that fails
    trio.run(main)
