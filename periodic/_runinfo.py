"""What a job can learn about the run it is in."""

from __future__ import annotations

import contextvars
import datetime

import attrs


@attrs.frozen(kw_only=True)
class RunInfo:
    """The run the calling code belongs to; see :func:`current_run`.

    Attributes:
        job: The job's name.
        run_id: Counts from 1 for each :class:`~periodic.Periodic`.
        scheduled_at: When the tick that started this run was due (``trio.current_time()``).
        started_at: When the run started (``trio.current_time()``).
        fence: The leadership fencing token held by the run, or ``None``.
        fire_time: For a ``cron=`` job, the wall-clock time the run was meant to fire
            (timezone-aware; the time of the call for a manual tick), else ``None``.
            ``(job, fire_time)`` makes a good idempotency key.
        attempt: Which try of the run this is, from 1 (see :class:`periodic.Retry`).
    """

    job: str
    run_id: int
    scheduled_at: float
    started_at: float
    fence: int | None = None
    fire_time: datetime.datetime | None = None
    attempt: int = 1


_current: contextvars.ContextVar[RunInfo] = contextvars.ContextVar("periodic_current_run")


def current_run() -> RunInfo:
    """Return the :class:`RunInfo` of the run this code is part of.

    Works in async jobs, in the tasks they start, and in sync jobs (which Trio runs in a
    worker thread with a copy of the run's context).

    Raises:
        RuntimeError: Called outside a run of a :class:`~periodic.Periodic`.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "periodic.current_run() was called outside a run of a Periodic job"
        ) from None
