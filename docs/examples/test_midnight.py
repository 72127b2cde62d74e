"""Both midnight cleanups run once a day at 00:00 — tested in virtual time."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
from midnight import with_cron, with_guard

from periodic.testing import serve_for

pytest.importorskip("cronsim")
START = dt.datetime(2026, 11, 23, 22, 30, 30, tzinfo=dt.timezone.utc)


def fake_wall() -> dt.datetime:
    """The wall clock, following Trio's virtual clock from START."""
    return START + dt.timedelta(seconds=trio.current_time())


@pytest.mark.parametrize("make", [with_guard, with_cron])
async def test_one_run_per_night(autojump_clock, make):
    events = await serve_for(make(fake_wall), 2 * 86400)

    days = [fake_wall_at(e.started_at) for e in events.of("started")]
    assert [(d.day, d.hour, d.minute) for d in days] == [(24, 0, 0), (25, 0, 0)]


def fake_wall_at(virtual: float) -> dt.datetime:
    return (START + dt.timedelta(seconds=virtual)).replace(second=0, microsecond=0)
