"""The event records a scheduler emits, and the process-wide bus that delivers them."""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Callable
from typing import Any

import attrs

_log = logging.getLogger("periodic")


class Outcome(str, enum.Enum):
    """How a run ended."""

    #: The job returned.
    OK = "ok"
    #: The job raised an :class:`Exception`.
    ERROR = "error"
    #: The job was cancelled because its ``timeout`` expired.
    TIMEOUT = "timeout"
    #: The job was cancelled by ``stop_previous`` or by the shutdown of ``serve``.
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class SkipReason(str, enum.Enum):
    """Why a tick started no run."""

    #: ``on_overlap="ignore"`` and an instance was still running.
    OVERLAP = "overlap"
    #: The ``when`` guard returned a false value.
    GUARD = "guard"
    #: The ``when`` guard raised.
    GUARD_ERROR = "guard_error"
    #: The scheduler woke up too late for one or more ticks.
    MISSED = "missed"
    #: The job's peer is not the leader of its cluster.
    NOT_LEADER = "not_leader"
    #: The job's store refused the claim: this slot (or a later one) was claimed already,
    #: or a run with a higher fence was recorded.
    CLAIMED = "claimed"
    #: The job's store failed or timed out while claiming the slot: no run starts unclaimed.
    STORE_ERROR = "store_error"
    #: The job is paused (:meth:`Periodic.pause <periodic.Periodic.pause>`, or in its
    #: store).
    PAUSED = "paused"

    def __str__(self) -> str:
        return self.value


class CancelReason(str, enum.Enum):
    """Who cancelled a run that finished with :attr:`Outcome.CANCELLED`."""

    #: A new tick with ``on_overlap="stop_previous"`` stopped it.
    STOP_PREVIOUS = "stop_previous"
    #: ``serve`` was cancelled and ``job_shutdown`` ran out.
    SHUTDOWN = "shutdown"
    #: The job's peer lost the leadership the run was started under.
    LEADERSHIP_LOST = "leadership_lost"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class Started:
    """A run of ``job`` has started.

    Attributes:
        job: The job's name.
        run_id: Counts from 1 for each :class:`~periodic.Periodic`.
        scheduled_at: When the tick that started the run was due (``trio.current_time()``).
        started_at: When the run started (``trio.current_time()``).
        fence: The leadership fencing token the run holds, or ``None``.
        fire_time: For a ``cron=`` job, the wall-clock time the run was meant to fire
            (timezone-aware), else ``None``.
    """

    job: str
    run_id: int
    scheduled_at: float
    started_at: float
    fence: int | None = None
    fire_time: datetime.datetime | None = None


@attrs.frozen(kw_only=True)
class Finished:
    """A try of a run of ``job`` has finished.

    Every :class:`Started` has exactly one ``Finished`` with ``will_retry=False``, the
    last event of its run. With a ``retry`` policy, each failed try that is followed by
    another emits a ``Finished(outcome="error", will_retry=True)`` first.

    Attributes:
        job: The job's name.
        run_id: The run's id, as in its :class:`Started`.
        outcome: How it (this try) ended.
        duration: Seconds between the start and the end of this try, on Trio's clock.
        result: The job's return value when ``outcome`` is ``ok``, else ``None``.
        error: The exception when ``outcome`` is ``error``; for a sync job stopped while its
            thread was running, whatever the thread raised (the outcome still says why it
            was stopped).
        cancel_reason: For ``cancelled``, who cancelled it; else ``None``.
        attempt: Which try of the run this was, from 1 (always 1 without ``retry``).
        will_retry: Whether another try of the run follows (after a
            :class:`Retrying`); ``False`` on a run's last ``Finished``.
    """

    job: str
    run_id: int
    outcome: Outcome
    duration: float
    result: Any = None
    error: BaseException | None = None
    cancel_reason: CancelReason | None = None
    attempt: int = 1
    will_retry: bool = False


@attrs.frozen(kw_only=True)
class Retrying:
    """Try ``attempt`` of run ``run_id`` of ``job`` begins, after a failed try.

    It follows a ``Finished(will_retry=True)`` of the same run, once the retry's wait is
    over; the try ends with a :class:`Finished` of its own.

    Attributes:
        job: The job's name.
        run_id: The run's id, as in its :class:`Started`.
        attempt: The try beginning now: 2 for the first retry.
        started_at: When it began (``trio.current_time()``).
    """

    job: str
    run_id: int
    attempt: int
    started_at: float


@attrs.frozen(kw_only=True)
class Skipped:
    """A tick of ``job`` started no run.

    Attributes:
        job: The job's name.
        reason: Why.
        scheduled_at: When the (first) skipped tick was due.
        count: How many ticks this event stands for: 1, except for ``missed``.
        error: What the guard raised, for ``guard_error``, or the store's error, for
            ``store_error``; else ``None``.
    """

    job: str
    reason: SkipReason
    scheduled_at: float
    count: int = 1
    error: BaseException | None = None


@attrs.frozen(kw_only=True)
class StoppedPrevious:
    """A tick with ``on_overlap="stop_previous"`` is cancelling run ``run_id``.

    Attributes:
        job: The job's name.
        run_id: The run being stopped; its :class:`Finished` follows once it has unwound.
    """

    job: str
    run_id: int


