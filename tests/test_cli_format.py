"""What the ``periodic`` command writes, at a fixed moment: spans of time, times, the
next slot of each kind of schedule, the blocks of ``status`` (paused, overdue, triggered
jobs and elections included), the problems ``check`` reports, the table of ``history``.
The subprocess tests (test_cli.py) check the same against real stores."""

from __future__ import annotations

import datetime
import sys

import attrs
import pytest

from periodic._cli.history import history_json, render_history
from periodic._cli.status import JobStatus, next_slot, problems, render_status, status_json
from periodic._cli.target import ElectionView
from periodic._cli.text import iso, relative, span, when
from periodic.stores import RunRecord

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.999, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (185, "3m05s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7500, "2h05m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (3 * 86400 + 4 * 3600 + 59, "3d04h"),
        (-5, "0s"),
    ],
)
def test_a_span_has_two_units_at_most(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_times() -> None:
    assert relative(ago(185), NOW) == "3m05s ago"
    assert relative(ago(-41.5), NOW) == "in 41s"
    assert relative(NOW, NOW) == "0s ago"
    assert when(NOW) == "2026-05-01 12:00:00Z"
    berlin = datetime.timezone(datetime.timedelta(hours=2))
    assert when(datetime.datetime(2026, 5, 1, 14, 0, 0, 250_999, tzinfo=berlin)) == (
        "2026-05-01 12:00:00.250Z"
    )
    assert iso(datetime.datetime(2026, 5, 1, 14, 0, 0, 250_999, tzinfo=berlin)) == (
        "2026-05-01T12:00:00.250999+00:00"
    )
    assert iso(None) is None


# -- the next slot ---------------------------------------------------------------------------

ANCHOR = datetime.datetime(2026, 4, 1, 0, 0, 0, 500_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "last", "expected"),
    [
        # The store's grid: anchor + k * every, the first after now.
        ("every 60s", None, datetime.datetime(2026, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
        ("every 0.25s", None, datetime.datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)),
        # ... and after the last slot claimed, if a node's clock ran ahead of this one.
        (
            "every 60s",
            datetime.datetime(2026, 5, 1, 12, 5, 0, 500_000, tzinfo=UTC),
            datetime.datetime(2026, 5, 1, 12, 6, 0, 500_000, tzinfo=UTC),
        ),
        ("every 86400s", None, datetime.datetime(2026, 5, 2, 0, 0, 0, 500_000, tzinfo=UTC)),
        # On the zone's wall clock: 02:00 in Berlin (CEST) is 00:00 UTC.
        ("cron 0 2 * * * Europe/Berlin", None, datetime.datetime(2026, 5, 2, 0, 0, tzinfo=UTC)),
        ("cron */15 * * * * UTC", None, datetime.datetime(2026, 5, 1, 12, 15, tzinfo=UTC)),
        ("cron 30 0 9 * * * UTC", None, datetime.datetime(2026, 5, 2, 9, 0, 30, tzinfo=UTC)),
        # "@every 1h" is an interval on the store's grid.
        (
            "cron @every 1h UTC",
            None,
            datetime.datetime(2026, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC),
        ),
        # What cannot be known here.
        ("every 60s shifted", None, None),
        ("cron 0 2 * * * Mars/Olympus", None, None),
        ("cron nonsense UTC", None, None),
        ("every never", None, None),
        ("every 0s", None, None),
        ("whenever", None, None),
    ],
)
def test_the_next_slot(
    schedule: str, last: datetime.datetime | None, expected: datetime.datetime | None
) -> None:
    now = datetime.datetime(2026, 5, 1, 12, 0, 0, 100_000, tzinfo=UTC)
    assert next_slot(schedule, ANCHOR, last, now) == expected


def test_the_next_slot_of_a_cron_job_without_cronsim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)  # import cronsim raises ImportError
    assert next_slot("cron 0 2 * * * UTC", ANCHOR, None, NOW) is None
    assert next_slot("cron @every 1h UTC", ANCHOR, None, NOW) is not None


# -- status ----------------------------------------------------------------------------------


def job(name: str, schedule: str = "every 60s", **fields: object) -> JobStatus:
    values: dict[str, object] = {
        "name": name,
        "schedule": schedule,
        "anchor": ANCHOR,
        "last_slot": None,
        "last_outcome": None,
        "last_node": None,
        "last_fence": None,
        "last_started_at": None,
        "last_finished_at": None,
        "consecutive_failures": 0,
        "next_slot": None,
        **fields,
    }
    return JobStatus(**values)  # type: ignore[arg-type]


