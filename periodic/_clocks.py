"""What the scheduler's parts share: the state a :class:`~periodic.Periodic` keeps between
ticks, the names its parts use of one another (for type checkers), and its clocks.

:class:`Periodic` is put together from :class:`Clocks` (here: arming the timer, the
interval and cron clocks, jitter) and :class:`~periodic._durable.Durable` (the store:
registration, catch-up, claims, records), on top of its options, ``serve`` and the tick
(:mod:`periodic._scheduler`).
"""

from __future__ import annotations

import collections
import contextvars
import datetime
import inspect
import math
import random
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from ._cron import UTC, CronSchedule, IntervalGrid, latest_fire, utc_now
from ._events import Skipped, SkipReason
from ._options import DelayMode, Overlap
from ._runs import Run, Runs
from ._timer import Alarm
from .stores._base import JobState

if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    from ._options import CatchUp, Mode
    from ._retry import Retry
    from .peers._base import Peer
    from .stores._base import Store

    _Outcome: TypeAlias = Run | Skipped | None
    # A tick that has to wait: what is left of it, for the serve task to await.
    _Rest: TypeAlias = Coroutine[Any, Any, _Outcome]
    # Wall-clock slots: a crontab, or an interval job's grid kept in a store.
    _Schedule: TypeAlias = CronSchedule | IntervalGrid
    # A missed-tick rule re-applied after a stop_previous wait: the tick's new due time.
    _CatchUp: TypeAlias = Callable[[], tuple[float, datetime.datetime | None]]
    # An explicit tick: job.trigger() ("local"), or a trigger taken from the store ("store").
    Trigger: TypeAlias = Literal["local", "store"]

# A cron job re-reads the wall clock at least this often (seconds) while it waits, to
# notice a clock that jumped.
_WALL_RECHECK = 30.0
# Counting missed fire times stops here, so a long suspend of a per-second schedule
# does not cost a long loop.
_MAX_MISSED_COUNT = 10_000
# What a tick returns once it has decided; anything else is the rest of the tick.
DECIDED = (Run, Skipped, type(None))


@attrs.define(eq=False)
class State:
    """What a scheduler keeps between ticks; the runs are in :class:`Runs`."""

    serving: bool = False
    # Auto mode, armed, and not shutting down.
    ticking: bool = False
    tick_lock: trio.Lock | None = None
    # Counts by reason, of the reasons seen so far (an idle scheduler keeps little).
    skipped: dict[SkipReason, int] = attrs.field(factory=dict)
    next_tick_at: float | None = None
    alarm: Alarm | None = None
    # The interval clock: tick k is due at base + k * every (regular mode).
    base: float = 0.0
    k: int = 0
    due: float = 0.0
    # The wall clock's slots (a cron schedule, or an interval grid kept in a store) while
    # served; then the next fire time, in UTC, and the jitter of its tick.
    schedule: CronSchedule | IntervalGrid | None = None
    fire: datetime.datetime | None = None
    offset: float = 0.0
    # Missed slots to run one after another (catch_up="all"), and whether one is ticking.
    backlog: collections.deque[datetime.datetime] = attrs.field(factory=collections.deque)
    in_backlog: bool = False
    # What the store said when leadership was gained: to catch up from at the next wake.
    replan: JobState | None = None
    # The parked serve task: woken to await the rest of a tick, or to raise a crash; and
    # whether it waits to be woken now.
    parked: trio.lowlevel.Task | None = None
    waiting: bool = False
    rest: _Rest | None = None
    then: Callable[[_Outcome], object] | None = None
    # What an async when-guard returned, until the rest of its tick awaits it.
    guard: object = None
    crash: BaseException | None = None
    # Paused by job.pause() (kept across serves).
    paused: bool = False
    # A tick is being awaited (an automatic one handed over to serve, or a trigger):
    # another waits for it (a trigger) or is put off until it is over (an automatic
    # one: deferred), so that two ticks never pass the overlap guard together.
    busy: bool = False
    idle: trio.Event | None = None
    deferred: bool = False
    # serve's nursery, and a copy of its context (auto mode), while served.
    nursery: trio.Nursery | None = None
    context: contextvars.Context | None = None
    # Taking the store's triggers: a task is at it; asked again meanwhile; the last one
    # was refused by a guard (the next refusals are not reported: quiet).
    trigger_task: bool = False
    trigger_again: bool = False
    trigger_refused: bool = False
    quiet: bool = False
    # overdue_after: the alarm, when the count started (serve, resume), the end of the
    # last ok run, and whether the job is overdue now.
    overdue_alarm: Alarm | None = None
    overdue_from: float = 0.0
    last_ok_at: float | None = None
    overdue: bool = False


