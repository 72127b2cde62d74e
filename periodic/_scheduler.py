"""The scheduler: :class:`Periodic`, its options, ``serve``, its clocks and its tick.

A served job does not sleep in a task of its own: it arms an alarm of the run's one
timer (:mod:`periodic._timer`) with its next due time, and the tick happens in the timer's
callback. A tick that decides synchronously (no awaitable guard, no stop_previous wait)
starts its run right there; one that must wait is handed to the ``serve`` task, which
otherwise stays parked and owns the job's runs.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime
import functools
import inspect
import logging
import math
import random
import types
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from . import _options
from ._cron import UTC, CronSchedule, IntervalGrid, latest_fire, parse_schedule, utc_now
from ._events import EventSource, Finished, Outcome, Skipped, SkipReason, emit
from ._options import CatchUp, DelayMode, Mode, Overlap
from ._retry import Retry, check_retry
from ._runs import Run, Runs, Statistics
from ._timer import Alarm
from .exceptions import NotInManualMode
from .peers._base import Peer, default_node
from .stores._base import JobState, Store

_log = logging.getLogger("periodic")

# A cron job re-reads the wall clock at least this often (seconds) while it waits, to
# notice a clock that jumped.
_WALL_RECHECK = 30.0
# Counting missed fire times stops here, so a long suspend of a per-second schedule
# does not cost a long loop.
_MAX_MISSED_COUNT = 10_000
# Jitter with cron= is at most this (seconds): its gaps are the user's concern below it.
_MAX_CRON_JITTER = 3600.0
# Missed slots that catch_up="all" runs (within its window) or counts, at most.
_MAX_CATCH_UP = 100_000
# Skip reasons only a job with a store can have (its statistics show them).
_STORE_REASONS = frozenset({SkipReason.CLAIMED, SkipReason.STORE_ERROR})
# Error texts kept in a store are cut at this length.
_ERROR_TEXT = 2000
# What a tick returns once it has decided; anything else is the rest of the tick.
_DECIDED = (Run, Skipped, type(None))

if TYPE_CHECKING:
    from typing import TypeAlias

    _Outcome: TypeAlias = Run | Skipped | None
    # A tick that has to wait: what is left of it, for the serve task to await.
    _Rest: TypeAlias = Coroutine[Any, Any, _Outcome]
    # Wall-clock slots: a crontab, or an interval job's grid kept in a store.
    _Schedule: TypeAlias = CronSchedule | IntervalGrid
    # A missed-tick rule re-applied after a stop_previous wait: the tick's new due time.
    _CatchUp: TypeAlias = Callable[[], tuple[float, datetime.datetime | None]]


@attrs.define(eq=False)
class _State:
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
    # The parked serve task: woken to await the rest of a tick, or to raise a crash.
    parked: trio.lowlevel.Task | None = None
    rest: _Rest | None = None
    crash: BaseException | None = None


@attrs.frozen(kw_only=True, eq=False, repr=False)
class Periodic(EventSource):
    """A job run on a schedule, each run in a task of its own.

    Make one with keyword options, then serve it in a nursery::

        job = Periodic(run=cleanup, every=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)

    Give exactly one schedule: ``every`` or ``cron``. Options (see the *Options* page of
    the docs for every detail):

    Args:
        run: The job: a zero-argument async function (awaited) or sync function (run in
            a worker thread).
        every: The interval between ticks: seconds (``int``/``float``, > 0, finite), a
            ``timedelta``, or a duration string such as ``"90s"``, ``"1h30m"``, ``"250ms"``
            (units ``d h m s ms``, largest first).
        cron: A crontab spec read on the wall clock of ``tz``: 5 fields
            (``"0 2 * * *"``), 6 with seconds first, a macro (``"@daily"``, ``"@hourly"``,
            …) or ``"@every 1h30m"``. Needs the ``cron`` extra (``cronsim``).
        tz: For ``cron``: an IANA zone name (``"Europe/Berlin"``) or a ``tzinfo``;
            default UTC. DST gaps fire once at the jump, repeated hours once.
        initial_delay: Interval jobs: time from the start of ``serve`` to the first
            tick; >= 0. Default: ``every``.
        delay_mode: Interval jobs: ``"regular"`` (fixed rate, the default) or
            ``"shifted"`` (fixed pause after each run).
        when: A guard called (and awaited if it returns an awaitable) at each tick; a
            false result skips the tick.
        on_overlap: ``"run"`` (default), ``"ignore"`` or ``"stop_previous"``.
        timeout: Seconds a run may take before it is cancelled; ``None`` or ``math.inf``
            (default: ``None``) for no limit.
        job_shutdown: Seconds running instances get to finish when ``serve`` is
            cancelled, before they are cancelled; ``math.inf`` waits for them. Default 5.
        name: The job's name in events, logs and telemetry. Default: the function's
            ``__qualname__``.
        mode: ``"auto"`` (default) ticks by the clock; ``"manual"`` only when told to by
            :mod:`periodic.testing`.
        peer: A :class:`periodic.peers.Peer`: a tick starts a run only while it leads,
            and the run carries its fence. Default ``None``: no leadership guard.
        cancel_on_leadership_loss: With a ``peer``, cancel the runs started under a
            leadership once it is lost (default ``True``); ``False`` lets them finish,
            for jobs that fence their own writes.
        wall_clock: For ``cron``: a zero-argument function returning the wall time as an
            aware ``datetime``, read instead of the system clock (for tests).
        retry: A :class:`periodic.Retry`: a run whose job raised is tried again within
            its tick, after a growing wait. Default ``None``: no retry.
        jitter: Seconds (or a ``timedelta``, or a duration string): each tick is
            delayed by a random offset in ``[0, jitter)``, drawn per tick; the grid
            itself never moves. Less than the interval; at most an hour with ``cron``.
            Default 0.
        jitter_rng: The ``random.Random`` the offsets come from (a seeded one makes
            tests exact). Default: one of the job's own.

    Raises:
        TypeError: An option has the wrong type, ``run`` is missing, is a coroutine
            object or needs arguments, no schedule was given, or an unknown keyword was
            given.
        ValueError: An option has a value out of range, or options that exclude each
            other were given together (each message names the option and what it
            accepts).
    """

    run: Callable[[], Any] = attrs.field(converter=_options.check_run)
    every: float | None = attrs.field(default=None, converter=_options.every)
    cron: str | None = attrs.field(default=None, converter=_options.check_cron)
    tz: str | datetime.tzinfo | None = attrs.field(default=None, converter=_options.check_tz)
    initial_delay: float | None = attrs.field(converter=_options.initial_delay)
    delay_mode: DelayMode | None = attrs.field(converter=_options.delay_mode)
    when: Callable[[], Any] | None = attrs.field(default=None, converter=_options.check_when)
    on_overlap: Overlap = attrs.field(default=Overlap.RUN, converter=_options.on_overlap)
    timeout: float = attrs.field(default=None, converter=_options.timeout)
    job_shutdown: float = attrs.field(default=5.0, converter=_options.job_shutdown)
    # Whether name= was given (a store needs it): set to False by name's default.
    _name_given: bool = attrs.field(init=False, default=True)
    name: str = attrs.field(converter=_options.check_name)
    mode: Mode = attrs.field(default=Mode.AUTO, converter=_options.mode)
    peer: Peer | None = attrs.field(default=None, converter=_options.check_peer)
    cancel_on_leadership_loss: bool = attrs.field(
        default=True, converter=_options.check_cancel_on_leadership_loss
    )
    wall_clock: Callable[[], datetime.datetime] | None = attrs.field(
        default=None, converter=_options.check_wall_clock
    )
    store: Store | None = attrs.field(default=None, converter=_options.check_store)
    catch_up: CatchUp = attrs.field(default=CatchUp.LATEST, converter=_options.catch_up)
    catch_up_window: float | None = attrs.field(default=None, converter=_options.catch_up_window)
    retry: Retry | None = attrs.field(default=None, converter=check_retry)
    jitter: float = attrs.field(default=0.0, converter=_options.jitter)
    jitter_rng: random.Random | None = attrs.field(
        default=None, converter=_options.check_jitter_rng
    )

    _state: _State = attrs.field(init=False, factory=_State)
    _runs: Runs = attrs.field(init=False)
    # The schedule, resolved from every/cron/tz: an interval, or a cron schedule.
    _interval: float | None = attrs.field(init=False, default=None)
    _first_delay: float = attrs.field(init=False, default=0.0)
    _schedule: CronSchedule | None = attrs.field(init=False, default=None)
    # The job this one is a copy of (see copy_job), for event filters.
    _origin: Periodic | None = attrs.field(init=False, default=None)
    # Where the jitter comes from (made only for a job with jitter: it is 2.5 KB).
    _rng: random.Random | None = attrs.field(init=False, default=None)

    @initial_delay.default
    def _initial_delay_default(self) -> float | None:
        return self.every

    @delay_mode.default
    def _delay_mode_default(self) -> DelayMode | None:
        return DelayMode.REGULAR if self.cron is None else None

    def __attrs_post_init__(self) -> None:
        self._check_store_options()
        if self.every is None and self.cron is None:
            raise TypeError(
                "Periodic needs a schedule: every= (seconds, a timedelta or a duration "
                "such as '90s') or cron= (a crontab spec such as '0 2 * * *')"
            )
        if self.cron is None:
            if self.tz is not None:
                raise ValueError(f"tz applies only to cron= schedules, got tz={self.tz!r}")
            # Explicit None for these means the default, as if they were not given.
            if self.initial_delay is None:
                object.__setattr__(self, "initial_delay", self.every)
            if self.delay_mode is None:
                object.__setattr__(self, "delay_mode", DelayMode.REGULAR)
            object.__setattr__(self, "_interval", self.every)
            object.__setattr__(self, "_first_delay", self.initial_delay)
            self._check_jitter()
            return
        if self.every is not None:
            raise ValueError(
                f"every= and cron= are mutually exclusive: give one (got every={self.every!r} "
                f"and cron={self.cron!r})"
            )
        for option in ("delay_mode", "initial_delay"):
            if getattr(self, option) is not None:
                raise ValueError(
                    f"{option} does not apply to cron= schedules (got "
                    f"{option}={getattr(self, option)!r} with cron={self.cron!r})"
                )
        schedule = parse_schedule(self.cron, self.tz)
        if isinstance(schedule, float):  # "@every 1h": an interval, as every="1h" would be
            object.__setattr__(self, "_interval", schedule)
            object.__setattr__(self, "_first_delay", schedule)
        else:
            object.__setattr__(self, "_schedule", schedule)
        self._check_jitter()

    def _check_store_options(self) -> None:
        if self.store is None:
            if self.catch_up is not CatchUp.LATEST or self.catch_up_window is not None:
                raise ValueError(
                    "catch_up and catch_up_window apply only to jobs with a store= (what "
                    "fell due while no process ran the job is known only to a store)"
                )
            return
        if not self._name_given:
            raise ValueError(
                "a job with a store= needs an explicit name=: it is the job's durable "
                f"identity in the store (got store={self.store!r} and no name)"
            )
        if self.catch_up is CatchUp.ALL and self.catch_up_window is None:
            raise ValueError(
                "catch_up='all' needs catch_up_window= (seconds): how far back missed "
                "slots are still run"
            )

    def _check_jitter(self) -> None:
        if not self.jitter:
            return
        if self._interval is not None and not self.jitter < self._interval:
            raise ValueError(
                f"jitter must be less than the interval between ticks ({self._interval:g} s), "
                f"got jitter={self.jitter!r}"
            )
        if self._schedule is not None and self.jitter > _MAX_CRON_JITTER:
            raise ValueError(
                f"jitter must be at most {_MAX_CRON_JITTER:g} s (1 hour) with cron=, got "
                f"jitter={self.jitter!r}"
            )
        object.__setattr__(self, "_rng", self.jitter_rng or random.Random())

    @name.default
    def _name_default(self) -> str:
        object.__setattr__(self, "_name_given", False)
        return _options.default_name(self.run)

    @_runs.default
    def _runs_default(self) -> Runs:
        return Runs(
            name=self.name,
            fn=self.run,
            is_async=_options.is_async_callable(self.run),
            timeout=self.timeout,
            job_shutdown=self.job_shutdown,
            peer=self.peer,
            cancel_on_leadership_loss=self.cancel_on_leadership_loss,
            keys=(self,),
            retry=self.retry,
        )

    def __repr__(self) -> str:
        if self.cron is not None:
            when = f"cron={self.cron!r}, tz={self.tz!r}"
        else:
            assert self.delay_mode is not None
            when = f"every={self.every!r}, delay_mode={self.delay_mode.value!r}"
        return f"Periodic(name={self.name!r}, {when}, mode={self.mode.value!r})"

    # -- public API -------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether ``serve`` is running (from its start until it has returned)."""
        return self._state.serving

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the scheduler until cancelled.

        Start it with ``await nursery.start(job.serve)``: that returns once the first tick
        is armed. When ``serve`` is cancelled it stops ticking, gives running instances
        ``job_shutdown`` seconds to finish, cancels the rest, and returns once every run
        (and every worker thread of a sync job) is over. A ``Periodic`` can be served again
        after ``serve`` has returned.

        Raises:
            RuntimeError: This ``Periodic`` is already being served.
            TypeError: ``wall_clock`` returned something else than an aware datetime.
            BaseException: Whatever the ``when`` guard, the peer's ``is_leader()`` or an
                event handler raised that is not an :class:`Exception` (a guard's
                ``Exception`` only skips the tick).
        """
        state = self._state
        if state.serving:
            raise RuntimeError(
                f"{self!r} is already being served; a Periodic can be served by one task "
                "at a time (make another Periodic to run the job twice)"
            )
        store = self.store
        if store is not None and not store.serving:
            raise RuntimeError(
                f"{self!r}: its store {store!r} is not being served; start it first, e.g. "
                "await nursery.start(store.serve)"
            )
        if self._schedule is not None or store is not None:
            self._wall_now()  # a broken wall clock fails here, not inside the nursery
        state.serving = True
        try:
            record = None
            state.schedule = self._schedule
            if store is not None:
                record = await self._register(store)
            async with trio.open_nursery() as nursery:
                self._runs.open(nursery)
                if store is not None and self.peer is not None and self.mode is Mode.AUTO:
                    nursery.start_soon(self._watch_gains, self.peer, store)
                try:
                    # Arm, report started, and let go of task_status: holding it for the
                    # scheduler's life would keep nursery.start's machinery alive.
                    if self.mode is Mode.MANUAL:
                        state.tick_lock = trio.Lock()
                        task_status.started()
                        del task_status
                        await trio.sleep_forever()
                    else:
                        self._arm_first(record)
                        task_status.started()
                        del task_status
                        # Parked as cheaply as Trio allows: an idle scheduler is this
                        # frame, its nursery and its task. Woken (_wake) to await the
                        # rest of a tick, or to raise what crashed one.
                        state.parked = trio.lowlevel.current_task()
                        while True:
                            await trio.lowlevel.wait_task_rescheduled(_abort_park)
                            crash, state.crash = state.crash, None
                            if crash is not None:
                                raise crash
                            rest, state.rest = state.rest, None
                            if rest is not None:
                                await rest
                finally:
                    self._stop_ticking()
                    await self._runs.shutdown()
        finally:
            state.serving = False
            state.tick_lock = None
            state.schedule = None
            state.backlog.clear()

    def statistics(self) -> Statistics:
        """Return a frozen snapshot of this scheduler's counters."""
        runs = self._runs
        return Statistics(
            runs_started=runs.runs_started,
            running=len(runs.running),
            finished=types.MappingProxyType({str(k): runs.finished.get(k, 0) for k in Outcome}),
            skipped=types.MappingProxyType(
                {
                    str(k): self._state.skipped.get(k, 0)
                    for k in SkipReason
                    if self.store is not None or k not in _STORE_REASONS
                }
            ),
            next_tick_at=self._state.next_tick_at,
        )

    # -- serving ------------------------------------------------------------------------

    def _arm_first(self, record: JobState | None) -> None:
        state = self._state
        # Ticks run in the timer's task: give them serve's context, as the runs they
        # start would have had with a scheduler task of their own.
        context = contextvars.copy_context()
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
        task = self._state.parked
        assert task is not None
        trio.lowlevel.reschedule(task)

    def _hand_over(self, rest: _Rest) -> None:
        self._state.rest = rest
        self._wake()

    def _crashed(self, exc: BaseException) -> None:
        # What a tick raised (a guard's BaseException, a broken wall clock, a bug)
        # comes out of serve, as if serve had ticked in its own task.
        self._state.crash = exc
        self._wake()

    def _stop_ticking(self) -> None:
        state = self._state
        state.ticking = False
        state.next_tick_at = None
        if state.alarm is not None:
            state.alarm.disarm()
            state.alarm = None
        if state.rest is not None:  # handed over, but serve was cancelled first
            state.rest.close()
            state.rest = None
        state.parked = None

    # -- the store: registration and catch-up ------------------------------------------

    async def _register(self, store: Store) -> JobState:
        """The job's record, made on its first serve; its interval grid, if it has one."""
        wall = self._wall_now()
        record = await store.register(
            self.name,
            schedule=self._schedule_text(),
            anchor=wall + datetime.timedelta(seconds=self._first_delay),
        )
        if self._schedule is None and self.delay_mode is not DelayMode.SHIFTED:
            # The grid is the store's: the same on every process and across restarts.
            self._state.schedule = IntervalGrid.of(record.anchor, self._every)
        return record

    def _schedule_text(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} {self.tz or 'UTC'}"
        return f"every {self._every:g}s" + (
            " shifted" if self.delay_mode is DelayMode.SHIFTED else ""
        )

    def _plan_from_store(self, record: JobState) -> None:
        """Set the next fire time from what the store knows: the slots that fell due
        after the last claimed one and by now were missed, and ``catch_up`` says what
        becomes of them."""
        state = self._state
        schedule = state.schedule
        assert schedule is not None
        wall = self._wall_now()
        last = record.last_slot
        if last is None:  # a first serve has missed nothing
            if isinstance(schedule, IntervalGrid) and record.anchor >= wall:
                state.fire = record.anchor
            else:
                state.fire = schedule.next_after(wall).astimezone(UTC)
            return
        peer = self.peer
        if peer is not None and not peer.is_leader():
            # A follower: the leader catches up; this process does when it gains.
            state.fire = schedule.next_after(max(last, wall)).astimezone(UTC)
            return
        first = schedule.next_after(last).astimezone(UTC)
        if first > wall:
            state.fire = first
            return
        window = self.catch_up_window
        oldest_kept = None if window is None else wall - datetime.timedelta(seconds=window)
        policy = self.catch_up
        if policy is CatchUp.LATEST:
            latest = self._latest_slot(schedule, first, wall)
            if oldest_kept is None or latest >= oldest_kept:
                # Tick for the oldest: the missed-tick rule moves it to the latest and
                # reports the others.
                state.fire = first
                return
        missed = self._slots(schedule, first, wall)
        if policy is CatchUp.ALL:
            assert oldest_kept is not None
            kept = [slot for slot in missed if slot >= oldest_kept]
            dropped = len(missed) - len(kept)
            state.backlog.extend(kept)
        else:
            dropped = len(missed)
        if dropped:
            self._skip(SkipReason.MISSED, self._cron_due(first), count=dropped)
        state.fire = schedule.next_after(wall).astimezone(UTC)

    def _slots(
        self, schedule: _Schedule, first: datetime.datetime, wall: datetime.datetime
    ) -> list[datetime.datetime]:
        """The slots from ``first`` to ``wall``, both included (at most a bounded many)."""
        slots: list[datetime.datetime] = []
        slot = first
        while slot <= wall and len(slots) < _MAX_CATCH_UP:
            slots.append(slot)
            slot = schedule.next_after(slot).astimezone(UTC)
        return slots

    def _latest_slot(
        self, schedule: _Schedule, first: datetime.datetime, wall: datetime.datetime
    ) -> datetime.datetime:
        later = schedule.next_after(first).astimezone(UTC)
        return first if later > wall else latest_fire(schedule, later, wall)

    def _tick_backlog(self, schedule: _Schedule) -> None:
        """Tick for the oldest missed slot of ``catch_up="all"``; the next one follows
        once its run is over."""
        state = self._state
        slot = state.backlog.popleft()
        state.in_backlog = True
        try:
            outcome = self._tick_start(self._cron_due(slot), None, slot.astimezone(schedule.tz))
        finally:
            state.in_backlog = False
        if not isinstance(outcome, _DECIDED):
            self._hand_over(self._backlog_rest(outcome))
        else:
            self._after_backlog(outcome)

    async def _backlog_rest(self, rest: _Rest) -> _Outcome:
        self._state.in_backlog = True
        try:
            outcome = await rest
        finally:
            self._state.in_backlog = False
        self._after_backlog(outcome)
        return outcome

    def _after_backlog(self, outcome: _Outcome) -> None:
        if isinstance(outcome, Run):
            outcome.on_done = self._arm_now
        else:
            self._arm_now()

    def _arm_now(self) -> None:
        state = self._state
        if state.ticking and state.alarm is not None:
            state.alarm.arm(trio.current_time())

    async def _watch_gains(self, peer: Peer, store: Store) -> None:
        """When this process gains the leadership, catch up from the store what the
        cluster missed (a leader that died, a hand-over)."""
        state = self._state
        held = peer.fence
        while True:
            await peer.wait_change()
            fence = peer.fence
            if fence is None or fence == held:
                held = fence
                continue
            held = fence
            try:
                record = await store.job(self.name)
            except Exception as exc:
                _log.warning(
                    "job %r: leadership gained, but the store could not say what was missed: %r",
                    self.name,
                    exc,
                    extra={"periodic_job": self.name},
                )
                continue
            if record is None or state.alarm is None:
                continue
            state.replan = record
            if state.alarm.armed:  # (else a tick is under way, and re-arms when done)
                state.alarm.arm(trio.current_time())

    # -- the interval clock ------------------------------------------------------------

    def _regular_due_now(self) -> None:
        due, _ = self._catch_up_regular()  # (a late wake-up: the missed-tick rule)
        if self._plain:
            self._runs.spawn(due, None, None, self._retry_until())
        else:
            outcome = self._tick_start(due, self._catch_up_regular, None)
            if not isinstance(outcome, _DECIDED):
                self._hand_over(self._regular_rest(outcome))
                return
        self._next_regular()

    async def _regular_rest(self, rest: _Rest) -> _Outcome:
        outcome = await rest
        self._next_regular()
        return outcome

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
        self._state.next_tick_at = None
        outcome = self._tick_start(self._state.due, None, None)
        if not isinstance(outcome, _DECIDED):
            self._hand_over(self._shifted_rest(outcome))
        else:
            self._after_shifted(outcome)

    async def _shifted_rest(self, rest: _Rest) -> _Outcome:
        outcome = await rest
        self._after_shifted(outcome)
        return outcome

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
        return self.when is None and self.peer is None and self.on_overlap is Overlap.RUN

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
        if not isinstance(outcome, _DECIDED):
            self._hand_over(self._cron_rest(outcome))
        else:
            self._next_cron()

    async def _cron_rest(self, rest: _Rest) -> _Outcome:
        outcome = await rest
        self._next_cron()
        return outcome

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

    # -- the tick ----------------------------------------------------------------------

    def _tick_start(
        self,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
    ) -> _Outcome | _Rest:
        """Apply the guards in order; start a run unless one of them says no.

        Returns the run, the Skipped event when no run started, ``None`` when serve is
        shutting down, or — when a guard must be awaited — the rest of the tick, a
        coroutine that returns one of those. ``catch_up`` re-applies the missed-tick rule
        after a stop_previous wait and returns the tick's new due time.
        """
        when = self.when
        if when is not None:
            try:
                verdict = when()
                if inspect.isawaitable(verdict):
                    return self._tick_awaiting_guard(verdict, scheduled_at, catch_up, fire_time)
                go = bool(verdict)
            except Exception as exc:
                return self._skip(SkipReason.GUARD_ERROR, scheduled_at, error=exc)
            if not go:
                return self._skip(SkipReason.GUARD, scheduled_at)
        return self._tick_guarded(scheduled_at, catch_up, fire_time)

    async def _tick_awaiting_guard(
        self,
        verdict: Any,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
    ) -> _Outcome:
        try:
            go = bool(await verdict)
        except Exception as exc:
            return self._skip(SkipReason.GUARD_ERROR, scheduled_at, error=exc)
        if not go:
            return self._skip(SkipReason.GUARD, scheduled_at)
        outcome = self._tick_guarded(scheduled_at, catch_up, fire_time)
        if not isinstance(outcome, _DECIDED):
            return await outcome
        return outcome

    def _tick_guarded(
        self,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
    ) -> _Outcome | _Rest:
        """The leader and overlap guards, then the run."""
        peer = self.peer
        if peer is not None and not peer.is_leader():
            return self._skip(SkipReason.NOT_LEADER, scheduled_at)
        running = self._runs.running
        if running:
            if self.on_overlap is Overlap.IGNORE:
                return self._skip(SkipReason.OVERLAP, scheduled_at)
            if self.on_overlap is Overlap.STOP_PREVIOUS:
                return self._tick_stopping(
                    list(running.values()), scheduled_at, catch_up, fire_time
                )
        return self._start_run(scheduled_at, fire_time)

    async def _tick_stopping(
        self,
        runs: list[Run],
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
    ) -> _Outcome:
        self._runs.stop(runs)
        for run in runs:
            await run.done.wait()
        if catch_up is not None:
            # The wait may have outlasted a period: don't start a run for a tick that
            # the next one would stop at once.
            scheduled_at, fire_time = catch_up()
        peer = self.peer
        if peer is not None and not peer.is_leader():
            # Leadership was lost while the previous runs unwound.
            return self._skip(SkipReason.NOT_LEADER, scheduled_at)
        outcome = self._start_run(scheduled_at, fire_time)
        if not isinstance(outcome, _DECIDED):
            return await outcome
        return outcome

    def _start_run(
        self, scheduled_at: float, fire_time: datetime.datetime | None
    ) -> _Outcome | _Rest:
        """The last guard, the claim of a job with a store, then the run."""
        peer = self.peer
        fence = None if peer is None else peer.fence
        if self.store is None:
            return self._runs.spawn(scheduled_at, fence, fire_time, self._retry_until())
        return self._claim_and_spawn(scheduled_at, fence, fire_time, self._retry_until())

    async def _claim_and_spawn(
        self,
        scheduled_at: float,
        fence: int | None,
        fire_time: datetime.datetime | None,
        retry_until: float,
    ) -> _Outcome:
        store = self.store
        assert store is not None
        wall = self._wall_now()
        # The slot: a cron fire time or a grid point; else the wall time it was due.
        slot = (
            fire_time.astimezone(UTC)
            if fire_time is not None
            else wall - datetime.timedelta(seconds=trio.current_time() - scheduled_at)
        )
        try:
            key = await store.claim(
                self.name, slot=slot, node=self._node, fence=fence, started_at=wall
            )
        except Exception as exc:  # never run unclaimed
            return self._skip(SkipReason.STORE_ERROR, scheduled_at, error=exc)
        if key is None:
            return self._skip(SkipReason.CLAIMED, scheduled_at)
        recorder = functools.partial(self._record_end, store, key)
        run = self._runs.spawn(
            scheduled_at, fence, fire_time or slot, retry_until, recorder=recorder
        )
        if run is None:  # shut down meanwhile: the slot was claimed, and ends unrun
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await store.finish(
                    self.name,
                    key,
                    outcome="cancelled",
                    finished_at=self._wall_now(),
                    duration=0.0,
                    error=None,
                )
        return run

    async def _record_end(self, store: Store, key: int, finished: Finished) -> None:
        error = None
        if finished.error is not None:
            error = f"{type(finished.error).__name__}: {finished.error}"[:_ERROR_TEXT]
        try:
            await store.finish(
                self.name,
                key,
                outcome=finished.outcome.value,
                finished_at=self._wall_now(),
                duration=finished.duration,
                error=error,
            )
        except Exception as exc:  # the run is over either way
            _log.warning(
                "job %r: the store could not record the end of run %d: %r",
                self.name,
                finished.run_id,
                exc,
                extra={"periodic_job": self.name, "periodic_run_id": finished.run_id},
            )

    @property
    def _node(self) -> str:
        return self.peer.node if self.peer is not None else _process_node()

    async def _tick(
        self,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
    ) -> _Outcome:
        outcome = self._tick_start(scheduled_at, catch_up, fire_time)
        if not isinstance(outcome, _DECIDED):
            return await outcome
        return outcome

    def _skip(
        self,
        reason: SkipReason,
        scheduled_at: float,
        *,
        count: int = 1,
        error: BaseException | None = None,
    ) -> Skipped:
        skipped = self._state.skipped
        skipped[reason] = skipped.get(reason, 0) + count
        event = Skipped(
            job=self.name, reason=reason, scheduled_at=scheduled_at, count=count, error=error
        )
        emit(event, self._runs.keys)
        return event


