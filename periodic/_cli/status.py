"""``periodic status`` and ``periodic check``: what a store knows of its jobs, the next
slot of each, the elections of its database, and the problems a probe reports."""

from __future__ import annotations

import datetime
import math
from typing import Any

import attrs

from .._cron import IntervalGrid
from ..cron import parse_schedule
from ..stores import JobState
from .target import ElectionView
from .text import UTC, iso, relative, span, when


@attrs.frozen(kw_only=True)
class JobStatus:
    """One job as ``status`` shows it: the store's record, and its next slot."""

    name: str
    schedule: str
    anchor: datetime.datetime
    last_slot: datetime.datetime | None
    last_outcome: str | None
    last_node: str | None
    last_fence: int | None
    last_started_at: datetime.datetime | None
    last_finished_at: datetime.datetime | None
    consecutive_failures: int
    next_slot: datetime.datetime | None
    paused: bool = False
    paused_at: datetime.datetime | None = None
    pause_note: str | None = None
    triggered_at: datetime.datetime | None = None
    overdue: bool = False
    overdue_after: float | None = None
    registered_at: datetime.datetime | None = None
    resumed_at: datetime.datetime | None = None
    last_ok_at: datetime.datetime | None = None

    @property
    def unfinished(self) -> bool:
        """Whether the run of the latest slot has not ended (it runs, or its process died)."""
        started, finished = self.last_started_at, self.last_finished_at
        return started is not None and (finished is None or finished < started)

    @property
    def healthy_since(self) -> datetime.datetime | None:
        """What the overdue clock counts from: the last ok run, the registration or the
        resume, whichever is latest."""
        known = [t for t in (self.last_ok_at, self.registered_at, self.resumed_at) if t]
        return max(known, default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schedule": self.schedule,
            "paused": self.paused,
            "paused_at": iso(self.paused_at),
            "pause_note": self.pause_note,
            "triggered_at": iso(self.triggered_at),
            "last_slot": iso(self.last_slot),
            "last_outcome": self.last_outcome,
            "last_node": self.last_node,
            "last_fence": self.last_fence,
            "last_started_at": iso(self.last_started_at),
            "last_finished_at": iso(self.last_finished_at),
            "last_ok_at": iso(self.last_ok_at),
            "consecutive_failures": self.consecutive_failures,
            "overdue": self.overdue,
            "overdue_after": self.overdue_after,
            "registered_at": iso(self.registered_at),
            "resumed_at": iso(self.resumed_at),
            "anchor": iso(self.anchor),
            "next_slot": iso(self.next_slot),
        }


def job_status(state: JobState, now: datetime.datetime) -> JobStatus:
    """The status of the job ``state`` describes, at the wall time ``now``."""
    return JobStatus(
        name=state.name,
        schedule=state.schedule,
        anchor=state.anchor,
        last_slot=state.last_slot,
        last_outcome=state.last_outcome,
        last_node=state.last_node,
        last_fence=state.last_fence,
        last_started_at=state.last_started_at,
        last_finished_at=state.last_finished_at,
        consecutive_failures=state.consecutive_failures,
        next_slot=next_slot(state.schedule, state.anchor, state.last_slot, now),
        **_operating_fields(state),
    )


def _operating_fields(state: JobState) -> dict[str, Any]:
    job = state
    return {
        "paused": job.paused,
        "paused_at": job.paused_at,
        "pause_note": job.pause_note,
        "triggered_at": job.triggered_at,
        "overdue": job.overdue,
        "overdue_after": job.overdue_after,
        "registered_at": job.registered_at,
        "resumed_at": job.resumed_at,
        "last_ok_at": job.last_ok_at,
    }


def next_slot(
    schedule: str,
    anchor: datetime.datetime,
    last: datetime.datetime | None,
    now: datetime.datetime,
) -> datetime.datetime | None:
    """The first slot of a job after ``now`` (and after its last claimed slot), read from
    the schedule's text as the scheduler stores it: ``every 60s`` (the grid ``anchor + k *
    every``), ``cron <spec> <zone>``. ``None`` when it cannot be known here: a ``shifted``
    interval job (its slots follow its runs), a cron job without ``cronsim`` installed, a
    zone this host does not know."""
    after = now if last is None else max(now, last)
    words = schedule.split()
    if len(words) == 2 and words[0] == "every" and words[1].endswith("s"):
        try:
            every = float(words[1][:-1])
        except ValueError:
            return None
        if not 0 < every < math.inf:
            return None
        return IntervalGrid.of(anchor, every).next_after(after)
    if len(words) >= 3 and words[0] == "cron":
        try:
            parsed = parse_schedule(" ".join(words[1:-1]), words[-1])
            if isinstance(parsed, float):  # "@every 1h": an interval grid
                return IntervalGrid.of(anchor, parsed).next_after(after)
            return parsed.next_after(after).astimezone(UTC)
        except (ImportError, ValueError, TypeError):
            return None
    return None