if TYPE_CHECKING:

    class Parts:
        """What the parts of :class:`~periodic.Periodic` use of one another."""

        every: float | None
        cron: str | None
        tz: str | datetime.tzinfo | None
        delay_mode: DelayMode | None
        when: Callable[[], Any] | None
        on_overlap: Overlap
        name: str
        mode: Mode
        peer: Peer | None
        wall_clock: Callable[[], datetime.datetime] | None
        store: Store | None
        catch_up: CatchUp
        catch_up_window: float | None
        retry: Retry | None
        jitter: float
        overdue_after: float | None
        _state: State
        _runs: Runs
        _interval: float | None
        _first_delay: float
        _schedule: CronSchedule | None
        _rng: random.Random | None

        def _tick_start(
            self,
            scheduled_at: float,
            catch_up: _CatchUp | None,
            fire_time: datetime.datetime | None,
            trigger: Trigger | None = None,
        ) -> _Outcome | _Rest: ...
        def _skip(
            self,
            reason: SkipReason,
            scheduled_at: float,
            *,
            count: int = 1,
            error: BaseException | None = None,
        ) -> Skipped: ...

        # Clocks
        def _wall_now(self) -> datetime.datetime: ...
        def _cron_due(self, fire: datetime.datetime) -> float: ...
        def _hand_over(self, rest: _Rest, then: Callable[[_Outcome], object]) -> None: ...
        def _arm_now(self) -> None: ...
        def _retry_until(self) -> float: ...
        @property
        def _every(self) -> float: ...

        def _tick(
            self,
            scheduled_at: float,
            catch_up: _CatchUp | None,
            fire_time: datetime.datetime | None,
            trigger: Trigger | None = None,
        ) -> Coroutine[Any, Any, _Outcome]: ...
        def _tick_over(self) -> None: ...
        async def _explicit_tick(self, trigger: Trigger, *, quiet: bool = False) -> _Outcome: ...
        def _count_again(self) -> None: ...

        # Durable
        def _plan_from_store(self, record: JobState) -> None: ...
        def _tick_backlog(self, schedule: _Schedule) -> None: ...

else:

    class Parts:
        __slots__ = ()


