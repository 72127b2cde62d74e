"""Tools to test periodic jobs: manual ticks, event capture, virtual-time serving."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast, overload

import attrs
import trio

from ._events import (
    Event,
    Finished,
    LeadershipChanged,
    Overdue,
    Recovered,
    Retrying,
    Skipped,
    Started,
    StoppedPrevious,
    subscribe,
)
from ._options import Mode
from ._runs import Run
from ._scheduler import Periodic, copy_job, manual_tick
from .exceptions import JobNotStarted

E = TypeVar(
    "E",
    Started,
    Finished,
    Retrying,
    Skipped,
    StoppedPrevious,
    LeadershipChanged,
    Overdue,
    Recovered,
)

_KINDS: dict[str, type[Any]] = {
    "started": Started,
    "finished": Finished,
    "retrying": Retrying,
    "skipped": Skipped,
    "stopped_previous": StoppedPrevious,
    "leadership_changed": LeadershipChanged,
    "overdue": Overdue,
    "recovered": Recovered,
}


def manual(job: Periodic, **changes: Any) -> Periodic:
    """Return a copy of ``job`` in ``mode="manual"``, with other options changed too.

    The usual way to test a job an application builds for production::

        job = manual(app.cleanup_job, when=None)   # no "midnight only" guard in tests

    Args:
        job: The production :class:`~periodic.Periodic`.
        **changes: Options to replace, checked as by the constructor.

    Raises:
        TypeError, ValueError: A changed option is invalid.
    """
    # Event filters made with the original job see the copy's events too.
    return copy_job(job, mode=Mode.MANUAL, **changes)


async def tick(job: Periodic) -> int | None:
    """Tick a manual-mode scheduler once, now.

    The tick is due when it is called: the run's ``scheduled_at`` is the time of the
    call. The when-guard, the overlap policy, the timeout and events apply as on an
    automatic tick.

    Args:
        job: A :class:`~periodic.Periodic` made with ``mode="manual"``, being served.

    Returns:
        The id of the run the tick started (it has been spawned, not necessarily begun),
        or ``None`` when the tick started no run (a :class:`~periodic.events.Skipped`
        event says why).

    Raises:
        periodic.exceptions.NotInManualMode: ``job`` is in auto mode.
        RuntimeError: ``job`` is not being served.
    """
    outcome = await manual_tick(job)
    await trio.lowlevel.cancel_shielded_checkpoint()
    return outcome.run_id if isinstance(outcome, Run) else None


async def sync_tick(job: Periodic, *, timeout: float = 5.0) -> Finished:  # noqa: ASYNC109
    """Tick a manual-mode scheduler once and wait for the run it started to finish.

    Args:
        job: A :class:`~periodic.Periodic` made with ``mode="manual"``, being served.
        timeout: Seconds (on Trio's clock) the tick and its run may take together.

    Returns:
        The run's :class:`~periodic.events.Finished` event (outcome, result, error,
        duration). A run that raised is returned, not raised: check ``outcome``.

    Raises:
        periodic.exceptions.JobNotStarted: The tick started no run; its ``reason`` is the
            skip reason (``guard``, ``guard_error``, ``overlap``).
        periodic.exceptions.NotInManualMode: ``job`` is in auto mode.
        RuntimeError: ``job`` is not being served.
        trio.TooSlowError: The tick and its run took longer than ``timeout``. The run is
            left alone: it goes on and finishes later as usual.
        ValueError: ``timeout`` is not a positive number.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    # (trio.fail_after, without its context-manager layer: this is a hot path of tests)
    finished = None
    with trio.CancelScope(deadline=trio.current_time() + timeout):
        outcome = await manual_tick(job)
        if isinstance(outcome, Skipped):
            raise JobNotStarted(outcome)
        await outcome.done.wait()
        finished = outcome.finished
    if finished is None:
        raise trio.TooSlowError
    return finished