# -- status, for people ------------------------------------------------------------------------


def render_status(
    jobs: list[JobStatus], elections: list[ElectionView], *, where: str, now: datetime.datetime
) -> list[str]:
    """The lines of ``periodic status``."""
    count = f"{len(jobs)} job{'' if len(jobs) == 1 else 's'}" if jobs else "no jobs"
    lines = [f"{count} in {where}"]
    for job in jobs:
        lines += ["", *_job_lines(job, now)]
    for election in elections:
        lines += ["", *_election_lines(election, now)]
    return lines


def health(job: JobStatus) -> list[str]:
    """What needs attention in a job: empty when nothing does."""
    found = []
    if job.paused:
        found.append("paused")
    if job.overdue:
        found.append("overdue")
    if job.consecutive_failures:
        n = job.consecutive_failures
        found.append(f"{n} failure{'' if n == 1 else 's'} in a row")
    if job.triggered_at is not None:
        found.append("trigger pending")
    return found


def _job_lines(job: JobStatus, now: datetime.datetime) -> list[str]:
    lines = [f"{job.name} ({job.schedule}): {', '.join(health(job)) or 'ok'}"]
    if job.last_slot is None:
        lines.append("  last slot  none yet")
    else:
        if job.unfinished:
            assert job.last_started_at is not None
            ended = f"started {relative(job.last_started_at, now)}, not finished"
        elif job.last_finished_at is not None:
            ended = f"{job.last_outcome}, finished {relative(job.last_finished_at, now)}"
        else:
            ended = "not finished"
        lines.append(f"  last slot  {when(job.last_slot)}, {ended}")
        fence = "no fence" if job.last_fence is None else f"fence {job.last_fence}"
        lines.append(f"  ran on     {job.last_node}, {fence}")
    if job.next_slot is None:
        unknown = "-" if job.schedule.endswith(" shifted") else "?"
        lines.append(f"  next slot  {unknown}")
    else:
        lines.append(f"  next slot  {when(job.next_slot)}, {relative(job.next_slot, now)}")
    if job.paused:
        since = "" if job.paused_at is None else f"since {_moment(job.paused_at, now)}"
        note = "" if job.pause_note is None else f": {job.pause_note}"
        lines.append(f"  paused     {since}{note}".rstrip())
    if job.overdue:
        lines.append(f"  overdue    {_overdue_text(job, now)}")
    if job.triggered_at is not None:
        lines.append(f"  trigger    requested {_moment(job.triggered_at, now)}, not taken yet")
    return lines


def _moment(moment: datetime.datetime, now: datetime.datetime) -> str:
    return f"{when(moment)} ({relative(moment, now)})"


def _overdue_text(job: JobStatus, now: datetime.datetime) -> str:
    since = job.healthy_since
    text = "no ok run" if since is None else f"no ok run for {span((now - since).total_seconds())}"
    if job.overdue_after is not None:
        text += f" (overdue after {span(job.overdue_after)})"
    return text


def _election_lines(election: ElectionView, now: datetime.datetime) -> list[str]:
    if election.leader is None:
        head = f"election {election.name}: no leader"
        if election.expires_at is not None:
            head += f", lease ended {relative(election.expires_at, now)}"
    else:
        head = f"election {election.name}: leader {election.leader}, fence {election.fence}"
        if election.expires_at is not None:
            head += f", lease ends {relative(election.expires_at, now)}"
    members = ", ".join(election.members) or "none known"
    return [head, f"  members  {members}"]


def status_json(jobs: list[JobStatus], elections: list[ElectionView]) -> dict[str, Any]:
    """The object ``periodic status --json`` prints."""
    return {
        "jobs": [job.to_json() for job in jobs],
        "elections": [
            {
                "name": e.name,
                "leader": e.leader,
                "fence": e.fence,
                "expires_at": iso(e.expires_at),
                "members": list(e.members),
            }
            for e in elections
        ],
    }


# -- check -----------------------------------------------------------------------------------


def problems(jobs: list[JobStatus], *, max_failures: int, now: datetime.datetime) -> list[str]:
    """One line per problem: an overdue job, a job that failed ``max_failures`` times in a
    row or more. A paused job has none: someone is on it."""
    found = []
    for job in jobs:
        if job.paused:
            continue
        if job.overdue:
            found.append(f"{job.name}: overdue: {_overdue_text(job, now)}")
        if job.consecutive_failures >= max_failures:
            last = ""
            if job.last_finished_at is not None:
                ago = relative(job.last_finished_at, now)
                last = f"; last: {job.last_outcome}, {ago}"
            found.append(
                f"{job.name}: failed {job.consecutive_failures} times in a row "
                f"(--max-failures {max_failures}){last}"
            )
    return found