class Clocks(Parts):
    """Arming the timer, and the interval and cron clocks of :class:`~periodic.Periodic`."""

    __slots__ = ()

    # -- serving ------------------------------------------------------------------------

    def _arm_first(self, record: JobState | None) -> None:
        state = self._state
        context = state.context
        assert context is not None
        state.fire = None
        if state.schedule is not None:
            due_now = self._cron_due_now
        elif self.delay_mode is DelayMode.SHIFTED:
            due_now = self._shifted_due_now
        else:
            due_now = self._regular_due_now
        state.alarm = Alarm(context, due_now, self._crashed)
        state.ticking = True
        if state.schedule is not None:
            if record is None:
                state.fire = self._first_fire(state.schedule)
            else:
                self._plan_from_store(record)
            self._arm_for_fire(self._draw_offset())
        else:
            state.k = 0
            state.base = state.due = trio.current_time() + self._first_delay
            state.next_tick_at = at = state.due + self._draw_offset()
            state.alarm.arm(at)

    def _arm_for_fire(self, offset: float) -> None:
        """Arm for ``state.fire`` (jittered by ``offset``), or at once for a backlog."""
        state = self._state
        assert state.fire is not None
        assert state.alarm is not None
        state.offset = offset
        now = trio.current_time()
        wait = (state.fire - self._wall_now()).total_seconds() + offset
        if wait > 0 and not state.backlog:
            state.next_tick_at = now + wait
        state.alarm.arm(now + (0.0 if state.backlog else min(max(wait, 0.0), _WALL_RECHECK)))

    def _draw_offset(self) -> float:
        # A tick's jitter: it moves that tick only, never the grid or the next tick.
        rng = self._rng
        return 0.0 if rng is None else rng.random() * self.jitter

    def _retry_until(self) -> float:
        """When the tick after the one now starting a run is due (un-jittered): no retry
        of the run starts at or after it."""
        state = self._state
        if self.retry is None or not state.ticking:
            return math.inf  # no retries, or a manual tick: no next tick is due
        if state.in_backlog:
            return -math.inf  # a caught-up slot: the next one follows at once
        if state.schedule is not None:
            assert state.fire is not None
            return self._cron_due(state.schedule.next_after(state.fire).astimezone(UTC))
        if self.delay_mode is DelayMode.SHIFTED:
            return math.inf  # the next tick waits for the run
        return state.base + (state.k + 1) * self._every

    def _wake(self) -> None:
        state = self._state
        # Not waiting: a cancellation woke serve first, and it is on its way out (it
        # closes what was handed over). Waking it again would wake it twice.
        if not state.waiting:
            return
        state.waiting = False
        assert state.parked is not None
        trio.lowlevel.reschedule(state.parked)

    def _abort_park(self, raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
        self._state.waiting = False
        return trio.lowlevel.Abort.SUCCEEDED

    def _hand_over(self, rest: _Rest, then: Callable[[_Outcome], object]) -> None:
        """Let the serve task finish this tick: await ``rest``, then call ``then`` with
        what it returned (which arms the next tick)."""
        state = self._state
        state.rest = rest
        state.then = then
        state.busy = True
        self._wake()

    def _tick_over(self) -> None:
        """An awaited tick is over: let a waiting trigger, or a deferred tick, go on."""
        state = self._state
        state.busy = False
        if state.idle is not None:
            state.idle.set()
            state.idle = None
        if state.deferred:
            state.deferred = False
            self._arm_now()

    def _put_off(self) -> bool:
        """Whether an automatic tick, now due, waits for a trigger under way."""
        state = self._state
        if state.busy:
            state.deferred = True
            return True
        return False

    def _crashed(self, exc: BaseException) -> None:
        # What a tick raised (a guard's BaseException, a broken wall clock, a bug)
        # comes out of serve, as if serve had ticked in its own task.
        self._state.crash = exc
        self._wake()

    def _stop_ticking(self) -> BaseException | None:
        """Stop ticking and forget everything of this serve; what a tick raised as serve
        was being cancelled (it is raised from serve, not lost)."""
        state = self._state
        state.ticking = False
        state.next_tick_at = None
        if state.alarm is not None:
            state.alarm.disarm()
            state.alarm = None
        if state.rest is not None:  # handed over, but serve was cancelled first
            state.rest.close()
            state.rest = None
        guard, state.guard = state.guard, None
        if inspect.iscoroutine(guard):  # an async guard's call, never awaited
            guard.close()
        state.then = None
        state.busy = state.deferred = False
        if state.idle is not None:  # a trigger waiting: it finds serve gone
            state.idle.set()
            state.idle = None
        state.in_backlog = False
        state.backlog.clear()
        state.replan = None
        state.parked = None
        state.waiting = False
        crash, state.crash = state.crash, None
        return crash

    # -- the interval clock ------------------------------------------------------------

    def _regular_due_now(self) -> None:
        if self._state.busy and self._put_off():
            return
        due, _ = self._catch_up_regular()  # (a late wake-up: the missed-tick rule)
        if self._plain:
            self._runs.spawn(due, None, None, self._retry_until())
        else:
            outcome = self._tick_start(due, self._catch_up_regular, None)
            if not isinstance(outcome, DECIDED):
                self._hand_over(outcome, self._next_regular_after)
                return
        self._next_regular()

    def _next_regular_after(self, outcome: _Outcome) -> None:
        self._next_regular()

    def _next_regular(self) -> None:
        state = self._state
        # Regular ticks sit on a grid base + k * every: computing each from k (rather
        # than adding every to the last one) keeps float error from accumulating into
        # drift.
        state.k += 1
        state.due = due = state.base + state.k * self._every
        state.next_tick_at = at = due + self._draw_offset() if self._rng else due
        assert state.alarm is not None
        state.alarm.arm(at)

    def _catch_up_regular(self) -> tuple[float, datetime.datetime | None]:
        # Coalesce the ticks this one is late for into one "missed" event; the tick
        # then stands in for the latest one due.
        state = self._state
        every = self._every
        late = trio.current_time() - state.due
        if late >= every:
            missed = int(late // every)
            self._skip(SkipReason.MISSED, state.due, count=missed)
            state.k += missed
            state.due = state.base + state.k * every
        return state.due, None

    def _shifted_due_now(self) -> None:
        if self._state.busy and self._put_off():
            return
        self._state.next_tick_at = None
        outcome = self._tick_start(self._state.due, None, None)
        if not isinstance(outcome, DECIDED):
            self._hand_over(outcome, self._after_shifted)
        else:
            self._after_shifted(outcome)

    def _after_shifted(self, outcome: _Outcome) -> None:
        # The pause counts from the end of the run.
        if isinstance(outcome, Run):
            outcome.on_done = self._next_shifted
        else:
            self._next_shifted()

    def _next_shifted(self) -> None:
        state = self._state
        if not state.ticking:
            return
        state.due = due = trio.current_time() + self._every
        state.next_tick_at = at = due + self._draw_offset()
        assert state.alarm is not None
        state.alarm.arm(at)

    @property
    def _is_async(self) -> bool:
        return self._runs.is_async

    @property
    def _every(self) -> float:
        assert self._interval is not None
        return self._interval

    @property
    def _plain(self) -> bool:
        # Nothing to decide at a tick: spawn at once.
        return (
            self.when is None
            and self.peer is None
            and self.on_overlap is Overlap.RUN
            and not self._state.paused
        )

    # -- the cron clock ----------------------------------------------------------------

    def _wall_now(self) -> datetime.datetime:
        """The wall clock, in UTC: comparisons between zones are unreliable around DST."""
        now = (self.wall_clock or utc_now)()
        if not isinstance(now, datetime.datetime) or now.utcoffset() is None:
            raise TypeError(f"wall_clock must return an aware datetime, got {now!r}")
        return now.astimezone(UTC)

    def _first_fire(self, schedule: _Schedule) -> datetime.datetime:
        wall = self._wall_now()
        fire = schedule.next_after(wall).astimezone(UTC)
        self._state.next_tick_at = trio.current_time() + (fire - wall).total_seconds()
        return fire

    def _cron_due_now(self) -> None:
        """Tick at the schedule's wall-clock fire times.

        The wait is on Trio's clock, but the wall clock is read again at every wake-up
        (at least every ``_WALL_RECHECK`` seconds): when it jumped, the wait is
        recomputed, so a run never fires early, and as the next fire time always follows
        the last one fired, a jump backwards never repeats a run.
        """
        state = self._state
        if state.busy and self._put_off():
            return
        schedule = state.schedule
        assert schedule is not None
        assert state.alarm is not None
        if state.replan is not None:  # leadership gained: catch up from the store
            record, state.replan = state.replan, None
            self._plan_from_store(record)
        if state.backlog:
            self._tick_backlog(schedule)
            return
        assert state.fire is not None
        wait = (state.fire - self._wall_now()).total_seconds() + state.offset
        if wait > 0:
            now = trio.current_time()
            state.next_tick_at = now + wait
            state.alarm.arm(now + min(wait, _WALL_RECHECK))
            return
        state.fire = self._cron_catch_up(schedule, state.fire)
        outcome = self._tick_start(
            self._cron_due(state.fire),
            self._catch_up_cron if self.on_overlap is Overlap.STOP_PREVIOUS else None,
            state.fire.astimezone(schedule.tz),
        )
        if not isinstance(outcome, DECIDED):
            self._hand_over(outcome, self._next_cron_after)
        else:
            self._next_cron()

    def _next_cron_after(self, outcome: _Outcome) -> None:
        self._next_cron()

    def _next_cron(self) -> None:
        state = self._state
        assert state.schedule is not None
        assert state.fire is not None
        assert state.alarm is not None
        state.fire = state.schedule.next_after(state.fire).astimezone(UTC)
        state.offset = self._draw_offset()
        state.alarm.arm(trio.current_time())  # its wait is computed when it comes due

    def _catch_up_cron(self) -> tuple[float, datetime.datetime | None]:
        # After a stop_previous wait: fire times passed meanwhile are missed too.
        state = self._state
        assert state.schedule is not None
        assert state.fire is not None
        state.fire = self._cron_catch_up(state.schedule, state.fire)
        return self._cron_due(state.fire), state.fire.astimezone(state.schedule.tz)

    def _cron_due(self, fire: datetime.datetime) -> float:
        """When ``fire`` (a wall-clock time now past) was due, on Trio's clock."""
        return trio.current_time() - (self._wall_now() - fire).total_seconds()

    def _cron_catch_up(self, schedule: _Schedule, fire: datetime.datetime) -> datetime.datetime:
        """The latest fire time at or before the wall clock, from ``fire`` (due).

        The fire times passed over are reported in one ``Skipped("missed")``; past
        ``_MAX_MISSED_COUNT`` they are not counted one by one (a long suspend of a
        per-second schedule): the latest one is found by bisection, and the count says
        how many were counted.
        """
        wall = self._wall_now()
        first = fire
        missed = 0
        while True:
            later = schedule.next_after(fire).astimezone(UTC)
            if later > wall:
                break
            missed += 1
            fire = later
            if missed == _MAX_MISSED_COUNT:
                fire = latest_fire(schedule, fire, wall)
                break
        if missed:
            late = (wall - first).total_seconds()
            self._skip(SkipReason.MISSED, trio.current_time() - late, count=missed)
        return fire
