"""The scheduler: :class:`Periodic`, its options, ``serve`` and its tick (its clocks are in
:mod:`periodic._clocks`, what it does with a store in :mod:`periodic._durable`).

A served job does not sleep in a task of its own: it arms an alarm of the run's one
timer (:mod:`periodic._timer`) with its next due time, and the tick happens in the timer's
callback. A tick that decides synchronously (no awaitable guard, no stop_previous wait)
starts its run right there; one that must wait is handed to the ``serve`` task, which
otherwise stays parked and owns the job's runs.
"""

from __future__ import annotations

import contextvars
import datetime
import inspect
import logging
import random
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from . import _options
from ._clocks import DECIDED, Clocks, State
from ._cron import CronSchedule, parse_schedule
from ._durable import Durable
from ._events import (
    EventSource,
    Outcome,
    Overdue,
    Recovered,
    RecoveredBy,
    Skipped,
    SkipReason,
    Started,
    emit,
)
from ._options import CatchUp, DelayMode, Mode, Overlap
from ._retry import Retry, check_retry
from ._runs import Run, Runs, Statistics
from ._timer import Alarm
from .exceptions import NotInManualMode
from .peers._base import Peer
from .stores._base import Store

_log = logging.getLogger("periodic")

# Jitter with cron= is at most this (seconds): its gaps are the user's concern below it.
_MAX_CRON_JITTER = 3600.0
# Skips that say the job is not this process's to run now: it cannot be overdue here.
_NOT_MINE = frozenset({SkipReason.PAUSED, SkipReason.NOT_LEADER, SkipReason.CLAIMED})
_RECOVERED_BY = {
    SkipReason.PAUSED: RecoveredBy.PAUSED,
    SkipReason.NOT_LEADER: RecoveredBy.NOT_LEADER,
    SkipReason.CLAIMED: RecoveredBy.CLAIMED,
}
# Skip reasons only a job with a store can have (its statistics show them).
_STORE_REASONS = frozenset({SkipReason.CLAIMED, SkipReason.STORE_ERROR})

if TYPE_CHECKING:
    from ._clocks import Trigger, _CatchUp, _Outcome, _Rest


