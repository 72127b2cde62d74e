"""The pytest plugin is registered by the package's entry point and its fixtures work."""

from __future__ import annotations

import pytest

TEST_FILE = """
import functools

import pytest
import trio

from periodic import Periodic
from periodic.exceptions import JobNotStarted
from periodic.testing import sync_tick, tick

done = []


async def job(x):
    await trio.sleep(1)
    done.append(x)
    return x


PROD = Periodic(run=functools.partial(job, 42), every=3600, when=lambda: False)


async def test_manual_fixture_serves_a_manual_copy(periodic_manual, autojump_clock):
    served = await periodic_manual(PROD, when=None)
    assert served.mode == "manual"
    assert PROD.mode == "auto"
    finished = await sync_tick(served)
    assert (finished.outcome, finished.result) == ("ok", 42)
    assert trio.current_time() == 1.0


async def test_guard_kept_when_not_changed(periodic_manual, periodic_events):
    served = await periodic_manual(PROD)
    with pytest.raises(JobNotStarted):
        await sync_tick(served)
    periodic_events.assert_emitted("skipped", reason="guard")


async def test_events_fixture_sees_every_event(periodic_manual, periodic_events):
    served = await periodic_manual(PROD, when=None)
    await tick(served)
    await periodic_events.wait_for("finished", run_id=1)
    assert [type(e).__name__ for e in periodic_events] == ["Started", "Finished"]


async def test_a_run_going_on_at_the_end_is_torn_down(periodic_manual, autojump_clock):
    served = await periodic_manual(PROD, when=None, job_shutdown=0)
    await tick(served)
    await trio.sleep(0.5)
"""


def test_fixtures_come_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    pytester.makepyfile(test_app=TEST_FILE)
    # A subprocess loads plugins the way a user's pytest does: from entry points.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)


def test_the_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*periodic_events*", "*periodic_manual*"])