JOBS = [
    job(
        "cleanup",
        last_slot=ago(120),
        last_outcome="ok",
        last_node="web-1:4242:a1b2c3",
        last_fence=7,
        last_started_at=ago(120),
        last_finished_at=ago(118.5),
        last_ok_at=ago(118.5),
        next_slot=ago(-60),
    ),
    job(
        "nightly",
        "cron 0 2 * * * Europe/Berlin",
        last_slot=ago(12 * 3600),
        last_outcome="error",
        last_node="web-2:77:ffeedd",
        last_started_at=ago(12 * 3600),
        last_finished_at=ago(12 * 3600 - 3),
        consecutive_failures=3,
        next_slot=ago(-12 * 3600),
        paused=True,
        paused_at=ago(3 * 3600 + 180),
        pause_note="disk full on db-2",
        registered_at=ago(40 * 86400),
    ),
    job(
        "report",
        "every 3600s",
        last_slot=ago(5 * 3600),
        last_outcome="ok",
        last_node="web-1:4242:a1b2c3",
        last_fence=6,
        last_started_at=ago(5 * 3600),
        last_finished_at=ago(5 * 3600 - 30),
        last_ok_at=ago(5 * 3600 - 30),
        overdue=True,
        overdue_after=7200.0,
        registered_at=ago(40 * 86400),
        triggered_at=ago(20),
        next_slot=ago(-1800),
    ),
    job(
        "sync",
        "every 5s shifted",
        last_slot=ago(2),
        last_outcome="ok",
        last_node="web-1:4242:a1b2c3",
        last_fence=7,
        last_started_at=ago(2),
        last_finished_at=ago(7),
    ),
    job("fresh"),
]
ELECTIONS = [
    ElectionView(
        name="app",
        leader="web-1:4242:a1b2c3",
        fence=7,
        expires_at=ago(-28),
        members=("web-1:4242:a1b2c3", "web-2:77:ffeedd"),
    ),
    ElectionView(name="old", leader=None, fence=None, expires_at=ago(600), members=()),
]


def test_status_lines() -> None:
    assert render_status(JOBS, ELECTIONS, where="/var/lib/app/periodic.db", now=NOW) == [
        "5 jobs in /var/lib/app/periodic.db",
        "",
        "cleanup (every 60s): ok",
        "  last slot  2026-05-01 11:58:00Z, ok, finished 1m58s ago",
        "  ran on     web-1:4242:a1b2c3, fence 7",
        "  next slot  2026-05-01 12:01:00Z, in 1m00s",
        "",
        "nightly (cron 0 2 * * * Europe/Berlin): paused, 3 failures in a row",
        "  last slot  2026-05-01 00:00:00Z, error, finished 11h59m ago",
        "  ran on     web-2:77:ffeedd, no fence",
        "  next slot  2026-05-02 00:00:00Z, in 12h00m",
        "  paused     since 2026-05-01 08:57:00Z (3h03m ago): disk full on db-2",
        "",
        "report (every 3600s): overdue, trigger pending",
        "  last slot  2026-05-01 07:00:00Z, ok, finished 4h59m ago",
        "  ran on     web-1:4242:a1b2c3, fence 6",
        "  next slot  2026-05-01 12:30:00Z, in 30m00s",
        "  overdue    no ok run for 4h59m (overdue after 2h00m)",
        "  trigger    requested 2026-05-01 11:59:40Z (20s ago), not taken yet",
        "",
        "sync (every 5s shifted): ok",
        "  last slot  2026-05-01 11:59:58Z, started 2s ago, not finished",
        "  ran on     web-1:4242:a1b2c3, fence 7",
        "  next slot  -",
        "",
        "fresh (every 60s): ok",
        "  last slot  none yet",
        "  next slot  ?",
        "",
        "election app: leader web-1:4242:a1b2c3, fence 7, lease ends in 28s",
        "  members  web-1:4242:a1b2c3, web-2:77:ffeedd",
        "",
        "election old: no leader, lease ended 10m00s ago",
        "  members  none known",
    ]


def test_status_fits_80_columns() -> None:
    lines = render_status(JOBS, ELECTIONS, where="/var/lib/app/periodic.db", now=NOW)
    assert max(map(len, lines)) <= 80


def test_status_of_one_job_and_of_none() -> None:
    assert render_status([], [], where="x.db", now=NOW) == ["no jobs in x.db"]
    assert render_status([job("a")], [], where="x.db", now=NOW)[0] == "1 job in x.db"