@attrs.frozen(kw_only=True, eq=False, repr=False)
class Periodic(EventSource, Clocks, Durable):
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
        store: A :class:`periodic.stores.Store`: each tick claims its slot there before
            its run (no slot runs twice across processes), runs are recorded, and what
            fell due while no process ran the job is caught up. Needs ``name=``.
        catch_up: With a store: ``"latest"`` (default: run the latest missed slot at
            once), ``"none"``, or ``"all"`` (every missed slot within
            ``catch_up_window``).
        catch_up_window: With a store: seconds (or a ``timedelta``, or a duration
            string); missed slots older than that never run. Required by ``"all"``.
        retry: A :class:`periodic.Retry`: a run whose job raised is tried again within
            its tick, after a growing wait. Default ``None``: no retry.
        jitter: Seconds (or a ``timedelta``, or a duration string): each tick is
            delayed by a random offset in ``[0, jitter)``, drawn per tick; the grid
            itself never moves. Less than the interval; at most an hour with ``cron``.
            Default 0.
        jitter_rng: The ``random.Random`` the offsets come from (a seeded one makes
            tests exact). Default: one of the job's own.
        overdue_after: Seconds (or a ``timedelta``, or a duration string): the job is
            *overdue* when no run of it finished ``ok`` for that long, counted from the
            end of its last ``ok`` run, or from ``serve`` (or :meth:`resume`) when that is
            later; it then emits :class:`~periodic.events.Overdue` (once) and, when it is
            not overdue any more, :class:`~periodic.events.Recovered`. With a store, the
            store judges it too, for every process (``JobState.overdue``). Default
            ``None``: never overdue.

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
    overdue_after: float | None = attrs.field(default=None, converter=_options.overdue_after)

    _state: State = attrs.field(init=False, factory=State)
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
            RuntimeError: This ``Periodic`` is already being served, or its ``store`` is
                not being served.
            TypeError: ``wall_clock`` returned something else than an aware datetime.
            Exception: Whatever the store raised when the job was registered in it at
                the start of ``serve`` (later store errors only skip ticks).
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
        if store is not None:
            store.attach()  # the store stays open until this job has recorded its last run
        unwatch: Callable[[], None] | None = None
        try:
            record = None
            state.schedule = self._schedule
            if store is not None:
                record = await self._register(store)
            async with trio.open_nursery() as nursery:
                self._runs.open(nursery)
                state.nursery = nursery
                if self.mode is Mode.AUTO:
                    # Ticks run in the timer's task: give them serve's context, as the
                    # runs they start would have had with a scheduler task of their own.
                    state.context = contextvars.copy_context()
                state.trigger_refused = False
                if store is not None and self.mode is Mode.AUTO:
                    unwatch = store.watch_triggers(self.name, self._store_triggered)
                    if record is not None and record.triggered_at is not None:
                        self._store_triggered()  # asked for while no process served it
                if self.overdue_after is not None:
                    state.last_ok_at = None
                    state.overdue_alarm = Alarm(
                        contextvars.copy_context(), self._overdue_now, self._crashed
                    )
                    self._runs.on_ok = self._ran_ok
                    self._start_overdue_count()
                if store is not None and self.peer is not None and self.mode is Mode.AUTO:
                    # The fence the plan below is made under (no checkpoint in between):
                    # a leadership gained later, even before the watch runs, is caught up.
                    held = self.peer.fence
                    nursery.start_soon(self._watch_gains, self.peer, store, held)
                try:
                    # Arm, report started, and let go of task_status: holding it for the
                    # scheduler's life would keep nursery.start's machinery alive.
                    if self.mode is Mode.MANUAL:
                        state.tick_lock = trio.Lock()
                    else:
                        self._arm_first(record)
                    task_status.started()
                    del task_status
                    # Parked as cheaply as Trio allows: an idle scheduler is this frame,
                    # its nursery and its task. Woken (_wake) to await the rest of a
                    # tick, or to raise what crashed one (or an overdue alarm).
                    state.parked = trio.lowlevel.current_task()
                    while True:
                        state.waiting = True
                        await trio.lowlevel.wait_task_rescheduled(self._abort_park)
                        crash, state.crash = state.crash, None
                        if crash is not None:
                            raise crash
                        rest, state.rest = state.rest, None
                        then, state.then = state.then, None
                        if rest is not None and then is not None:
                            outcome = await rest
                            self._tick_over()
                            then(outcome)
                finally:
                    state.nursery = state.context = None
                    crash = self._stop_ticking()
                    await self._runs.shutdown()
                    self._stop_overdue()
                    if crash is not None:  # a tick raised as serve was being cancelled
                        raise crash
        finally:
            if unwatch is not None:
                unwatch()
            if store is not None:
                store.detach()
            state.serving = False
            state.tick_lock = None
            state.schedule = None

    @property
    def paused(self) -> bool:
        """Whether the job is paused (by :meth:`pause`; a pause in its store is the
        store's, see :meth:`periodic.stores.Store.pause`)."""
        return self._state.paused

    def pause(self) -> None:
        """Pause the job: from now on its ticks, automatic and manual, start no run
        (``Skipped(reason="paused")``) until :meth:`resume`. Runs going on are left alone;
        :meth:`trigger` still starts a run. A paused job is never overdue. Pausing a
        paused job does nothing; the pause outlasts ``serve`` (a job served again stays
        paused).
        """
        state = self._state
        if state.paused:
            return
        state.paused = True
        _log.info("job %r paused", self.name, extra={"periodic_job": self.name})
        if state.overdue_alarm is not None:
            state.overdue_alarm.disarm()
        if state.overdue:
            self._recovered(RecoveredBy.PAUSED)

    def resume(self) -> None:
        """Let the ticks of a paused job start runs again, from its next tick on: what
        fell due while it was paused is not caught up. Its ``overdue_after`` counts
        afresh from now. Resuming a job that is not paused does nothing.
        """
        state = self._state
        if not state.paused:
            return
        state.paused = False
        _log.info("job %r resumed", self.name, extra={"periodic_job": self.name})
        if state.overdue_alarm is not None:
            self._start_overdue_count()

    async def trigger(self) -> Started | Skipped:
        """Tick once, now: the ``when``, leader and overlap guards and the store's claim
        apply as at any tick, but not the pause (a paused job runs: to try a fix during
        an incident). The schedule is left as it is.

        Works in both modes. Returns once the run has started (it does not wait for its
        end), or once the tick was skipped.

        Returns:
            The run's :class:`~periodic.events.Started`, or the
            :class:`~periodic.events.Skipped` event that says why no run started.

        Raises:
            RuntimeError: The job is not being served (or stopped being served during the
                tick).
        """
        state = self._state
        if not state.serving or not self._runs.accepting:
            raise RuntimeError(
                f"{self!r} is not being served: start it first, e.g. "
                "await nursery.start(job.serve)"
            )
        await trio.lowlevel.checkpoint_if_cancelled()
        outcome = await self._explicit_tick("local")
        if isinstance(outcome, Run):
            started = await outcome.wait_started()
            if started is not None:
                return started
        elif outcome is not None:
            return outcome
        raise RuntimeError(f"{self!r} stopped being served during the trigger")

    async def _explicit_tick(self, trigger: Trigger, *, quiet: bool = False) -> _Outcome:
        """A tick now, beside the schedule: one at a time (taking turns with manual
        ticks), and after an automatic tick under way (one due meanwhile waits for this
        one). ``quiet``: its Skipped is counted, not emitted."""
        state = self._state
        lock = state.tick_lock
        if lock is None:  # (made when first needed: most jobs are never triggered)
            lock = state.tick_lock = trio.Lock()
        async with lock:
            while state.busy:
                if state.idle is None:
                    state.idle = trio.Event()
                await state.idle.wait()
            if not self._runs.accepting:
                return None
            # Its time is read now, after the wait: a slot claimed meanwhile is older.
            schedule = self._schedule
            fire_time = None if schedule is None else self._wall_now().astimezone(schedule.tz)
            state.busy = True
            state.quiet = quiet
            try:
                return await self._tick(trio.current_time(), None, fire_time, trigger)
            finally:
                state.quiet = False
                self._tick_over()

    # -- overdue_after -------------------------------------------------------------------

    def _start_overdue_count(self) -> None:
        """Count ``overdue_after`` from now (serve, resume)."""
        state = self._state
        assert self.overdue_after is not None
        assert state.overdue_alarm is not None
        state.overdue_from = now = trio.current_time()
        if not state.paused:
            state.overdue_alarm.arm(now + self.overdue_after)

    def _ran_ok(self) -> None:
        state = self._state
        state.last_ok_at = now = trio.current_time()
        if state.overdue:
            self._recovered(RecoveredBy.OK)
        alarm = state.overdue_alarm
        if alarm is not None and not state.paused:
            assert self.overdue_after is not None
            alarm.arm(now + self.overdue_after)

    def _overdue_now(self) -> None:
        state = self._state
        if state.paused or state.overdue:
            return
        state.overdue = True
        last_ok = state.last_ok_at
        since = state.overdue_from if last_ok is None else max(last_ok, state.overdue_from)
        emit(
            Overdue(job=self.name, last_ok_at=last_ok, overdue_for=trio.current_time() - since),
            self._runs.keys,
        )

    def _recovered(self, reason: RecoveredBy) -> None:
        self._state.overdue = False
        emit(Recovered(job=self.name, reason=reason), self._runs.keys)

    def _not_mine(self, reason: SkipReason) -> None:
        """A tick found the job paused (here or in its store), another process leading,
        or its slot claimed by another process: it cannot be overdue here. Paused, its
        count waits for a resume or a claim granted again; otherwise it starts afresh at
        each such tick."""
        state = self._state
        alarm = state.overdue_alarm
        assert alarm is not None
        if reason is SkipReason.PAUSED:
            alarm.disarm()
        else:
            assert self.overdue_after is not None
            state.overdue_from = now = trio.current_time()
            alarm.arm(now + self.overdue_after)
        if state.overdue:
            self._recovered(_RECOVERED_BY[reason])

    def _count_again(self) -> None:
        """A claim was granted, or the store failed: a job paused in its store counts
        again (resumed; or, for all this process knows, not running)."""
        state = self._state
        alarm = state.overdue_alarm
        if alarm is not None and not alarm.armed and not state.overdue and not state.paused:
            self._start_overdue_count()

    def _stop_overdue(self) -> None:
        state = self._state
        self._runs.on_ok = None
        if state.overdue_alarm is not None:
            state.overdue_alarm.disarm()
            state.overdue_alarm = None
        if state.overdue:
            self._recovered(RecoveredBy.STOPPED)

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
                    if (self.store is not None or k not in _STORE_REASONS)
                    and (k is not SkipReason.PAUSED or k in self._state.skipped)
                }
            ),
            next_tick_at=self._state.next_tick_at,
        )

    # -- the tick ----------------------------------------------------------------------

    def _tick_start(
        self,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
        trigger: Trigger | None = None,
    ) -> _Outcome | _Rest:
        """Apply the guards in order; start a run unless one of them says no.

        Returns the run, the Skipped event when no run started, ``None`` when serve is
        shutting down, or — when a guard must be awaited — the rest of the tick, a
        coroutine that returns one of those. ``catch_up`` re-applies the missed-tick rule
        after a stop_previous wait and returns the tick's new due time. A ``trigger``
        (an explicit tick: ``"local"`` from :meth:`trigger`, ``"store"`` from the
        store's) is not stopped by the pause.
        """
        if trigger is None and self._state.paused:
            return self._skip(SkipReason.PAUSED, scheduled_at)
        when = self.when
        if when is not None:
            try:
                verdict = when()
                if inspect.isawaitable(verdict):
                    # Kept, so that a serve that stops before awaiting it closes it.
                    self._state.guard = verdict
                    return self._tick_awaiting_guard(
                        verdict, scheduled_at, catch_up, fire_time, trigger
                    )
                go = bool(verdict)
            except Exception as exc:
                return self._skip(SkipReason.GUARD_ERROR, scheduled_at, error=exc)
            if not go:
                return self._skip(SkipReason.GUARD, scheduled_at)
        return self._tick_guarded(scheduled_at, catch_up, fire_time, trigger)

    async def _tick_awaiting_guard(
        self,
        verdict: Any,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
        trigger: Trigger | None,
    ) -> _Outcome:
        self._state.guard = None  # awaited from here on
        try:
            go = bool(await verdict)
        except Exception as exc:
            return self._skip(SkipReason.GUARD_ERROR, scheduled_at, error=exc)
        if not go:
            return self._skip(SkipReason.GUARD, scheduled_at)
        outcome = self._tick_guarded(scheduled_at, catch_up, fire_time, trigger)
        if not isinstance(outcome, DECIDED):
            return await outcome
        return outcome

    def _tick_guarded(
        self,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
        trigger: Trigger | None,
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
                    list(running.values()), scheduled_at, catch_up, fire_time, trigger
                )
        return self._start_run(scheduled_at, fire_time, trigger)

    async def _tick_stopping(
        self,
        runs: list[Run],
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
        trigger: Trigger | None,
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
        outcome = self._start_run(scheduled_at, fire_time, trigger)
        if not isinstance(outcome, DECIDED):
            return await outcome
        return outcome

    def _start_run(
        self,
        scheduled_at: float,
        fire_time: datetime.datetime | None,
        trigger: Trigger | None = None,
    ) -> _Outcome | _Rest:
        """The last guard, the claim of a job with a store, then the run."""
        peer = self.peer
        fence = None if peer is None else peer.fence
        if self.store is None:
            return self._runs.spawn(scheduled_at, fence, fire_time, self._retry_until())
        return self._claim_and_spawn(scheduled_at, fence, fire_time, self._retry_until(), trigger)

    async def _tick(
        self,
        scheduled_at: float,
        catch_up: _CatchUp | None,
        fire_time: datetime.datetime | None,
        trigger: Trigger | None = None,
    ) -> _Outcome:
        outcome = self._tick_start(scheduled_at, catch_up, fire_time, trigger)
        if not isinstance(outcome, DECIDED):
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
        state = self._state
        skipped = state.skipped
        skipped[reason] = skipped.get(reason, 0) + count
        event = Skipped(
            job=self.name, reason=reason, scheduled_at=scheduled_at, count=count, error=error
        )
        if not state.quiet:
            emit(event, self._runs.keys)
        if state.overdue_alarm is not None:
            if reason in _NOT_MINE:
                self._not_mine(reason)
            elif reason is SkipReason.STORE_ERROR:
                self._count_again()
        return event


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
        if isinstance(start, DECIDED):
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