class CapturedEvents(Sequence[Event]):
    """A live, read-only list of the events emitted while it was capturing.

    Made by :func:`capture_events`. Index and iterate it like a list; use :meth:`of`,
    :meth:`assert_emitted`, :meth:`assert_not_emitted` and :meth:`wait_for` in tests.
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._waiters: list[tuple[type[Any], dict[str, Any], trio.Event]] = []

    def _append(self, event: Event) -> None:
        self._events.append(event)
        for kind, fields, waiter in self._waiters:
            if _matches(event, kind, fields):
                waiter.set()

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        return self._events[index]

    def __len__(self) -> int:
        return len(self._events)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CapturedEvents):
            return self._events == other._events
        if isinstance(other, list):
            return self._events == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CapturedEvents({self._events!r})"

    @overload
    def of(self, kind: type[E]) -> list[E]: ...
    @overload
    def of(self, kind: str) -> list[Any]: ...
    def of(self, kind: type[E] | str) -> list[E] | list[Any]:
        """The captured events of one kind: a class, or ``"started"``, ``"finished"``,
        ``"skipped"``, ``"stopped_previous"``, ``"leadership_changed"``, ``"retrying"``,
        ``"overdue"``, ``"recovered"``.

        Raises:
            ValueError: ``kind`` is an unknown name.
        """
        cls = _kind(kind)
        return cast("list[E]", [e for e in self._events if isinstance(e, cls)])

    @overload
    def find(self, kind: type[E], **fields: Any) -> list[E]: ...
    @overload
    def find(self, kind: str, **fields: Any) -> list[Any]: ...
    def find(self, kind: type[E] | str, **fields: Any) -> list[E] | list[Any]:
        """The captured events of ``kind`` whose fields equal ``fields``.

        Raises:
            ValueError: ``kind`` is an unknown name.
            TypeError: A field name is not a field of ``kind``.
        """
        cls = _kind(kind)
        _check_fields(cls, fields)
        return cast("list[E]", [e for e in self._events if _matches(e, cls, fields)])

    @overload
    def assert_emitted(self, kind: type[E], **fields: Any) -> E: ...
    @overload
    def assert_emitted(self, kind: str, **fields: Any) -> Any: ...
    def assert_emitted(self, kind: type[E] | str, **fields: Any) -> E | Any:
        """Assert that an event of ``kind`` with these field values was emitted.

        Field values compare with ``==``, so ``outcome="ok"`` matches ``Outcome.OK``.

        Returns:
            The first matching event.

        Raises:
            AssertionError: None matched; the message lists what was captured.
        """
        found = self.find(kind, **fields)
        if not found:
            raise AssertionError(
                f"no {_kind(kind).__name__} event with {_fmt(fields)} was emitted; "
                f"captured:\n{self._listing()}"
            )
        return found[0]

    def assert_not_emitted(self, kind: type[Any] | str, **fields: Any) -> None:
        """Assert that no event of ``kind`` with these field values was emitted.

        Raises:
            AssertionError: One matched; the message lists what was captured.
        """
        found = self.find(kind, **fields)
        if found:
            raise AssertionError(
                f"{len(found)} {_kind(kind).__name__} event(s) with {_fmt(fields)} were "
                f"emitted, expected none; captured:\n{self._listing()}"
            )

    @overload
    async def wait_for(self, kind: type[E], **fields: Any) -> E: ...
    @overload
    async def wait_for(self, kind: str, **fields: Any) -> Any: ...
    async def wait_for(self, kind: type[E] | str, **fields: Any) -> E | Any:
        """Wait until an event of ``kind`` with these field values has been captured.

        Returns at once (after a checkpoint) if one already was. Combine with
        ``trio.fail_after`` to bound it.

        Returns:
            The first matching event.
        """
        cls = _kind(kind)
        _check_fields(cls, fields)
        await trio.lowlevel.checkpoint()
        waiter = trio.Event()
        entry = (cls, fields, waiter)
        self._waiters.append(entry)
        try:
            while not (found := self.find(cls, **fields)):
                await waiter.wait()
        finally:
            self._waiters.remove(entry)
        return cast("E", found[0])

    def _listing(self) -> str:
        if not self._events:
            return "  (nothing)"
        return "\n".join(f"  {i}: {e!r}" for i, e in enumerate(self._events))


def _kind(kind: type[Any] | str) -> type[Any]:
    if isinstance(kind, str):
        try:
            return _KINDS[kind]
        except KeyError:
            raise ValueError(
                f"unknown event kind {kind!r}; use one of {', '.join(map(repr, _KINDS))} "
                "or an event class"
            ) from None
    if kind not in _KINDS.values():
        raise ValueError(f"{kind!r} is not a periodic event class")
    return kind


def _check_fields(cls: type[Any], fields: dict[str, Any]) -> None:
    known = {a.name for a in attrs.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(
            f"{cls.__name__} has no field {', '.join(unknown)}; its fields are "
            f"{', '.join(sorted(known))}"
        )


def _matches(event: Event, cls: type[Any], fields: dict[str, Any]) -> bool:
    return isinstance(event, cls) and all(
        getattr(event, name) == value for name, value in fields.items()
    )


def _fmt(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in fields.items()) or "any fields"


@contextlib.contextmanager
def capture_events(job: Periodic | str | None = None) -> Iterator[CapturedEvents]:
    """Capture the events emitted inside the ``with`` block.

    Args:
        job: Only this job's events (a :class:`~periodic.Periodic` or a job name).

    Yields:
        A :class:`CapturedEvents`, which keeps filling while the block runs and keeps
        what it captured afterwards.
    """
    captured = CapturedEvents()
    with subscribe(captured._append, job=job):
        yield captured


async def serve_for(job: Periodic, seconds: float) -> CapturedEvents:
    """Serve ``job`` for ``seconds`` from now, shut it down, and return its events.

    Meant for auto-mode tests under ``trio.testing.MockClock(autojump_threshold=0)``,
    where an hour of ticks takes milliseconds. Shutdown follows the job's
    ``job_shutdown`` rule, so this returns once every run is over.

    Args:
        job: The :class:`~periodic.Periodic` to serve (not being served already).
        seconds: How long to serve it; >= 0.

    Returns:
        The events the job emitted, shutdown included.

    Raises:
        TypeError: ``seconds`` is not a number.
        ValueError: ``seconds`` is negative, NaN or infinite.
        RuntimeError: ``job`` is already being served.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number >= 0, got {seconds!r}")
    if not 0 <= seconds < math.inf:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if job.serving:
        # Checked here so the error is not wrapped in the nursery's exception group.
        raise RuntimeError(f"{job!r} is already being served")
    with capture_events(job) as captured:
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
    return captured
