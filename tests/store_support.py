"""What the virtual-time tests of jobs with a store share: a wall clock that follows Trio's."""

from __future__ import annotations

import datetime

import trio

UTC = datetime.timezone.utc
#: The wall time at Trio time 0.
T0 = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


class Wall:
    """A wall clock that follows Trio's clock, plus a shift (a process that was down)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=trio.current_time() + self.shift)