def test_status_json() -> None:
    found = status_json(JOBS[1:3], ELECTIONS[:1])
    assert found == {
        "jobs": [
            {
                "name": "nightly",
                "schedule": "cron 0 2 * * * Europe/Berlin",
                "paused": True,
                "paused_at": "2026-05-01T08:57:00+00:00",
                "pause_note": "disk full on db-2",
                "triggered_at": None,
                "last_slot": "2026-05-01T00:00:00+00:00",
                "last_outcome": "error",
                "last_node": "web-2:77:ffeedd",
                "last_fence": None,
                "last_started_at": "2026-05-01T00:00:00+00:00",
                "last_finished_at": "2026-05-01T00:00:03+00:00",
                "last_ok_at": None,
                "consecutive_failures": 3,
                "overdue": False,
                "overdue_after": None,
                "registered_at": "2026-03-22T12:00:00+00:00",
                "resumed_at": None,
                "anchor": "2026-04-01T00:00:00.500000+00:00",
                "next_slot": "2026-05-02T00:00:00+00:00",
            },
            {
                "name": "report",
                "schedule": "every 3600s",
                "paused": False,
                "paused_at": None,
                "pause_note": None,
                "triggered_at": "2026-05-01T11:59:40+00:00",
                "last_slot": "2026-05-01T07:00:00+00:00",
                "last_outcome": "ok",
                "last_node": "web-1:4242:a1b2c3",
                "last_fence": 6,
                "last_started_at": "2026-05-01T07:00:00+00:00",
                "last_finished_at": "2026-05-01T07:00:30+00:00",
                "last_ok_at": "2026-05-01T07:00:30+00:00",
                "consecutive_failures": 0,
                "overdue": True,
                "overdue_after": 7200.0,
                "registered_at": "2026-03-22T12:00:00+00:00",
                "resumed_at": None,
                "anchor": "2026-04-01T00:00:00.500000+00:00",
                "next_slot": "2026-05-01T12:30:00+00:00",
            },
        ],
        "elections": [
            {
                "name": "app",
                "leader": "web-1:4242:a1b2c3",
                "fence": 7,
                "expires_at": "2026-05-01T12:00:28+00:00",
                "members": ["web-1:4242:a1b2c3", "web-2:77:ffeedd"],
            }
        ],
    }


# -- check -----------------------------------------------------------------------------------


def test_problems_are_overdue_jobs_and_jobs_failing_too_often_but_never_paused_ones() -> None:
    failing = job(
        "fetch",
        consecutive_failures=2,
        last_outcome="timeout",
        last_finished_at=ago(65),
    )
    # Overdue from its registration or its resume, whichever is later, if it never ran ok.
    never_ok = job(
        "import",
        overdue=True,
        overdue_after=600.0,
        registered_at=ago(7200),
        resumed_at=ago(900),
    )
    found = problems([*JOBS, failing, never_ok], max_failures=2, now=NOW)
    assert found == [
        "report: overdue: no ok run for 4h59m (overdue after 2h00m)",
        "fetch: failed 2 times in a row (--max-failures 2); last: timeout, 1m05s ago",
        "import: overdue: no ok run for 15m00s (overdue after 10m00s)",
    ]
    assert problems([failing], max_failures=3, now=NOW) == []


# -- history ---------------------------------------------------------------------------------

RUNS = [
    RunRecord(slot=ago(60), node="web-1:4242:a1b2c3", fence=7, started_at=ago(59.9)),
    RunRecord(
        slot=ago(120),
        node="web-1:4242:a1b2c3",
        fence=7,
        started_at=ago(119.9),
        finished_at=ago(118),
        outcome="error",
        duration=1.9,
        error="ConnectionError: " + "the upstream refused " * 6 + "\nTraceback (most recent...",
    ),
    RunRecord(
        slot=ago(180.75),
        node="web-2:77:ffeedd",
        fence=None,
        started_at=ago(180.7),
        finished_at=ago(90),
        outcome="ok",
        duration=90.7,
    ),
]


def test_history_lines() -> None:
    lines = render_history("cleanup", RUNS, now=NOW)
    assert lines == [
        "SLOT                      OUTCOME     TOOK   ENDED      NODE               FENCE",
        "2026-05-01 11:59:00Z      unfinished  -      -          web-1:4242:a1b2c3  7",
        "2026-05-01 11:58:00Z      error       1.90s  1m58s ago  web-1:4242:a1b2c3  7",
        "  ConnectionError: the upstream refused the upstream refused the upstream r...",
        "2026-05-01 11:56:59.250Z  ok          1m30s  1m30s ago  web-2:77:ffeedd    -",
    ]
    assert max(map(len, lines)) <= 80
    assert render_history("cleanup", [], now=NOW) == ["no runs of cleanup yet"]


def test_history_marks_a_triggered_run() -> None:
    triggered = attrs.evolve(RUNS[2], triggered=True)
    lines = render_history("cleanup", [RUNS[0], triggered], now=NOW)
    assert lines == [
        "SLOT                       OUTCOME     TOOK   ENDED      NODE               FENCE",
        "2026-05-01 11:59:00Z       unfinished  -      -          web-1:4242:a1b2c3  7",
        "2026-05-01 11:56:59.250Z*  ok          1m30s  1m30s ago  web-2:77:ffeedd    -",
        "* triggered: a run asked for, beside the schedule",
    ]
    assert history_json("cleanup", [triggered])["runs"][0]["triggered"] is True


def test_history_json() -> None:
    assert history_json("cleanup", RUNS[:1]) == {
        "job": "cleanup",
        "runs": [
            {
                "slot": "2026-05-01T11:59:00+00:00",
                "node": "web-1:4242:a1b2c3",
                "fence": 7,
                "started_at": "2026-05-01T11:59:00.100000+00:00",
                "finished_at": None,
                "outcome": None,
                "duration": None,
                "error": None,
                "triggered": False,
            }
        ],
    }
