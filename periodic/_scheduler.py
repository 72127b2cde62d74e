"""The scheduler: :class:`Periodic` and its ``serve`` loop."""

from __future__ import annotations

import datetime
import inspect
import math
import types
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
import trio

from . import _options
from ._cron import CronSchedule, parse_schedule
from ._events import (
    CancelReason,
    Finished,
    Outcome,
    Skipped,
    SkipReason,
    Started,
    StoppedPrevious,
    emit,
)
from ._options import DelayMode, Mode, Overlap
from ._runinfo import RunInfo, _current
from ._runs import Statistics, _Run, _State
from .exceptions import NotInManualMode
from .peers._base import Peer, PeerBase

# A cron job re-reads the wall clock at least this often (seconds) while it waits, to
# notice a clock that jumped.
_WALL_RECHECK = 30.0
# Counting missed fire times stops here, so a long suspend of a per-second schedule
# does not cost a long loop.
_MAX_MISSED_COUNT = 10_000
# Worker threads a job's sync runs may hold at once (Trio's own default is 40, shared).
_THREADS_PER_JOB = 40


_UTC = datetime.timezone.utc


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(_UTC)


@attrs.frozen(kw_only=True, eq=False, repr=False)
class Periodic:
    """A job run every ``every`` seconds, each run in a task of its own.

    Make one with keyword options, then serve it in a nursery::

        job = Periodic(run=cleanup, every=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(job.serve)

    Options (see the *Options* page of the docs for every detail):

    Args:
        run: The job: a zero-argument async function (awaited) or sync function (run in
            a worker thread).
        every: Seconds (``int``/``float``) or a ``timedelta`` between ticks; > 0, finite.
        initial_delay: Time from the start of ``serve`` to the first tick; >= 0. Default:
            ``every``.
        delay_mode: ``"regular"`` (fixed rate, the default) or ``"shifted"`` (fixed pause
            after each run).
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

    Raises:
        TypeError: An option has the wrong type, ``run`` is missing, is a coroutine
            object or needs arguments, or an unknown keyword was given.
        ValueError: An option has a value out of range (each message names the option
            and what it accepts).
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
    name: str = attrs.field(converter=_options.check_name)
    mode: Mode = attrs.field(default=Mode.AUTO, converter=_options.mode)
    peer: Peer | None = attrs.field(default=None, converter=_options.check_peer)
    cancel_on_leadership_loss: bool = attrs.field(
        default=True, converter=_options.check_cancel_on_leadership_loss
    )
    wall_clock: Callable[[], datetime.datetime] | None = attrs.field(
        default=None, converter=_options.check_wall_clock
    )

    _is_async: bool = attrs.field(init=False)
    _state: _State = attrs.field(init=False, factory=_State)
    # The schedule, resolved from every/cron/tz: an interval, or a cron schedule.
    _interval: float | None = attrs.field(init=False, default=None)
    _first_delay: float = attrs.field(init=False, default=0.0)
    # The job this one is a copy of (periodic.testing.manual), for event filters.
    _origin: Periodic | None = attrs.field(init=False, default=None)
    _schedule: CronSchedule | None = attrs.field(init=False, default=None)

    @initial_delay.default
    def _initial_delay_default(self) -> float | None:
        return self.every

    @delay_mode.default
    def _delay_mode_default(self) -> DelayMode | None:
        return DelayMode.REGULAR if self.cron is None else None

    def __attrs_post_init__(self) -> None:
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

    @name.default
    def _name_default(self) -> str:
        return _options.default_name(self.run)

    @_is_async.default
    def _is_async_default(self) -> bool:
        return _options.is_async_callable(self.run)

    def __repr__(self) -> str:
        if self.cron is not None:
            when = f"cron={self.cron!r}, tz={self.tz!r}"
        else:
            assert self.delay_mode is not None
            when = f"every={self.every!r}, delay_mode={self.delay_mode.value!r}"
        return f"Periodic(name={self.name!r}, {when}, mode={self.mode.value!r})"

    # -- public API -------------------------------------------------------------------

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
        """
        state = self._state
        if state.serving:
            raise RuntimeError(
                f"{self!r} is already being served; a Periodic can be served by one task "
                "at a time (make another Periodic to run the job twice)"
            )
        if self._schedule is not None:
            self._wall_now()  # a broken wall clock fails here, not inside the nursery
        state.serving = True
        try:
            async with trio.open_nursery() as nursery:
                state.nursery = nursery
                state.tick_lock = trio.Lock() if self.mode is Mode.MANUAL else None
                state.accepting = True
                watch = None
                if self.peer is not None and self.cancel_on_leadership_loss:
                    # Shielded like the runs, so leadership loss still stops runs during
                    # the shutdown grace; cancelled once every run is over.
                    watch = trio.CancelScope(shield=True)
                    nursery.start_soon(self._watch_leadership, self.peer, watch)
                try:
                    # Arm, report started, and let go of task_status: holding it for the
                    # scheduler's life would keep nursery.start's machinery alive.
                    if self.mode is Mode.MANUAL:
                        task_status.started()
                        del task_status
                        await trio.sleep_forever()
                    elif self._schedule is not None:
                        fire = self._first_fire(self._schedule)
                        task_status.started()
                        del task_status
                        await self._cron_loop(self._schedule, fire)
                    else:
                        base = trio.current_time() + self._first_delay
                        state.next_tick_at = base
                        task_status.started()
                        del task_status
                        await self._clock_loop(base)
                finally:
                    state.accepting = False
                    state.next_tick_at = None
                    await self._shutdown_runs()
                    if watch is not None:
                        watch.cancel()
        finally:
            state.serving = False
            state.nursery = None
            state.tick_lock = None

    def statistics(self) -> Statistics:
        """Return a frozen snapshot of this scheduler's counters."""
        state = self._state
        return Statistics(
            runs_started=state.runs_started,
            running=len(state.running),
            finished=types.MappingProxyType({str(k): v for k, v in state.finished.items()}),
            skipped=types.MappingProxyType({str(k): v for k, v in state.skipped.items()}),
            next_tick_at=state.next_tick_at,
        )

    # -- the clock --------------------------------------------------------------------

    async def _clock_loop(self, base: float) -> None:
        """Tick every ``every`` seconds from ``base``, on the grid or shifted."""
        state = self._state
        every = self._interval
        assert every is not None
        regular = self.delay_mode is not DelayMode.SHIFTED
        # Nothing to decide at a tick: spawn at once, without the tick coroutine.
        plain = self.when is None and self.peer is None and self.on_overlap is Overlap.RUN
        # Regular ticks sit on a grid base + k * every: computing each from k (rather than
        # adding every to the last one) keeps float error from accumulating into drift.
        k = 0
        due = base

        def catch_up() -> tuple[float, datetime.datetime | None]:
            # Coalesce the ticks this one is late for into one "missed" event; the tick
            # then stands in for the latest one due.
            nonlocal k, due
            late = trio.current_time() - due
            if late >= every:
                missed = int(late // every)
                self._skip(SkipReason.MISSED, due, count=missed)
                k += missed
                due = base + k * every
            return due, None

        while True:
            await trio.sleep_until(due)
            if regular:
                catch_up()  # (a late wake-up: the missed-tick rule)
                if plain:
                    self._spawn(due, None, None)
                else:
                    await self._tick(due, catch_up=catch_up)
                k += 1
                due = base + k * every
            else:
                state.next_tick_at = None
                run = await self._tick(due)
                if isinstance(run, _Run):
                    await run.done.wait()
                due = trio.current_time() + every
            state.next_tick_at = due

    def _wall_now(self) -> datetime.datetime:
        """The wall clock, in UTC: comparisons between zones are unreliable around DST."""
        now = (self.wall_clock or _utc_now)()
        if not isinstance(now, datetime.datetime) or now.utcoffset() is None:
            raise TypeError(f"wall_clock must return an aware datetime, got {now!r}")
        return now.astimezone(_UTC)

    def _first_fire(self, schedule: CronSchedule) -> datetime.datetime:
        wall = self._wall_now()
        fire = schedule.next_after(wall).astimezone(_UTC)
        self._state.next_tick_at = trio.current_time() + (fire - wall).total_seconds()
        return fire

    async def _cron_loop(self, schedule: CronSchedule, fire: datetime.datetime) -> None:
        """Tick at the schedule's wall-clock fire times.

        The wait is on Trio's clock, but the wall clock is read again after every wake-up
        (at least every ``_WALL_RECHECK`` seconds): when it jumped, the wait is
        recomputed, so a run never fires early, and as the next fire time always follows
        the last one fired, a jump backwards never repeats a run.
        """
        state = self._state
        while True:
            while True:
                wall = self._wall_now()
                wait = (fire - wall).total_seconds()
                if wait <= 0:
                    break
                state.next_tick_at = trio.current_time() + wait
                await trio.sleep(min(wait, _WALL_RECHECK))
            fire = self._cron_catch_up(schedule, fire)

            def catch_up() -> tuple[float, datetime.datetime | None]:
                # After a stop_previous wait: fire times passed meanwhile are missed too.
                nonlocal fire
                fire = self._cron_catch_up(schedule, fire)
                return self._cron_due(fire), fire.astimezone(schedule.tz)

            await self._tick(
                self._cron_due(fire),
                fire_time=fire.astimezone(schedule.tz),
                catch_up=catch_up if self.on_overlap is Overlap.STOP_PREVIOUS else None,
            )
            fire = schedule.next_after(fire).astimezone(_UTC)

    def _cron_due(self, fire: datetime.datetime) -> float:
        """When ``fire`` (a wall-clock time now past) was due, on Trio's clock."""
        return trio.current_time() - (self._wall_now() - fire).total_seconds()

    def _cron_catch_up(self, schedule: CronSchedule, fire: datetime.datetime) -> datetime.datetime:
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
            later = schedule.next_after(fire).astimezone(_UTC)
            if later > wall:
                break
            missed += 1
            fire = later
            if missed == _MAX_MISSED_COUNT:
                fire = _latest_fire(schedule, fire, wall)
                break
        if missed:
            late = (wall - first).total_seconds()
            self._skip(SkipReason.MISSED, trio.current_time() - late, count=missed)
        return fire

    async def _manual_tick(self) -> _Run | Skipped:
        """One tick due now, for :mod:`periodic.testing`.

        Raises:
            NotInManualMode: The scheduler ticks by itself.
            RuntimeError: The scheduler is not being served (or is shutting down).
        """
        if self.mode is not Mode.MANUAL:
            raise NotInManualMode(
                f"{self!r} is in auto mode; only a Periodic made with mode='manual' can be "
                "ticked by hand (periodic.testing.manual(job) makes a manual copy)"
            )
        state = self._state
        lock = state.tick_lock
        if not state.accepting or lock is None:
            raise RuntimeError(
                f"{self!r} is not being served: start it first, "
                "e.g. await nursery.start(job.serve)"
            )
        schedule = self._schedule
        fire_time = None if schedule is None else self._wall_now().astimezone(schedule.tz)
        async with lock:
            outcome = await self._tick(trio.current_time(), fire_time=fire_time)
        if outcome is None:
            raise RuntimeError(f"{self!r} stopped being served during the tick")
        return outcome

    async def _tick(
        self,
        scheduled_at: float,
        *,
        catch_up: Callable[[], tuple[float, datetime.datetime | None]] | None = None,
        fire_time: datetime.datetime | None = None,
    ) -> _Run | Skipped | None:
        """Apply the guards in order; start a run unless one of them says no.

        Returns the run, the Skipped event when no run started, or ``None`` when serve is
        shutting down. ``catch_up`` re-applies the missed-tick rule after a stop_previous
        wait and returns the tick's new due time.
        """
        if self.when is not None:
            try:
                verdict = self.when()
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                go = bool(verdict)
            except Exception as exc:
                return self._skip(SkipReason.GUARD_ERROR, scheduled_at, error=exc)
            if not go:
                return self._skip(SkipReason.GUARD, scheduled_at)
        fence = None
        peer = self.peer
        if peer is not None:
            if not peer.is_leader():
                return self._skip(SkipReason.NOT_LEADER, scheduled_at)
            fence = peer.fence
        running = self._state.running
        if running:
            if self.on_overlap is Overlap.IGNORE:
                return self._skip(SkipReason.OVERLAP, scheduled_at)
            if self.on_overlap is Overlap.STOP_PREVIOUS:
                await self._stop_previous(list(running.values()))
                if catch_up is not None:
                    # The wait may have outlasted a period: don't start a run for a tick
                    # that the next one would stop at once.
                    scheduled_at, fire_time = catch_up()
        if peer is not None and not peer.is_leader():
            # Leadership was lost while the previous runs unwound.
            return self._skip(SkipReason.NOT_LEADER, scheduled_at)
        return self._spawn(scheduled_at, fence if peer is None else peer.fence, fire_time)

    async def _stop_previous(self, runs: list[_Run]) -> None:
        for run in runs:
            timed_out = run.scope.cancel_called  # its timeout fired: nothing to stop
            run.cancel(CancelReason.STOP_PREVIOUS)
            if timed_out:
                continue
            if run.started:
                emit(StoppedPrevious(job=self.name, run_id=run.run_id), self)
            else:
                run.stop_pending = True
        for run in runs:
            await run.done.wait()

    def _skip(
        self,
        reason: SkipReason,
        scheduled_at: float,
        *,
        count: int = 1,
        error: BaseException | None = None,
    ) -> Skipped:
        self._state.skipped[reason] += count
        event = Skipped(
            job=self.name, reason=reason, scheduled_at=scheduled_at, count=count, error=error
        )
        emit(event, self)
        return event

    # -- runs -------------------------------------------------------------------------

    def _spawn(
        self, scheduled_at: float, fence: int | None, fire_time: datetime.datetime | None
    ) -> _Run | None:
        state = self._state
        if not state.accepting or state.nursery is None:
            return None
        run = _Run(
            state.next_run_id, scheduled_at, fence, fire_time, trio.CancelScope(shield=True)
        )
        state.next_run_id += 1
        state.runs_started += 1
        state.running[run.run_id] = run
        state.nursery.start_soon(
            self._run_task, run, name=f"periodic {self.name} run {run.run_id}"
        )
        return run

    async def _run_task(self, run: _Run) -> None:
        started_at = trio.current_time()
        try:
            try:
                self._begin_run(run, started_at)
            except Exception as exc:  # a peer's lease_deadline() that raised, say
                self._finish(run, Outcome.ERROR, started_at, error=exc)
                return
            outcome, result, error = await self._execute(run)
        except BaseException as exc:
            # KeyboardInterrupt, or a test's failure raised from an event handler:
            # report the run (once), then let it through.
            if run.finished is None:
                self._finish(run, Outcome.CANCELLED, started_at, error=exc)
            raise
        self._finish(run, outcome, started_at, result=result, error=error)

    def _begin_run(self, run: _Run, started_at: float) -> None:
        _current.set(
            RunInfo(
                job=self.name,
                run_id=run.run_id,
                scheduled_at=run.scheduled_at,
                started_at=started_at,
                fence=run.fence,
                fire_time=run.fire_time,
            )
        )
        run.started = True
        emit(
            Started(
                job=self.name,
                run_id=run.run_id,
                scheduled_at=run.scheduled_at,
                started_at=started_at,
                fence=run.fence,
                fire_time=run.fire_time,
            ),
            self,
        )
        peer = self.peer
        if run.fence is not None and isinstance(peer, PeerBase):
            # The peer hands its lease over only once such runs are over.
            run.tracked_by = peer
            peer._run_began()
        if run.stop_pending:
            emit(StoppedPrevious(job=self.name, run_id=run.run_id), self)
        run.set_deadlines(
            timeout_at=started_at + self.timeout,
            lease_at=(
                peer.lease_deadline()
                if peer is not None and self.cancel_on_leadership_loss and run.fence is not None
                else math.inf
            ),
        )

    async def _execute(self, run: _Run) -> tuple[Outcome, Any, BaseException | None]:
        """Run the job in the run's scope; how it ended, its result and its error."""
        scope = run.scope
        result: Any = None
        error: BaseException | None = None
        try:
            with scope:
                try:
                    if self._is_async:
                        result = await self.run()
                    else:
                        result = await trio.to_thread.run_sync(
                            self._call_sync, limiter=self._thread_limiter()
                        )
                        if isinstance(result, _Coroutine):
                            # A sync wrapper around an async job (run=lambda: job(x)).
                            result = await result.coroutine
                except Exception as exc:
                    error = exc
        except Exception as exc:
            # What is left of an exception group once the scope removed its own
            # Cancelled (a job's nursery cancelled by timeout or stop_previous).
            error = exc
        if scope.cancel_called:
            if run.cancel_reason is None and run.lease_at < run.timeout_at:
                run.cancel_reason = CancelReason.LEADERSHIP_LOST  # the lease ran out
            outcome = Outcome.CANCELLED if run.cancel_reason is not None else Outcome.TIMEOUT
            return outcome, None, error
        if error is not None:
            return Outcome.ERROR, None, error
        return Outcome.OK, result, None

    def _thread_limiter(self) -> trio.CapacityLimiter:
        # A limiter of the job's own: its stuck threads (never abandoned) cannot starve
        # the rest of the program of Trio's default worker threads.
        limiter = self._state.thread_limiter
        if limiter is None:
            limiter = self._state.thread_limiter = trio.CapacityLimiter(_THREADS_PER_JOB)
        return limiter

    def _call_sync(self) -> Any:
        result = self.run()
        if inspect.iscoroutine(result):
            # Trio refuses a coroutine from a thread: hand it back wrapped, to be awaited.
            return _Coroutine(result)
        return result

    def _finish(
        self,
        run: _Run,
        outcome: Outcome,
        started_at: float,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        state = self._state
        del state.running[run.run_id]
        state.finished[outcome] += 1
        if run.tracked_by is not None:
            run.tracked_by._run_ended()
            run.tracked_by = None
        run.finished = event = Finished(
            job=self.name,
            run_id=run.run_id,
            outcome=outcome,
            duration=trio.current_time() - started_at,
            result=result,
            error=error,
            cancel_reason=run.cancel_reason if outcome is Outcome.CANCELLED else None,
        )
        try:
            emit(event, self)
        finally:
            run.done.set()

    async def _shutdown_runs(self) -> None:
        """Give running instances ``job_shutdown`` seconds, cancel them, wait for them."""
        running = self._state.running
        if not running:
            return
        with trio.CancelScope(shield=True) as grace:
            grace.deadline = trio.current_time() + self.job_shutdown
            for run in list(running.values()):
                await run.done.wait()
        for run in list(running.values()):
            run.cancel(CancelReason.SHUTDOWN)
        with trio.CancelScope(shield=True):
            for run in list(running.values()):
                await run.done.wait()

    async def _watch_leadership(self, peer: Peer, scope: trio.CancelScope) -> None:
        """Cancel the runs started under a fence the peer no longer holds, and move the
        deadline of the others with each renewal of the lease."""
        with scope:
            while True:
                await peer.wait_lease_change()
                current = peer.fence if peer.is_leader() else None
                for run in list(self._state.running.values()):
                    if run.fence is None:
                        continue
                    if run.fence != current:
                        run.cancel(CancelReason.LEADERSHIP_LOST)
                    elif run.started:
                        run.set_deadlines(lease_at=peer.lease_deadline())


def _latest_fire(
    schedule: CronSchedule, fire: datetime.datetime, wall: datetime.datetime
) -> datetime.datetime:
    """The last fire time at or before ``wall``, given ``fire`` at or before it."""
    low, high = fire, wall
    while high - low > datetime.timedelta(milliseconds=1):
        middle = low + (high - low) / 2
        if schedule.next_after(middle).astimezone(_UTC) <= wall:
            low = middle
        else:
            high = middle
    later = schedule.next_after(low).astimezone(_UTC)
    return later if later <= wall else fire


@attrs.frozen
class _Coroutine:
    coroutine: Coroutine[Any, Any, Any]
