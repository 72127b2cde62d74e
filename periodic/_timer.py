"""The one timer of a ``trio.run``: a heap of due times, served by one task.

Every scheduler of a run arms a :class:`Alarm` with its next due time instead of sleeping
in a task of its own; the timer's task sleeps until the earliest due time, then calls the
callback of every alarm that has come due, in the order of their due times (and, for equal
times, the order they were armed). A callback runs synchronously in the timer's task: it
must not block, and what it raises is handed to the alarm's ``on_error``, never to the
timer, which goes on serving every other alarm.

The timer is made on first use and lives in a :class:`trio.lowlevel.RunVar`, so each
``trio.run`` (each thread running one) has its own; its task is a system task, cancelled
when the run ends.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import math
from collections.abc import Callable
from typing import NoReturn

import trio

# When at least this many heap entries are stale (alarms disarmed or moved), and they are
# half the heap, the heap is rebuilt without them: memory stays proportional to the
# alarms armed, however often alarms come and go.
_COMPACT_AT = 64

_Entry = tuple[float, int, "Alarm", int]


class Alarm:
    """A callback that a timer calls once its due time has come.

    Arm it with :meth:`arm` (again and again: each arming replaces the last), disarm it
    with :meth:`disarm`. ``callback()`` is called in ``context`` with no arguments, at
    most once per arming; an exception it raises goes to ``on_error(exc)``.
    """

    __slots__ = ("_armed_as", "_generation", "_timer", "callback", "context", "on_error")

    def __init__(
        self,
        context: contextvars.Context,
        callback: Callable[[], object],
        on_error: Callable[[BaseException], object],
    ) -> None:
        self._timer = current_timer()
        self.context = context
        self.callback = callback
        self.on_error = on_error
        self._generation = 0
        # The generation of the heap entry that stands for this alarm, or -1.
        self._armed_as = -1

    @property
    def armed(self) -> bool:
        return self._armed_as >= 0

    def arm(self, due: float) -> None:
        """Call the callback once ``trio.current_time() >= due``."""
        timer = self._timer
        if self._armed_as >= 0:
            timer._stale += 1
        self._generation += 1
        self._armed_as = self._generation
        timer._push((due, next(timer._order), self, self._generation))

    def disarm(self) -> None:
        """Forget the due time, if armed. Safe to call at any time, even when unarmed."""
        if self._armed_as >= 0:
            self._armed_as = -1
            self._timer._stale += 1
            self._timer._maybe_compact()


class Timer:
    """The heap and the task of one ``trio.run``. Use :func:`current_timer`."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._stale = 0
        # The cancel scope the task sleeps in, when it sleeps; its deadline is the
        # earliest due time.
        self._sleep: trio.CancelScope | None = None
        self._task_running = False
        self._task: trio.lowlevel.Task | None = None

    def __len__(self) -> int:
        """The number of armed alarms."""
        return len(self._heap) - self._stale

    @property
    def heap_size(self) -> int:
        """Entries in the heap, stale ones included (for tests of memory use)."""
        return len(self._heap)

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, entry)
        sleep = self._sleep
        if sleep is not None:
            if entry[0] < sleep.deadline:
                sleep.deadline = entry[0]
        elif not self._task_running:
            self._task_running = True
            trio.lowlevel.spawn_system_task(self._serve, name="periodic timer")

    def _maybe_compact(self) -> None:
        if self._stale >= _COMPACT_AT and self._stale * 2 >= len(self._heap):
            self._heap = [e for e in self._heap if e[2]._armed_as == e[3]]
            heapq.heapify(self._heap)
            self._stale = 0

    async def _serve(self) -> None:
        self._task = trio.lowlevel.current_task()
        try:
            while True:
                heap = self._heap
                # Sleep until the earliest due time; arming an earlier one moves the
                # deadline. Nothing armed: sleep until something is.
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as sleep:
                    self._sleep = sleep
                    await trio.lowlevel.wait_task_rescheduled(self._wake_up)
                self._sleep = None
                self._fire_due(trio.current_time())
        finally:
            self._sleep = None
            self._task_running = False

    def _wake_up(self, raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
        # The sleep's deadline came: wake with a plain value rather than by raising
        # Cancelled through the stack, which costs more than the rest of a tick.
        sleep = self._sleep
        if sleep is None or not sleep.cancel_called:  # a cancellation from outside
            return trio.lowlevel.Abort.SUCCEEDED
        assert self._task is not None
        trio.lowlevel.reschedule(self._task)
        return trio.lowlevel.Abort.FAILED

    def _fire_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, alarm, generation = heapq.heappop(heap)
            if alarm._armed_as != generation:
                self._stale -= 1
                continue
            alarm._armed_as = -1
            try:
                alarm.context.run(alarm.callback)
            except BaseException as exc:  # handed to its owner, re-raised there
                alarm.on_error(exc)
            heap = self._heap  # a callback may have compacted it


_timer: trio.lowlevel.RunVar[Timer] = trio.lowlevel.RunVar("periodic_timer")


def current_timer() -> Timer:
    """The timer of the current ``trio.run``, made on first use.

    Raises:
        RuntimeError: Called outside ``trio.run``.
    """
    try:
        return _timer.get()
    except LookupError:
        timer = Timer()
        _timer.set(timer)
        return timer