@attrs.frozen(kw_only=True)
class LeadershipChanged:
    """A peer gained or lost the leadership of its election.

    Attributes:
        name: The election's name.
        node: The node of the peer that changed.
        gained: ``True`` when it became leader, ``False`` when it stopped being leader.
        fence: The lease epoch it gained, or the one it held until it lost it.
        leader: The holder now, when known (``None`` when unknown or nobody).
        reason: Why, in a few words (``"elected"``, ``"lease expired"``, ``"error"``,
            ``"stopped"``, ``"taken over"``, ``"quorum_lost"``, …).
    """

    name: str
    node: str
    gained: bool
    fence: int | None
    leader: str | None
    reason: str


class EventSource:
    """What a :func:`subscribe` filter may name besides a job's name: a
    :class:`~periodic.Periodic` (which derives from this)."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class Overdue:
    """No run of ``job`` finished ``ok`` for its ``overdue_after`` seconds.

    Emitted once when the job becomes overdue; a :class:`Recovered` follows when it is
    not overdue any more.

    Attributes:
        job: The job's name.
        last_ok_at: When its last ``ok`` run finished (``trio.current_time()``), or
            ``None`` when none did since it was served.
        overdue_for: Seconds since ``last_ok_at``, or since the job was served (or
            resumed) when that is later.
    """

    job: str
    last_ok_at: float | None
    overdue_for: float


class RecoveredBy(str, enum.Enum):
    """Why an overdue job is not overdue any more."""

    #: A run finished ``ok``.
    OK = "ok"
    #: The job was paused (a paused job is never overdue).
    PAUSED = "paused"
    #: The job stopped being served.
    STOPPED = "stopped"
    #: This process stopped leading the job's election: the job is another's to run.
    NOT_LEADER = "not_leader"
    #: Another process claimed the job's slot: it runs the job.
    CLAIMED = "claimed"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class Recovered:
    """``job``, which was :class:`Overdue`, is not overdue any more.

    Attributes:
        job: The job's name.
        reason: Why: a run finished ``ok``, the job was paused, or it stopped being
            served (so that every ``Overdue`` has its ``Recovered``).
    """

    job: str
    reason: RecoveredBy = RecoveredBy.OK


Event = (
    Started
    | Finished
    | Retrying
    | Skipped
    | StoppedPrevious
    | LeadershipChanged
    | Overdue
    | Recovered
)
Handler = Callable[[Event], object]


@attrs.define(eq=False, repr=False)
class Subscription:
    """A handler registered with :func:`subscribe`.

    Use it as a context manager, or call :meth:`close`, to stop receiving events.
    """

    handler: Handler
    job: str | EventSource | None
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Stop delivering events to the handler. Calling it again does nothing."""
        if not self._closed:
            self._closed = True
            _bus.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription {self.handler!r} job={self.job!r} {state}>"


class _Bus:
    """The process-wide list of subscriptions.

    Emitting iterates over a tuple that is replaced, never mutated, so a handler may
    subscribe or close subscriptions while an event is being delivered.
    """

    def __init__(self) -> None:
        self.subscriptions: tuple[Subscription, ...] = ()

    def add(self, sub: Subscription) -> None:
        self.subscriptions = (*self.subscriptions, sub)

    def remove(self, sub: Subscription) -> None:
        self.subscriptions = tuple(s for s in self.subscriptions if s is not sub)

    def emit(self, event: Event, keys: tuple[object, ...] = ()) -> None:
        """Deliver ``event``; ``keys`` are the objects a filter may name to get it
        (a job and the job it is a copy of), besides the event's job name."""
        for sub in self.subscriptions:
            wanted = sub.job
            if wanted is not None and wanted not in keys and wanted != getattr(event, "job", None):
                continue
            try:
                sub.handler(event)
            except Exception:
                _log.exception(
                    "event handler %r raised on %s; the scheduler goes on",
                    sub.handler,
                    type(event).__name__,
                )


_bus = _Bus()
emit = _bus.emit


def subscribe(handler: Handler, *, job: str | EventSource | None = None) -> Subscription:
    """Call ``handler(event)`` for every event a scheduler emits from now on.

    A ``job`` filter passes that job's events only (a ``Periodic`` filter also those of
    its copies made by :func:`periodic.testing.manual`); :class:`LeadershipChanged` events,
    which belong to a peer rather than a job, reach unfiltered subscriptions.

    Subscriptions are process-wide and may be made before ``trio.run``. Handlers are
    called synchronously, in the order they subscribed, in the task that emits the event
    (a run's own task for :class:`Started` and :class:`Finished`). A handler that raises
    an :class:`Exception` is logged on the ``periodic`` logger and changes nothing else.

    Args:
        handler: A callable taking one event.
        job: Only events of this job: a :class:`~periodic.Periodic`, or a job name.

    Returns:
        The :class:`Subscription`; close it (or leave its ``with`` block) to unsubscribe.

    Raises:
        TypeError: ``handler`` is not callable, or ``job`` is neither a name nor a
            ``Periodic``.
    """
    if not callable(handler):
        raise TypeError(f"subscribe: handler must be callable, got {handler!r}")
    if job is not None and not isinstance(job, (str, EventSource)):
        raise TypeError(
            f"subscribe: job must be a job name (str), a Periodic or None, got {job!r}"
        )
    sub = Subscription(handler, job)
    _bus.add(sub)
    return sub