@functools.cache
def _process_node() -> str:
    """This process's node in a store's records, for jobs without a peer."""
    return default_node()


def _abort_park(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


# -- the toolkit's hooks (periodic.testing) -------------------------------------------------


def copy_job(job: Periodic, **changes: Any) -> Periodic:
    """A copy of ``job`` with options changed; event filters made with ``job`` (or with
    the job it is itself a copy of) see the copy's events too.

    Raises:
        TypeError, ValueError: A changed option is invalid.
    """
    copy = attrs.evolve(job, **changes)
    origin = job._origin or job
    object.__setattr__(copy, "_origin", origin)
    copy._runs.keys = (copy, origin)
    return copy


async def manual_tick(job: Periodic) -> Run | Skipped:
    """One tick of a manual-mode ``job``, due now; the run it started, or why not.

    Raises:
        NotInManualMode: The scheduler ticks by itself.
        RuntimeError: The scheduler is not being served (or is shutting down).
    """
    if job.mode is not Mode.MANUAL:
        raise NotInManualMode(
            f"{job!r} is in auto mode; only a Periodic made with mode='manual' can be "
            "ticked by hand (periodic.testing.manual(job) makes a manual copy)"
        )
    lock = job._state.tick_lock
    if lock is None or not job._runs.accepting:
        raise RuntimeError(
            f"{job!r} is not being served: start it first, e.g. await nursery.start(job.serve)"
        )
    await trio.lowlevel.checkpoint_if_cancelled()
    schedule = job._schedule
    fire_time = None if schedule is None else job._wall_now().astimezone(schedule.tz)
    if lock.locked():  # another manual tick is waiting: take turns
        async with lock:
            outcome = await job._tick(trio.current_time(), None, fire_time)
    else:
        start = job._tick_start(trio.current_time(), None, fire_time)
        if isinstance(start, _DECIDED):
            outcome = start
        else:
            lock.acquire_nowait()
            try:
                outcome = await start
            finally:
                lock.release()
    if outcome is None:
        raise RuntimeError(f"{job!r} stopped being served during the tick")
    return outcome
