"""Testing cleanup_app's job, as the application's own test suite would."""

from __future__ import annotations

import attrs
import pytest
import trio
from cleanup_app import SessionStore, cleanup_job

from periodic.exceptions import JobNotStarted
from periodic.testing import serve_for, sync_tick


async def test_cleanup_deletes_expired_sessions(periodic_manual, autojump_clock):
    store = SessionStore()
    store.sessions = {"old": 10.0, "fresh": 1e9}
    await trio.sleep(20)
    # A manual-mode copy of the production job, with the midnight guard taken out.
    job = await periodic_manual(cleanup_job(store), when=None)

    finished = await sync_tick(job)

    assert finished.outcome == "ok"
    assert finished.result == 1
    assert list(store.sessions) == ["fresh"]


async def test_nothing_runs_when_it_is_not_midnight(periodic_manual, periodic_events):
    job = await periodic_manual(cleanup_job(SessionStore()), when=lambda: False)

    with pytest.raises(JobNotStarted) as info:
        await sync_tick(job)

    assert info.value.reason == "guard"
    periodic_events.assert_not_emitted("started")


async def test_an_hour_of_the_one_minute_job(autojump_clock):
    store = SessionStore()
    # Auto mode, in virtual time: the same job without its guard.
    job = attrs.evolve(cleanup_job(store), when=None)

    events = await serve_for(job, 3600 + 30)

    assert [e.started_at for e in events.of("started")] == [60.0 * k for k in range(1, 61)]
    assert all(e.outcome == "ok" for e in events.of("finished"))
    assert len(events.of("finished")) == 60
